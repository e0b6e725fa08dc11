"""What running one program against its tests yields, and the one failure that is not the
program's: a module of its own so that the package and the format runners (``format_run``)
both import it, not each other."""

from __future__ import annotations

from dataclasses import dataclass, field


class SandboxFailure(RuntimeError):
    """The sandbox itself could not run (not the program's fault)."""


@dataclass
class Outcome:
    """Per test: passed or not, and why not; ``timeout`` when the program ran out of time."""

    passed: list[bool]
    reasons: list[str | None] = field(default_factory=list)
    timeout: bool = False
