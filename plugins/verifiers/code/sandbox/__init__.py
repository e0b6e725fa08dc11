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
   per slot, so processes can be counted and swept by uid (``uids``).

The ``rlimit`` fallback (no bubblewrap) keeps layers 1, 3 and 4 only; it warns loudly at
construction about what it cannot guarantee (network, file system visibility, and, when not
root, signals to the trainer's own processes).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from srpo.api import warn

from .backend import Backend
from .bwrap import BwrapBackend, probe_bwrap
from .job import SANDBOX_ENV, Job, Limits, RunResult
from .process import HARNESS_SRC
from .rlimit import RlimitBackend
from .uids import UidSlots, pids_of_uid, sweep_uid

__all__ = [
    "HARNESS_SRC",
    "SANDBOX_ENV",
    "Backend",
    "BwrapBackend",
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
    kind: str, limits: Limits, python: str, slots: int, uid_base: int, site: bool = True
) -> Backend:
    """``kind``: "auto" (bwrap if it works here, else rlimit with a warning) | "bwrap" |
    "rlimit". As root, ``slots`` uids from ``uid_base`` up are reserved for the runs."""
    uid_slots = None
    if os.geteuid() == 0:
        lock_dir = Path(tempfile.gettempdir()) / "srpo-sandbox-uids"
        uid_slots = UidSlots(slots, uid_base, lock_dir)
    if kind in ("auto", "bwrap"):
        why = probe_bwrap(limits, python, site)
        if why is None:
            return BwrapBackend(limits, python, uid_slots, site)
        if kind == "bwrap":
            if uid_slots is not None:
                uid_slots.close()
            raise RuntimeError(f"sandbox backend 'bwrap' unusable: {why}")
        warn(f"code verifier: {why}")
    return RlimitBackend(limits, python, uid_slots, site)
