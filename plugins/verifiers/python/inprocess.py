"""The reward function called in the trainer's own process (``isolation: none``).

No pickling and no pipes, so it is the fastest way to call a cheap function; but nothing
can stop a call that never returns, so ``timeout_s`` is not enforced here, and a crash
(a segfault in an extension, ``os._exit``) takes the run with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from srpo.api import SrpoError

from .process import Target
from .runtime.invoke import Args, invoke
from .runtime.load import LoadError, load_function


class InProcessRunner:
    """Imports the reward file at construction; calls the function directly."""

    def __init__(self, target: Target) -> None:
        self.batched = target.batched
        try:
            self.fn = load_function(str(target.path), target.function, target.batched)
        except LoadError as e:  # the file changed since preflight checked it
            raise SrpoError(str(e)) from None

    def run(self, calls: Sequence[Args]) -> list[Any]:
        """One reply per call, in order (see ``runtime.invoke``)."""
        return [invoke(self.fn, args, self.batched) for args in calls]

    def close(self) -> None:
        """Nothing to release: the module stays imported."""
