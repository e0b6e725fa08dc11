"""The default backend: bubblewrap namespaces around the harness.

The program sees a new PID, network (loopback only), IPC and UTS namespace; of the host
file system only read-only ``/usr`` and the interpreter's prefixes; a fresh size-capped
tmpfs as its working directory and ``/tmp``; and a cleared environment.
"""

from __future__ import annotations

import os
import shutil
import sys

from ..harness import encode
from .backend import Backend
from .job import SANDBOX_ENV, Job, Limits, RunResult
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


def bwrap_argv(bwrap: str, limits: Limits, python: str, root: bool) -> list[str]:
    """The ``bwrap ... -- python`` command line every run starts with."""
    ns = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    ns += ["--unshare-cgroup-try"]
    if not root:
        ns += ["--unshare-user", "--disable-userns"]
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
        self, limits: Limits, python: str, uid_slots: UidSlots | None, site: bool = True
    ) -> None:
        super().__init__(limits, python, uid_slots, site)
        bwrap = shutil.which("bwrap") or "bwrap"
        self.prefix = bwrap_argv(bwrap, limits, python, root=os.geteuid() == 0)

    def _run(self, job: Job, uid: int | None) -> RunResult:
        # --info-fd names the namespace's init: the run waits for it, so for all its members
        info_r, info_w = os.pipe()
        argv = [self.prefix[0], "--info-fd", str(info_w), *self.prefix[1:]]
        return self._execute(argv, job, uid, cwd="/", env={}, info_pipe=(info_r, info_w))


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
