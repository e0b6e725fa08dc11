"""Sandbox uids: one unprivileged uid per concurrent slot, and process hunting by uid.

A distinct uid per slot makes ``RLIMIT_NPROC`` count only that slot's processes (root
ignores the limit, and a shared uid would share it), and lets a run's processes be counted
and swept by uid even when they escaped the process group.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

#: How far above ``base`` to look for uids no other verifier holds.
_MAX_UID_SEARCH = 100_000


class UidSlots:
    """Per-slot unprivileged uids, locked across processes so two verifiers never share one."""

    def __init__(self, n: int, base: int, lock_dir: Path) -> None:
        self._free: list[tuple[int, IO[str]]] = []
        self._cv = threading.Condition()
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        uid = base
        while len(self._free) < n:
            if uid > base + _MAX_UID_SEARCH:
                raise RuntimeError("no free sandbox uid")
            f = open(lock_dir / f"{uid}.lock", "w")  # noqa: SIM115 - held until close()
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._free.append((uid, f))
            except OSError:
                f.close()
            uid += 1
        self._all = list(self._free)

    @contextlib.contextmanager
    def take(self) -> Iterator[int]:
        """A free uid for the duration of one run (waits while all are in use)."""
        with self._cv:
            while not self._free:
                self._cv.wait()
            item = self._free.pop()
        try:
            yield item[0]
        finally:
            with self._cv:
                self._free.append(item)
                self._cv.notify()

    def close(self) -> None:
        for _, f in self._all:
            f.close()


def pids_of_uid(uid: int) -> list[int]:
    """Live processes whose real uid is ``uid`` (host view)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            out.append(int(d))
                        break
        except OSError:
            continue
    return out


def sweep_uid(uid: int, rounds: int = 20) -> None:
    """SIGKILL every process of ``uid`` until none is left (forks may race the first kill)."""
    for _ in range(rounds):
        pids = pids_of_uid(uid)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def count_tasks_of_uid(uid: int) -> int:
    """Threads + processes of ``uid`` (what RLIMIT_NPROC counts)."""
    n = 0
    for pid in pids_of_uid(uid):
        with contextlib.suppress(OSError):
            n += len(os.listdir(f"/proc/{pid}/task"))
    return n
