"""``preflight``: the reward file exists, imports, and has a function of the right shape.

The check imports the file in a worker process, exactly as a run would, so ``srpo validate``
never runs user code in its own process and cannot hang on it for longer than the
start-up limit.
"""

from __future__ import annotations

import time
from pathlib import Path

from srpo.api import OptionError, SrpoError

from .process import STARTUP_TIMEOUT_S, Target, WorkerProcess


def resolve(path: Path, base_dir: Path | None) -> Path:
    """``path`` relative to the run file's directory (to the current one if unknown)."""
    if path.is_absolute():
        return path
    return ((base_dir or Path.cwd()) / path).resolve()


def check(target: Target, isolation: str, num_workers: int) -> None:
    """Raise ``OptionError`` (at an option's line) or ``SrpoError`` (at a line of the reward
    file) for the first problem found."""
    if num_workers > 1 and isolation == "none":
        raise OptionError(
            "num_workers", "needs isolation: process (in-process calls run one by one)"
        )
    if num_workers > 1 and target.batched:
        raise OptionError("num_workers", "a batched function gets the whole batch: use 1 worker")
    if not target.path.exists():
        raise OptionError("path", f"no such file: {target.path}")
    if not target.path.is_file():
        raise OptionError("path", f"not a file: {target.path}")
    worker = WorkerProcess(target)
    try:
        failure = worker.start(time.monotonic() + STARTUP_TIMEOUT_S)
    finally:
        worker.kill()
    if failure is None:
        return
    if failure.option is not None:
        raise OptionError(failure.option, failure.message)
    raise SrpoError(failure.message)
