"""Wait until a sandbox's processes are gone, so a run never outlives its ``score()``.

Killing bubblewrap's process group ends the sandbox only asynchronously: its PID
namespace's init dies of ``--die-with-parent``, and the kernel then kills and reaps every
member before that init finishes exiting. So once the init (bwrap's ``child-pid``, read
from ``--info-fd``) is a zombie or gone, no process of the sandbox is left. The pid is
checked against its start time, so a recycled pid is never waited on or signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

#: How long to wait for the kernel to empty the namespace before giving up.
_WAIT_S = 10.0


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of ``pid``, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], int(fields[19])


class SandboxInit:
    """The PID-namespace init of one run, read from a bwrap info pipe; waitable."""

    def __init__(self, info_r: int | None = None) -> None:
        self.info_r = info_r
        self.pid: int | None = None
        self.start: int | None = None
        self.buf = b""

    def note(self) -> None:
        """Read the info pipe while bwrap is alive (so the pid is not yet recycled)."""
        if self.info_r is None or self.pid is not None:
            return
        with contextlib.suppress(OSError):
            os.set_blocking(self.info_r, False)
            while len(self.buf) < 65536:
                chunk = os.read(self.info_r, 4096)
                if not chunk:
                    break
                self.buf += chunk
        try:
            pid = json.loads(self.buf)["child-pid"]
        except (ValueError, KeyError, TypeError):
            return
        st = _stat(pid) if type(pid) is int else None
        if st is not None:
            self.pid, self.start = pid, st[1]

    def wait_gone(self) -> bool:
        """SIGKILL the init and wait until it (and so its namespace) is gone."""
        if self.pid is None:
            return True
        end = time.monotonic() + _WAIT_S
        delay = 0.0005
        signalled = False
        while True:
            st = _stat(self.pid)
            if st is None or st[1] != self.start or st[0] in "ZXx":
                return True
            if not signalled:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
                signalled = True
            if time.monotonic() >= end:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
