"""The default backend: bubblewrap namespaces around the harness.

The program sees a new PID, network (loopback only), IPC and UTS namespace; of the host
file system only read-only ``/usr`` and the interpreter's prefixes; a fresh size-capped
tmpfs as its working directory and ``/tmp``; and a cleared environment. Every run also gets
the ``seccomp`` filter (``--seccomp``): no namespaces, mounts, ptrace, keyrings, BPF...
so a nested user namespace (which would hand the program all capabilities over a new
mount namespace) cannot be made even as root, where ``--disable-userns`` does not apply
(it needs ``--unshare-user``); without root both are in force.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

from ..harness import encode
from .backend import Backend
from .cgroup import CgroupLimiter
from .job import SANDBOX_ENV, Job, Limits, RunResult
from .seccomp import build_filter, filter_fd
from .uids import UidSlots


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


@functools.cache
def bwrap_supports(bwrap: str, flag: str) -> bool:
    """Whether the installed bubblewrap knows ``flag`` (from its ``--help``)."""
    try:
        res = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return flag in res.stdout + res.stderr


def bwrap_argv(bwrap: str, limits: Limits, python: str, root: bool) -> list[str]:
    """The ``bwrap ... -- python`` command line every run starts with."""
    ns = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    ns += ["--unshare-cgroup-try"]
    if not root:
        ns += ["--unshare-user"]
        if bwrap_supports(bwrap, "--disable-userns"):  # bubblewrap >= 0.8; else seccomp
            ns += ["--disable-userns"]
    tmpfs = ["--perms", "1777", "--size", str(limits.tmpfs_bytes), "--tmpfs"]
    argv = [
        bwrap,
        *ns,
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        # /tmp first: an interpreter that lives under the host's /tmp (a CI venv) is then
        # bound on top of the sandbox's own /tmp instead of being hidden by it
        *tmpfs,
        "/tmp",
        *_root_binds(python),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        # POSIX semaphores and shared memory (multiprocessing's locks and queues) live
        # here; bwrap's /dev/shm is not writable by the slot uid
        *tmpfs,
        "/dev/shm",
        *tmpfs,
        "/sandbox",
        "--chdir",
        "/sandbox",
    ]
    if root:  # the harness needs these two to drop to the slot uid, then has none
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    env = {**SANDBOX_ENV, "HOME": "/sandbox", "TMPDIR": "/sandbox"}
    for k, v in env.items():
        argv += ["--setenv", k, v]
    return [*argv, "--", python]


class BwrapBackend(Backend):
    name = "bwrap"

    def __init__(
        self,
        limits: Limits,
        python: str,
        uid_slots: UidSlots | None,
        site: bool = True,
        cgroups: CgroupLimiter | None = None,
    ) -> None:
        super().__init__(limits, python, uid_slots, site, cgroups)
        bwrap = shutil.which("bwrap") or "bwrap"
        self.prefix = bwrap_argv(bwrap, limits, python, root=os.geteuid() == 0)
        #: the compiled filter; None on an architecture ``seccomp`` has no table for
        self.seccomp = build_filter()

    def _run(self, job: Job, uid: int | None) -> RunResult:
        # --info-fd names the namespace's init: the run waits for it, so for all its members
        info_r, info_w = os.pipe()
        argv = [self.prefix[0], "--info-fd", str(info_w)]
        extra: tuple[int, ...] = ()
        if self.seccomp is not None:
            extra = (filter_fd(self.seccomp),)
            argv += ["--seccomp", str(extra[0])]
        try:
            return self._execute(
                [*argv, *self.prefix[1:]],
                job,
                uid,
                cwd="/",
                env={},
                info_pipe=(info_r, info_w),
                extra_fds=extra,
            )
        finally:
            for fd in extra:
                os.close(fd)


def probe_bwrap(limits: Limits, python: str, site: bool = True) -> str | None:
    """None when the bwrap backend works here, else why not.

    Runs a real program: bwrap may exist yet fail (no user namespaces in a container).
    """
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
