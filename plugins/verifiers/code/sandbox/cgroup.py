"""One cgroup per sandboxed run: a cap on the *sample's* total memory and task count.

Why: rlimits are per process. ``RLIMIT_AS`` x ``RLIMIT_NPROC`` let one sample hold gigabytes
across its children, and a few hostile samples in parallel can take the host down. A
cgroup counts every process of the run together: ``memory.max`` (v2) or
``memory.limit_in_bytes`` (v1) with swap off, and ``pids.max``. The kernel OOM-kills inside
the group at the cap and the run reports it (``RunCgroup.oom_killed``), so the sample
scores 0 with a clear reason instead of the host swapping or the trainer being killed.

Where: under the trainer's own cgroup (v2, or the v1 ``memory`` and ``pids`` hierarchies),
so a limit placed on the trainer (a container, a systemd slice) still bounds all of it.
This needs that cgroup to be writable (root, or a delegated subtree); v2 also needs the
``memory`` and ``pids`` controllers enabled for children, which the kernel refuses when
the trainer's cgroup has processes and is not the root (the "no internal processes"
rule) — then we say why and the caller falls back to rlimits. Groups are named
``srpo-sbx-<pid>-<n>``, removed after each run, and stale ones of dead trainers are
removed at start.

A run enters its group before anything of it runs: the command is wrapped in
``/bin/sh -c 'echo $$ > .../cgroup.procs; exec ...'``, so bubblewrap and every process
it forks are born inside.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shlex
import signal
import threading
import time

_PREFIX = "srpo-sbx-"
_ROOT_V1 = "/sys/fs/cgroup"


class CgroupUnavailable(RuntimeError):
    """Per-run cgroups cannot be made here; the message says why."""


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _own_cgroups() -> dict[str, str]:
    """Controller (``""`` for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out = {}
    for line in _read("/proc/self/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for c in parts[1].split(",") if parts[1] else [""]:
                out[c] = parts[2]
    return out


def _cgroup2_mount() -> str | None:
    for line in _read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return left.split()[4]
    return None


def _sweep_stale(parent: str) -> None:
    """Remove empty groups left by trainers that died before cleaning up."""
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            m = re.fullmatch(rf"{_PREFIX}(\d+)-\d+", name)
            if m and not os.path.exists(f"/proc/{m.group(1)}"):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(parent, name))


class RunCgroup:
    """The group(s) of one run: enter (``wrap``), inspect (``oom_killed``), ``destroy``."""

    def __init__(self, dirs: list[str], version: int) -> None:
        self.dirs, self.version = dirs, version

    @property
    def memory_dir(self) -> str:
        return self.dirs[0]

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run from inside the group(s): the shell enters, then execs it."""
        enter = " && ".join(f"echo $$ > {shlex.quote(d + '/cgroup.procs')}" for d in self.dirs)
        return ["/bin/sh", "-c", f'{enter} && exec "$@"', "sh", *argv]

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of this run for reaching the memory cap."""
        f = "memory.events" if self.version == 2 else "memory.oom_control"
        m = re.search(r"^oom_kill (\d+)", _read(f"{self.memory_dir}/{f}"), re.M)
        return bool(m and int(m.group(1)) > 0)

    def peak_bytes(self) -> int | None:
        """Highest total memory use of the run (None when the kernel does not say)."""
        f = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        text = _read(f"{self.memory_dir}/{f}").strip()
        return int(text) if text.isdigit() else None

    def destroy(self) -> None:
        """SIGKILL whatever is left in the group(s) and remove them."""
        for d in self.dirs:
            if self.version == 2:
                with contextlib.suppress(OSError):
                    _write(f"{d}/cgroup.kill", "1")
            for _ in range(200):
                pids = [int(p) for p in _read(f"{d}/cgroup.procs").split()]
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY until the last member is reaped
                    time.sleep(0.005)


class CgroupLimiter:
    """Makes a fresh capped group per run; raises ``CgroupUnavailable`` when it cannot."""

    def __init__(self, memory_bytes: int, max_tasks: int) -> None:
        self.memory_bytes, self.max_tasks = memory_bytes, max_tasks
        self._ids = itertools.count()
        self._lock = threading.Lock()
        own = _own_cgroups()
        why_v2 = self._try_v2(own)
        if why_v2 is None:
            return
        why_v1 = self._try_v1(own)
        if why_v1 is not None:
            raise CgroupUnavailable(f"{why_v2}; {why_v1}")

    # ------------------------------------------------------------------ setup
    def _probe(self, parents: list[str]) -> None:
        """Create, limit and remove one group, so a failure shows here, not mid-run."""
        self.create().destroy()
        for p in parents:
            _sweep_stale(p)

    def _try_v2(self, own: dict[str, str]) -> str | None:
        mount = _cgroup2_mount()
        if mount is None or "" not in own:
            return "no cgroup v2 hierarchy"
        parent = os.path.normpath(mount + own[""])
        have = _read(f"{parent}/cgroup.controllers").split()
        if not {"memory", "pids"} <= set(have):
            return f"cgroup v2 at {parent} lacks the memory/pids controllers"
        try:
            enabled = _read(f"{parent}/cgroup.subtree_control").split()
            if not {"memory", "pids"} <= set(enabled):
                _write(f"{parent}/cgroup.subtree_control", "+memory +pids")
            self.version, self.parents = 2, [parent]
            self._probe([parent])
        except OSError as e:
            return f"cgroup v2 at {parent} not delegated to us ({e.strerror})"
        return None

    def _try_v1(self, own: dict[str, str]) -> str | None:
        if "memory" not in own or "pids" not in own:
            return "no cgroup v1 memory+pids hierarchies"
        parents = [
            os.path.normpath(f"{_ROOT_V1}/memory{own['memory']}"),
            os.path.normpath(f"{_ROOT_V1}/pids{own['pids']}"),
        ]
        try:
            self.version, self.parents = 1, parents
            self._probe(parents)
        except OSError as e:
            return f"cgroup v1 memory/pids not writable ({e.strerror})"
        return None

    # ------------------------------------------------------------------ runs
    def create(self) -> RunCgroup:
        """A new empty group with the caps set (its own directory per hierarchy)."""
        with self._lock:
            name = f"{_PREFIX}{os.getpid()}-{next(self._ids)}"
        dirs = [f"{p}/{name}" for p in self.parents]
        made: list[str] = []
        try:
            for d in dirs:
                os.mkdir(d)
                made.append(d)
            mem, pids = dirs[0], dirs[-1]
            if self.version == 2:
                _write(f"{mem}/memory.max", str(self.memory_bytes))
                if os.path.exists(f"{mem}/memory.swap.max"):
                    _write(f"{mem}/memory.swap.max", "0")
                with contextlib.suppress(OSError):  # an OOM ends the whole run at once
                    _write(f"{mem}/memory.oom.group", "1")
            else:
                _write(f"{mem}/memory.limit_in_bytes", str(self.memory_bytes))
                if os.path.exists(f"{mem}/memory.memsw.limit_in_bytes"):  # no swap either
                    _write(f"{mem}/memory.memsw.limit_in_bytes", str(self.memory_bytes))
                with contextlib.suppress(OSError):
                    _write(f"{mem}/memory.swappiness", "0")
            _write(f"{pids}/pids.max", str(self.max_tasks))
        except BaseException:
            RunCgroup(made, self.version).destroy()
            raise
        return RunCgroup(dirs, self.version)

    def describe(self) -> str:
        return f"cgroup v{self.version} ({', '.join(self.parents)})"
