"""Sandbox backends that run one untrusted program under layered isolation.

Layers (``bwrap`` backend, the default):

1. a fresh process per run, in its own session, killed as a whole (SIGKILL to the process
   group of ``bwrap``; ``--die-with-parent`` and the PID namespace then take every
   descendant with it, double-forked daemons included) at the wall-clock deadline;
2. namespaces: new PID, network (loopback only, no route out), IPC and UTS namespaces;
   the host file system is invisible except read-only ``/usr`` and the interpreter's
   prefix; the working directory is a fresh size-capped tmpfs; ``--clearenv`` plus an
   explicit minimal environment, so no trainer variable leaks in;
3. rlimits (CPU, address space, file size, open files, processes), set by the trusted
   harness before the program runs;
4. a distinct unprivileged uid per concurrent slot (when we are root), so ``RLIMIT_NPROC``
   really applies (root ignores it) and a fork bomb stops at the limit; the uid is locked
   per slot, so processes can be counted and swept by uid.

The ``rlimit`` fallback (no bubblewrap) keeps layers 1, 3 and 4 only; it warns loudly at
construction about what it cannot guarantee (network, file system visibility, and, when not
root, signals to the trainer's own processes).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .harness import encode

log = logging.getLogger(__name__)

HARNESS_SRC = (Path(__file__).with_name("harness.py")).read_text()


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

    def rlimits(self, nproc: int) -> dict[str, int]:
        return {
            "RLIMIT_CPU": self.cpu_s,
            "RLIMIT_AS": self.memory_bytes,
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
    frames: list[dict[str, Any]]
    stdout: bytes
    stderr: bytes
    returncode: int | None
    timed_out: bool = False
    output_exceeded: bool = False
    error: str | None = None
    wall_s: float = 0.0

    @property
    def started(self) -> bool:
        return any("started" in f for f in self.frames)


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


# ------------------------------------------------------------------------------ uid slots


class UidSlots:
    """Per-slot unprivileged uids, locked across processes so two verifiers never share one."""

    def __init__(self, n: int, base: int, lock_dir: Path) -> None:
        self._free: list[tuple[int, Any]] = []
        self._cv = threading.Condition()
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        uid = base
        while len(self._free) < n:
            if uid > base + 100_000:
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
    def take(self):
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


def sweep_uid(uid: int, rounds: int = 20) -> int:
    """SIGKILL every process of ``uid`` until none is left; returns how many were found."""
    found = 0
    for _ in range(rounds):
        pids = pids_of_uid(uid)
        if not pids:
            break
        found += len(pids)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    return found


def count_tasks_of_uid(uid: int) -> int:
    """Threads + processes of ``uid`` (what RLIMIT_NPROC counts)."""
    n = 0
    for pid in pids_of_uid(uid):
        with contextlib.suppress(OSError):
            n += len(os.listdir(f"/proc/{pid}/task"))
    return n


# ------------------------------------------------------------------------------ backends


class Backend:
    """Runs ``Job``s. Subclasses build the command line and clean up after a run."""

    name = "base"
    guarantees: tuple[str, ...] = ()

    def __init__(
        self, limits: Limits, python: str, uid_slots: UidSlots | None, site: bool = True
    ) -> None:
        self.limits = limits
        self.python = python
        self.uid_slots = uid_slots
        self.py_flags = ["-I"] if site else ["-I", "-S"]

    def run(self, job: Job) -> RunResult:
        ctx = self.uid_slots.take() if self.uid_slots else contextlib.nullcontext(None)
        with ctx as uid:
            return self._run(job, uid)

    def _run(self, job: Job, uid: int | None) -> RunResult:
        raise NotImplementedError

    def close(self) -> None:
        if self.uid_slots:
            self.uid_slots.close()

    # shared plumbing -----------------------------------------------------------------
    def _message(self, job: Job, uid: int | None) -> bytes:
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
        self, argv: list[str], job: Job, uid: int | None, cwd: str | None, env: dict[str, str]
    ) -> RunResult:
        """Start ``argv`` with the message on one pipe and frames on another; police it."""
        msg_r, msg_w = os.pipe()
        res_r, res_w = os.pipe()
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                [*argv, *self.py_flags, "-c", HARNESS_SRC_MAIN, str(msg_r), str(res_w)],
                stdin=subprocess.PIPE if job.mode == "stdin" else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(msg_r, res_w),
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            for fd in (msg_r, msg_w, res_r, res_w):
                os.close(fd)
            return RunResult([], b"", b"", None, error=f"cannot start sandbox: {e}")
        os.close(msg_r)
        os.close(res_w)
        try:
            return self._police(proc, job, self._message(job, uid), msg_w, res_r, t0)
        finally:
            _kill_group(proc)
            for fd in (msg_w, res_r):
                with contextlib.suppress(OSError):
                    os.close(fd)
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()

    def _police(
        self,
        proc: subprocess.Popen[bytes],
        job: Job,
        message: bytes,
        msg_w: int,
        res_r: int,
        t0: float,
    ) -> RunResult:
        lim = self.limits
        assert proc.stdout is not None and proc.stderr is not None
        outs: dict[int, bytearray] = {proc.stdout.fileno(): bytearray()}
        outs[proc.stderr.fileno()] = bytearray()
        stdout_fd = proc.stdout.fileno()
        frames: list[dict[str, Any]] = []
        fbuf = bytearray()
        pending_writes: dict[int, memoryview] = {msg_w: memoryview(message)}
        if job.mode == "stdin":
            assert proc.stdin is not None
            pending_writes[proc.stdin.fileno()] = memoryview(job.stdin)
        for fd in pending_writes:
            os.set_blocking(fd, False)
        sel = selectors.DefaultSelector()
        for fd in [*outs, res_r]:
            sel.register(fd, selectors.EVENT_READ)
        for fd in pending_writes:
            sel.register(fd, selectors.EVENT_WRITE)
        result = RunResult(frames, b"", b"", None)
        step_deadline = t0 + job.startup_timeout_s
        open_reads = len(outs) + 1
        try:
            while open_reads:
                now = time.monotonic()
                deadline = min(step_deadline, job.deadline)
                if now >= deadline:
                    result.timed_out = True
                    break
                for key, _ in sel.select(deadline - now):
                    fd = key.fd
                    if fd in pending_writes:
                        buf = pending_writes[fd]
                        try:
                            n = os.write(fd, buf[:65536])
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:  # reader gone: the program closed stdin or died
                            n = len(buf)
                        pending_writes[fd] = buf = buf[n:]
                        if not buf:
                            sel.unregister(fd)
                            del pending_writes[fd]
                            if proc.stdin is not None and fd != msg_w:
                                proc.stdin.close()  # EOF for the program; msg_w closes later
                        continue
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        sel.unregister(fd)
                        open_reads -= 1
                        continue
                    if fd == res_r:
                        fbuf += chunk
                        if len(fbuf) > lim.result_bytes:
                            result.output_exceeded = True
                            raise _Stop
                        for fr in _parse_frames(fbuf):
                            frames.append(fr)
                            step_deadline = time.monotonic() + job.step_timeout_s
                            if fr.get("started") and job.mode == "stdin":
                                pass  # the step deadline now bounds the stdin run
                        continue
                    buf = outs[fd]
                    room = lim.output_bytes - len(buf)
                    buf += chunk[: max(room, 0)]
                    if len(chunk) > room:
                        result.output_exceeded = True
                        if fd == stdout_fd or job.mode == "stdin":
                            raise _Stop
        except _Stop:
            pass
        except ValueError as e:  # malformed frame: the program wrote garbage on the channel
            result.error = f"protocol error: {e}"
        finally:
            sel.close()
        if not result.timed_out and not result.output_exceeded and result.error is None:
            # all pipes closed: the process is exiting; give it the rest of its step time
            try:
                proc.wait(max(0.0, min(step_deadline, job.deadline) - time.monotonic()) + 0.05)
            except subprocess.TimeoutExpired:
                result.timed_out = True
        _kill_group(proc)
        result.returncode = proc.returncode
        result.stdout = bytes(outs[stdout_fd])
        result.stderr = bytes(outs[proc.stderr.fileno()])
        result.wall_s = time.monotonic() - t0
        return result


class _Stop(Exception):
    pass


def _parse_frames(buf: bytearray) -> list[dict[str, Any]]:
    """Complete frames at the head of ``buf`` (consumed); raises ValueError on garbage."""
    out = []
    while len(buf) >= 4:
        (n,) = struct.unpack(">I", buf[:4])
        if n > (64 << 20):
            raise ValueError("frame too large")
        if len(buf) < 4 + n:
            break
        obj = json.loads(bytes(buf[4 : 4 + n]))
        del buf[: 4 + n]
        if not isinstance(obj, dict):
            raise ValueError("frame is not an object")
        out.append(obj)
    return out


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()


# the harness, with a tiny entry that takes the pipe fds from argv
HARNESS_SRC_MAIN = HARNESS_SRC + "\nmain(int(sys.argv[1]), int(sys.argv[2]))\n"


def _root_binds(python: str) -> list[str]:
    """Read-only view of what the interpreter needs: /usr, lib symlinks, its prefixes."""
    args: list[str] = ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives"):
        if os.path.exists(f):
            args += ["--ro-bind", f, f]
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    prefixes |= {os.path.dirname(os.path.dirname(os.path.realpath(python)))}
    made: set[str] = set()
    for p in sorted(prefixes):
        if p and not p.startswith("/usr/") and p != "/usr" and os.path.isdir(p):
            # traversable parents: bwrap would copy modes like /root's 0700, and the
            # program (an unprivileged uid) could then not import the stdlib
            parent = os.path.dirname(p)
            chain = []
            while parent not in ("/", "/tmp", "") and parent not in made:
                chain.append(parent)
                parent = os.path.dirname(parent)
            for d in reversed(chain):
                args += ["--perms", "0755", "--dir", d]
                made.add(d)
            args += ["--ro-bind", p, p]
    return args


class BwrapBackend(Backend):
    name = "bwrap"
    guarantees = ("pid-ns", "net-ns", "fs-readonly", "clearenv", "rlimits", "own-uid")

    def __init__(
        self, limits: Limits, python: str, uid_slots: UidSlots | None, site: bool = True
    ) -> None:
        super().__init__(limits, python, uid_slots, site)
        self.bwrap = shutil.which("bwrap") or "bwrap"
        root = os.geteuid() == 0
        ns = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
        ns += ["--unshare-cgroup-try"]
        if not root:
            ns += ["--unshare-user", "--disable-userns"]
        self.prefix = [
            self.bwrap,
            *ns,
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            # /tmp first: an interpreter that lives under the host's /tmp (a CI venv) is then
            # bound on top of the sandbox's own /tmp instead of being hidden by it
            "--perms",
            "1777",
            "--size",
            str(limits.tmpfs_bytes),
            "--tmpfs",
            "/tmp",
            *_root_binds(python),
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--perms",
            "1777",
            "--size",
            str(limits.tmpfs_bytes),
            "--tmpfs",
            "/sandbox",
            "--chdir",
            "/sandbox",
        ]
        if root:  # the harness needs these two to drop to the slot uid, then has none
            self.prefix += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        env = {**SANDBOX_ENV, "HOME": "/sandbox", "TMPDIR": "/sandbox"}
        for k, v in env.items():
            self.prefix += ["--setenv", k, v]
        self.prefix += ["--", python]

    def _run(self, job: Job, uid: int | None) -> RunResult:
        return self._execute(self.prefix, job, uid, cwd="/", env={})


class RlimitBackend(Backend):
    """Fallback without namespaces: own process group, rlimits, own uid, temp dir, clean env."""

    name = "rlimit"
    guarantees = ("rlimits", "clearenv", "own-uid")

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
        log.warning(
            "code verifier: bubblewrap unavailable, using the plain-rlimit sandbox. It does "
            "NOT provide: %s. Install bubblewrap (apt-get install -y bubblewrap) for "
            "untrusted code.",
            "; ".join(missing),
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


def probe_bwrap(limits: Limits, python: str, site: bool = True) -> str | None:
    """None when the bwrap backend works here, else why not."""
    if shutil.which("bwrap") is None:
        return "bwrap not found on PATH"
    backend = BwrapBackend(limits, python, None, site)
    res = backend.run(
        Job("calls", "x = 1", [{"src": "x + 1", "env": encode({})}], startup_timeout_s=20.0)
    )
    ok = [f for f in res.frames if f.get("i") == 0 and f.get("value") == 2]
    if ok:
        return None
    return f"bwrap probe failed (rc={res.returncode}): {res.stderr.decode(errors='replace')[-500:]}"


def make_backend(
    kind: str, limits: Limits, python: str, slots: int, uid_base: int, site: bool = True
) -> Backend:
    """``kind``: "auto" | "bwrap" | "rlimit"."""
    uid_slots = None
    if os.geteuid() == 0:
        lock_dir = Path(tempfile.gettempdir()) / "srpo-sandbox-uids"
        uid_slots = UidSlots(slots, uid_base, lock_dir)
    if kind in ("auto", "bwrap"):
        why = probe_bwrap(limits, python, site)
        if why is None:
            return BwrapBackend(limits, python, uid_slots, site)
        if kind == "bwrap":
            raise RuntimeError(f"sandbox backend 'bwrap' unusable: {why}")
        log.warning("code verifier: %s", why)
    return RlimitBackend(limits, python, uid_slots, site)
