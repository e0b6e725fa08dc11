"""The fallback backend without bubblewrap: process group, rlimits, slot uid, temp dir.

What it cannot give, ``missing_guarantees`` lists for the one warning ``make_backend``
emits. What it repairs (``fallback_fs``): as root, the slot uid can import the stdlib
even when the interpreter lives under a 0700 directory, and files the run leaves in the
host's world-writable directories are removed after it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from .backend import Backend
from .fallback_fs import (
    READABLE_PATH,
    SHARED_WRITABLE,
    remove_files_of_uid,
    remove_ipc_of_uid,
)
from .job import SANDBOX_ENV, Job, RunResult
from .uids import sweep_uid


def missing_guarantees(root: bool) -> list[str]:
    """What the fallback does NOT provide, one clause each (for the warning)."""
    missing = [
        "NO network isolation (the program can open sockets, reach localhost and the net)",
        "NO file-system isolation (it can read every world-readable file; what it writes "
        f"in {', '.join(SHARED_WRITABLE)} and its System V IPC objects are removed "
        "after the run" + (")" if root else " only as root)"),
        "NO PID namespace (it can see host processes)",
        "NO seccomp filter (every syscall reaches the kernel)",
    ]
    if not root:
        missing.append(
            "NOT root, so programs run as the trainer's own uid: they can signal and "
            "ptrace the trainer and RLIMIT_NPROC is shared with it"
        )
    return missing


class RlimitBackend(Backend):
    """Fallback without namespaces: own process group, rlimits, own uid, temp dir, clean env."""

    name = "rlimit"

    def _run(self, job: Job, uid: int | None) -> RunResult:
        work = tempfile.mkdtemp(prefix="srpo-sbx-")
        try:
            if uid is not None:
                os.chown(work, uid, uid)
            env = {**SANDBOX_ENV, "HOME": work, "TMPDIR": work, "TEMP": work, "TMP": work}
            preamble = READABLE_PATH if uid is not None else ""
            return self._execute([self.python], job, uid, cwd=work, env=env, preamble=preamble)
        finally:
            if uid is not None:
                sweep_uid(uid)  # no PID namespace: hunt down escaped daemons by uid
                remove_files_of_uid(uid)
                remove_ipc_of_uid(uid)
            shutil.rmtree(work, ignore_errors=True)
