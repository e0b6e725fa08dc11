"""The fallback backend without bubblewrap: process group, rlimits, slot uid, temp dir."""

from __future__ import annotations

import os
import shutil
import tempfile

from srpo.api import warn

from .backend import Backend
from .job import SANDBOX_ENV, Job, Limits, RunResult
from .uids import UidSlots, sweep_uid


class RlimitBackend(Backend):
    """Fallback without namespaces: own process group, rlimits, own uid, temp dir, clean env."""

    name = "rlimit"

    def __init__(
        self, limits: Limits, python: str, uid_slots: UidSlots | None, site: bool = True
    ) -> None:
        super().__init__(limits, python, uid_slots, site)
        missing = [
            "NO network isolation (the program can open sockets, reach localhost and the net)",
            "NO file-system isolation (it can read every world-readable file and write "
            "world-writable places such as /tmp and /dev/shm)",
            "NO PID namespace (it can see host processes)",
        ]
        if uid_slots is None:
            missing.append(
                "NOT root, so programs run as the trainer's own uid: they can signal and "
                "ptrace the trainer and RLIMIT_NPROC is shared with it"
            )
        warn(
            "code verifier: bubblewrap unavailable, using the plain-rlimit sandbox. It does "
            f"NOT provide: {'; '.join(missing)}. Install bubblewrap "
            "(apt-get install -y bubblewrap) for untrusted code."
        )

    def _run(self, job: Job, uid: int | None) -> RunResult:
        work = tempfile.mkdtemp(prefix="srpo-sbx-")
        try:
            if uid is not None:
                os.chown(work, uid, uid)
            env = {**SANDBOX_ENV, "HOME": work, "TMPDIR": work}
            return self._execute([self.python], job, uid, cwd=work, env=env)
        finally:
            if uid is not None:
                sweep_uid(uid)  # no PID namespace: hunt down escaped daemons by uid
            shutil.rmtree(work, ignore_errors=True)
