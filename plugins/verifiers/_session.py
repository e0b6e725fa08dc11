"""Ending a worker process that runs untrusted-by-accident code (a reward function, sympy)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the worker's whole session (what it ran may have started processes), reap it,
    and close our ends of its pipes. The worker must have been started with
    ``start_new_session=True`` so its pid is its process group's."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
    proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
