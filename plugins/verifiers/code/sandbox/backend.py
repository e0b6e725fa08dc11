"""The backend contract: run a ``Job`` under a slot uid and return a ``RunResult``.

With a ``CgroupLimiter`` every run gets a fresh cgroup capping the sample's total memory
and task count; without one, the per-process rlimits are split so that their product stays
within the budget (``Limits.fallback_split``), which is weaker: see ``cgroup``.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading

from .cgroup import CgroupLimiter, RunCgroup
from .job import Job, Limits, RunResult
from .process import run_harness
from .uids import UidSlots, count_tasks_of_uid


class Backend:
    """Runs ``Job``s. Subclasses build the command line and clean up after a run."""

    name = "base"

    def __init__(
        self,
        limits: Limits,
        python: str,
        uid_slots: UidSlots | None,
        site: bool = True,
        cgroups: CgroupLimiter | None = None,
    ) -> None:
        self.limits = limits
        self.python = python
        self.uid_slots = uid_slots
        self.cgroups = cgroups
        # -I: ignore PYTHON* variables and the user site; -S also skips site-packages
        self.py_flags = ["-I"] if site else ["-I", "-S"]
        # the group of the run this thread is executing (runs go in parallel threads)
        self._local = threading.local()

    def run(self, job: Job) -> RunResult:
        """Run ``job`` under a free slot uid (when there are slots, i.e. as root), inside
        a fresh cgroup when there is a limiter; report an OOM kill and remove the group."""
        ctx = self.uid_slots.take() if self.uid_slots else contextlib.nullcontext(None)
        with ctx as uid:
            group = self.cgroups.create() if self.cgroups else None
            self._local.group = group
            try:
                res = self._run(job, uid)
            finally:
                self._local.group = None
                if group is not None:
                    oom, peak = group.oom_killed(), group.peak_bytes()
                    group.destroy()
            if group is not None:
                res.oom_killed, res.peak_memory_bytes = oom, peak
            return res

    def _run(self, job: Job, uid: int | None) -> RunResult:
        raise NotImplementedError

    def close(self) -> None:
        if self.uid_slots:
            self.uid_slots.close()

    def harness_message(self, job: Job, uid: int | None) -> bytes:
        """The length-prefixed message the harness reads first: program, requests, limits."""
        address_space = None
        nproc = self.limits.processes
        if self.cgroups is None:  # no group caps the sample: split the budget instead
            nproc, address_space = self.limits.fallback_split()
        if uid is None:  # same uid as the trainer: leave room for what already runs
            nproc += count_tasks_of_uid(os.getuid())
        msg = {
            "mode": job.mode,
            "program": job.program,
            "requests": job.requests,
            "limits": self.limits.rlimits(nproc, address_space),
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
        extra_fds: tuple[int, ...] = (),
        preamble: str = "",
    ) -> RunResult:
        """Run the harness with ``argv`` (an interpreter command) for ``job``, from inside
        this run's cgroup when it has one. ``extra_fds`` are inherited by the child;
        ``preamble`` runs in the harness before it sets limits and drops privileges."""
        group: RunCgroup | None = getattr(self._local, "group", None)
        cmd = [*argv, *self.py_flags]
        return run_harness(
            group.wrap(cmd) if group is not None else cmd,
            job,
            self.limits,
            lambda: self.harness_message(job, uid),
            cwd,
            env,
            info_pipe,
            extra_fds,
            preamble,
        )
