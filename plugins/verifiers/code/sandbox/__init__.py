"""Sandbox backends that run one untrusted program under layered isolation.

Layers (``bwrap`` backend, the default):

1. a fresh process per run, in its own session, killed as a whole (SIGKILL to the process
   group of ``bwrap``; ``--die-with-parent`` and the PID namespace then take every
   descendant with it, double-forked daemons included) at the wall-clock deadline; a run
   returns only once its PID namespace is empty (``process``, ``reap``);
2. namespaces: new PID, network (loopback only, no route out), IPC and UTS namespaces;
   the host file system is invisible except read-only ``/usr`` and the interpreter's
   prefix; the working directory is a fresh size-capped tmpfs; ``--clearenv`` plus an
   explicit minimal environment, so no trainer variable leaks in (``bwrap``);
3. rlimits (CPU, address space, file size, open files, processes), set by the trusted
   harness before the program runs (``job.Limits``, ``harness``);
4. a distinct unprivileged uid per concurrent slot (when we are root), so ``RLIMIT_NPROC``
   really applies (root ignores it) and a fork bomb stops at the limit; the uid is locked
   per slot, so processes can be counted and swept by uid (``uids``);
5. a cgroup per run capping the sample's *total* memory (swap off) and task count, where
   the machine lets us make one (``cgroup``); else the rlimits are split so that
   tasks x address space stays within the budget (``Limits.fallback_split``);
6. a seccomp filter: no namespaces (so no nested user namespace), mounts, ptrace,
   keyrings, BPF, perf, userfaultfd, io_uring, module loading... (``seccomp``).

The ``rlimit`` fallback (no bubblewrap) keeps layers 1, 3, 4 and 5; as root it makes the
stdlib importable by the slot uid and removes what the run left in /tmp, /var/tmp,
/dev/shm (``fallback_fs``). Whatever weaker mechanism is in force is said once, in one
warning at construction (``make_backend``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from srpo.api import warn

from .backend import Backend
from .bwrap import BwrapBackend, probe_bwrap
from .cgroup import CgroupLimiter, CgroupUnavailable
from .job import SANDBOX_ENV, Job, Limits, RunResult
from .process import HARNESS_SRC
from .rlimit import RlimitBackend, missing_guarantees
from .uids import UidSlots, pids_of_uid, sweep_uid

__all__ = [
    "HARNESS_SRC",
    "SANDBOX_ENV",
    "Backend",
    "BwrapBackend",
    "CgroupLimiter",
    "CgroupUnavailable",
    "Job",
    "Limits",
    "RlimitBackend",
    "RunResult",
    "UidSlots",
    "make_backend",
    "pids_of_uid",
    "probe_bwrap",
    "sweep_uid",
]


def make_backend(
    kind: str,
    limits: Limits,
    python: str,
    slots: int,
    uid_base: int,
    site: bool = True,
    memory_cap: str = "auto",
) -> Backend:
    """``kind``: "auto" (bwrap if it works here, else rlimit) | "bwrap" | "rlimit".
    ``memory_cap``: "auto" (a cgroup per run if we can make one, else split rlimits) |
    "cgroup" (required) | "rlimit". As root, ``slots`` uids from ``uid_base`` up are
    reserved for the runs. Whatever weaker mechanism ends up in force is said in ONE
    warning (so a log shows it once per verifier, not once per cause)."""
    notes: list[str] = []
    uid_slots = None
    if os.geteuid() == 0:
        lock_dir = Path(tempfile.gettempdir()) / "srpo-sandbox-uids"
        uid_slots = UidSlots(slots, uid_base, lock_dir)
    try:
        use_bwrap = False
        if kind in ("auto", "bwrap"):
            why = probe_bwrap(limits, python, site)
            if why is not None and kind == "bwrap":
                raise RuntimeError(f"sandbox backend 'bwrap' unusable: {why}")
            if why is not None:
                notes.append(f"{why}.")
            use_bwrap = why is None
        cgroups = _cgroups(limits, memory_cap, notes)
    except BaseException:
        if uid_slots is not None:
            uid_slots.close()
        raise
    backend: Backend
    if use_bwrap:
        bw = BwrapBackend(limits, python, uid_slots, site, cgroups)
        if bw.seccomp is None:
            notes.append("no seccomp filter for this architecture.")
        backend = bw
    else:
        backend = RlimitBackend(limits, python, uid_slots, site, cgroups)
        notes.append(
            "bubblewrap unavailable, using the plain-rlimit sandbox. It does NOT provide: "
            f"{'; '.join(missing_guarantees(uid_slots is not None))}. Install bubblewrap "
            "(apt-get install -y bubblewrap) for untrusted code."
        )
    if notes:
        warn("code verifier: " + " ".join(notes))
    return backend


def _cgroups(limits: Limits, memory_cap: str, notes: list[str]) -> CgroupLimiter | None:
    """The per-run cgroup maker, or None (then a note on the weaker rlimit split)."""
    why = "memory_cap is 'rlimit'"
    if memory_cap != "rlimit":
        try:  # a few tasks of slack: bubblewrap's own two processes run in the group too
            return CgroupLimiter(limits.memory_bytes, limits.processes + 3)
        except CgroupUnavailable as e:
            if memory_cap == "cgroup":
                raise RuntimeError(f"memory_cap 'cgroup' unusable: {e}") from None
            why = str(e)
    tasks, per_proc = limits.fallback_split()
    notes.append(
        f"memory is capped per process, not per sample ({why}): at most {tasks} tasks "
        f"(threads included) x {per_proc >> 20} MiB address space each."
    )
    return None
