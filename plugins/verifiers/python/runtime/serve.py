"""A worker process: import the reward file once, then answer calls until stdin closes.

Protocol (length-prefixed pickles, ``frames``): the worker first sends ``("ready", None)``
or ``("fatal", option, message)`` (a ``LoadError``: the file cannot be used). Then per
request ``(soft_timeout_s, [pickled Args, ...])`` it sends one frame per call, in order:
a verdict, a list of verdicts (batched), or ``{"error": ...}``. One frame per call lets the
trainer tell which call hung when it has to kill the process.

The soft time limit is a SIGALRM in this process, which interrupts Python code and most
blocking calls, so the common hang costs no restart; the trainer kills the process a little
later if even that did not stop the function (a C loop, a swallowed exception).
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from types import FrameType

from . import frames
from .invoke import invoke
from .load import LoadError, UserFunction, load_function


class _TimeLimit(BaseException):
    """Raised by the alarm; a BaseException so the function's ``except Exception`` cannot
    swallow it."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _TimeLimit()


def _exit_with_parent() -> None:
    """Exit when the trainer is gone (killed with no chance to close us): the worker runs in
    its own session, so nothing else would stop it."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _answer(uf: UserFunction, blob: bytes, soft: float, batched: bool) -> object:
    """One call under the soft time limit."""
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, soft)
            args = pickle.loads(blob)
            return invoke(uf, args, batched)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _TimeLimit:
        return {"error": f"timed out after {soft:g}s"}
    except BaseException as e:  # the arguments could not be read; never seen in practice
        return {"error": f"worker could not read the call: {type(e).__name__}: {e}"}


def main(path: str, function: str, batched: bool) -> None:
    """Serve calls of ``function`` from ``path`` over stdin/stdout."""
    # The protocol gets private copies of stdin/stdout: the function's prints go to stderr
    # and its reads see an empty stdin, so nothing it does can corrupt the stream.
    out = os.fdopen(os.dup(1), "wb")
    inp = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _exit_with_parent()
    try:
        uf = load_function(path, function, batched)
    except LoadError as e:
        frames.write(out, ("fatal", e.option, str(e)))
        return
    signal.signal(signal.SIGALRM, _alarm)
    frames.write(out, ("ready", None))
    while (request := frames.read(inp)) is not None:
        soft, calls = request
        for blob in calls:
            frames.write(out, _answer(uf, blob, soft, batched))
