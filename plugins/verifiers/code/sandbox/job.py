"""What a sandboxed run is given (``Job``, ``Limits``) and what it gives back (``RunResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Limits:
    """Resource limits of one sandboxed run."""

    cpu_s: int = 30
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    open_files: int = 64
    processes: int = 16
    output_bytes: int = 1 << 20  # stdout/stderr kept; more kills the run
    result_bytes: int = 16 << 20  # function results channel
    tmpfs_bytes: int = 64 << 20
    #: without cgroups, RLIMIT_NPROC is cut to this and RLIMIT_AS to memory / it, so the
    #: product (the most a sample can hold) stays within ``memory_bytes``
    fallback_processes: int = 4

    def fallback_split(self) -> tuple[int, int]:
        """(tasks, address space per process) that keep a sample within ``memory_bytes``
        when no cgroup caps it as a whole."""
        tasks = max(1, min(self.processes, self.fallback_processes))
        return tasks, self.memory_bytes // tasks

    def rlimits(self, nproc: int, address_space: int | None = None) -> dict[str, int]:
        """The ``resource`` limits the harness sets before the program runs.

        ``nproc`` is passed in because it depends on the uid the run gets (see
        ``Backend.harness_message``), ``address_space`` because it depends on whether a
        cgroup caps the whole sample (default: ``memory_bytes``); cores are off so a crash
        writes nothing.
        """
        return {
            "RLIMIT_CPU": self.cpu_s,
            "RLIMIT_AS": self.memory_bytes if address_space is None else address_space,
            "RLIMIT_FSIZE": self.file_size_bytes,
            "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_NPROC": nproc,
            "RLIMIT_CORE": 0,
        }


@dataclass
class Job:
    """What to run: ``calls`` (evaluate requests in the program) or ``stdin`` (run as main)."""

    mode: str
    program: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    stdin: bytes = b""
    startup_timeout_s: float = 10.0  # until the harness reports "started"
    step_timeout_s: float = 4.0  # program import, each request, or a whole stdin run
    deadline: float = float("inf")  # absolute time.monotonic() bound of the whole run


@dataclass
class RunResult:
    """What came back: harness frames, captured output, and how the run ended."""

    frames: list[dict[str, Any]]
    stdout: bytes
    stderr: bytes
    returncode: int | None
    timed_out: bool = False
    output_exceeded: bool = False
    error: str | None = None  # the sandbox itself failed (not the program)
    wall_s: float = 0.0
    oom_killed: bool = False  # the kernel killed a process at the sample's memory cap
    peak_memory_bytes: int | None = None  # the sample's highest total use (cgroup only)

    @property
    def started(self) -> bool:
        """Whether the harness got as far as reporting start (limits set, uid dropped)."""
        return any("started" in f for f in self.frames)


#: The whole environment a program sees (plus HOME/TMPDIR): no trainer variable leaks in.
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
