"""Stopping a run on SIGINT/SIGTERM without losing it, and named fault points for tests.

First signal: the kernel finishes the current step, writes a checkpoint, flushes loggers
and the history store, and the process exits 130 (SIGINT) or 143 (SIGTERM). A second
SIGINT exits at once: checkpoints are published by one atomic rename and the store commits
step-aligned, so dying anywhere leaves the newest complete checkpoint usable. A signal
that arrives after the run completed (during clean-up or interpreter shutdown) changes
nothing: the process exits 0.

``SRPO_FAULT_AT=NAME[:N]`` makes the process SIGKILL itself the N-th time (default 1st) it
reaches the fault point NAME, so crash tests can hit each phase (generation, update,
checkpoint writing, ...) deterministically instead of hoping a random delay lands there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType
from typing import Any

_FAULT: tuple[str, int] | None = None
_FAULT_SEEN: dict[str, int] = {}


def _parse_fault(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, n = spec.partition(":")
    return name.strip(), int(n) if n.strip() else 1


_FAULT = _parse_fault(os.environ.get("SRPO_FAULT_AT"))


def fault_point(name: str) -> None:
    """SIGKILL this process here if ``SRPO_FAULT_AT`` names this point (tests only)."""
    if _FAULT is None or _FAULT[0] != name:
        return
    _FAULT_SEEN[name] = _FAULT_SEEN.get(name, 0) + 1
    if _FAULT_SEEN[name] >= _FAULT[1]:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class GracefulStop:
    """Turns the first SIGINT/SIGTERM into a stop request on ``target.stop_requested``.

    Used as a context manager around ``Kernel.run`` and its clean-up. On exit it restores
    the previous handlers, or, with ``ignore_after=True`` (the process is only going to
    exit), swaps its own handler straight for SIG_IGN: restoring first would open a window
    in which a late SIGTERM meets SIG_DFL and kills a finished run (seen in CI).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, target: Any, *, ignore_after: bool = False) -> None:
        self.target = target
        self.ignore_after = ignore_after
        self.signum: int | None = None
        self.completed = False  # set when the run completed: a signal then only ends clean-up
        self._previous: dict[int, Any] = {}

    @property
    def exit_code(self) -> int | None:
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM), None without a signal."""
        return None if self.signum is None else 128 + self.signum

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(f"\nsrpo: second {name}: exiting now", file=sys.stderr, flush=True)
            os._exit(0 if self.completed else 128 + signum)
        self.signum = signum
        if self.completed:  # only clean-up is left and everything is already durable
            return
        self.target.stop_requested = name
        print(
            f"\nsrpo: {name}: finishing the current step, then checkpointing "
            "(send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> GracefulStop:
        for s in self.SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_IGN if self.ignore_after else handler)


def ignore_exit_signals() -> None:
    """Ignore SIGINT/SIGTERM from here on: the run is closed and the process only exits.

    Why: Python's finalizer resets handlers to SIG_DFL, so a Ctrl-C during interpreter
    shutdown (torch's takes a few hundred ms) would kill a finished run silently with
    status -2, and ``srpo run … && next`` would fail a run that completed. SIG_IGN is the
    one disposition the finalizer leaves alone. SIGKILL still ends a hung exit.
    """
    for s in GracefulStop.SIGNALS:
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(s, signal.SIG_IGN)
