"""The backend contract: run a ``Job`` under a slot uid and return a ``RunResult``."""

from __future__ import annotations

import contextlib
import json
import os
import struct

from .job import Job, Limits, RunResult
from .process import run_harness
from .uids import UidSlots, count_tasks_of_uid


class Backend:
    """Runs ``Job``s. Subclasses build the command line and clean up after a run."""

    name = "base"

    def __init__(
        self, limits: Limits, python: str, uid_slots: UidSlots | None, site: bool = True
    ) -> None:
        self.limits = limits
        self.python = python
        self.uid_slots = uid_slots
        # -I: ignore PYTHON* variables and the user site; -S also skips site-packages
        self.py_flags = ["-I"] if site else ["-I", "-S"]

    def run(self, job: Job) -> RunResult:
        """Run ``job`` under a free slot uid (when there are slots, i.e. as root)."""
        ctx = self.uid_slots.take() if self.uid_slots else contextlib.nullcontext(None)
        with ctx as uid:
            return self._run(job, uid)

    def _run(self, job: Job, uid: int | None) -> RunResult:
        raise NotImplementedError

    def close(self) -> None:
        if self.uid_slots:
            self.uid_slots.close()

    def harness_message(self, job: Job, uid: int | None) -> bytes:
        """The length-prefixed message the harness reads first: program, requests, limits."""
        if uid is not None:
            nproc = self.limits.processes
        else:  # same uid as the trainer: leave room for what already runs
            nproc = count_tasks_of_uid(os.getuid()) + self.limits.processes
        msg = {
            "mode": job.mode,
            "program": job.program,
            "requests": job.requests,
            "limits": self.limits.rlimits(nproc),
            "uid": uid,
        }
        data = json.dumps(msg).encode()
        return struct.pack(">I", len(data)) + data

    def _execute(
        self,
        argv: list[str],
        job: Job,
        uid: int | None,
        cwd: str | None,
        env: dict[str, str],
        info_pipe: tuple[int, int] | None = None,
    ) -> RunResult:
        """Run the harness with ``argv`` (an interpreter command) for ``job``."""
        return run_harness(
            [*argv, *self.py_flags],
            job,
            self.limits,
            lambda: self.harness_message(job, uid),
            cwd,
            env,
            info_pipe,
        )
