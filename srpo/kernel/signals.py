"""Stopping a run on SIGINT/SIGTERM without losing it, and named fault points for tests.

First signal: the kernel finishes the current step, writes a checkpoint, flushes loggers
and the history store, and the process exits 130 (SIGINT) or 143 (SIGTERM). A second
SIGINT exits at once: checkpoints are published by one atomic rename and the store commits
step-aligned, so dying anywhere leaves the newest complete checkpoint usable. A signal
that arrives after the run completed (during clean-up or interpreter shutdown) changes
nothing: the process exits 0. Before the kernel exists (imports, model loading) a signal
exits at once with 130/143 and one line.

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
_FAULT_RANK = os.environ.get("SRPO_FAULT_RANK")


def fault_point(name: str) -> None:
    """SIGKILL this process here if ``SRPO_FAULT_AT`` names this point (tests only); in a
    data-parallel job only rank ``SRPO_FAULT_RANK`` does, when that is set."""
    if _FAULT is None or _FAULT[0] != name:
        return
    if _FAULT_RANK is not None and os.environ.get("RANK", "0") != _FAULT_RANK:
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


def exit_at_once_while_setting_up() -> None:
    """Until a ``GracefulStop`` takes over, SIGINT/SIGTERM print one line and exit 130/143.

    Why not Python's KeyboardInterrupt: setting up imports torch and transformers and loads
    the model, and there a KeyboardInterrupt can be swallowed by library code (the run then
    trains to completion and exits 0 as if no signal came: seen in CI), or be raised inside
    code a C extension runs with ``PyRun_String``, after which CPython re-kills itself with
    SIGINT at exit (status -2) even though srpo caught it. Nothing durable is half-written
    while setting up that a kill -9 would not also leave (the run directory and the history
    store are crash-safe by design), so exiting at once is safe.
    """

    def exit_now(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        sys.stdout.flush()
        print(f"\nsrpo: {name} while setting up the run: nothing was trained", file=sys.stderr)
        sys.stderr.flush()
        os._exit(128 + signum)

    for s in GracefulStop.SIGNALS:
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(s, exit_now)
