"""Probe programs for the code sandbox: each asks the kernel for one forbidden thing.

A probe defines ``f(x)`` returning ``"denied"`` when the syscall failed with the errno the
seccomp filter gives (EPERM; ENOSYS for clone3), else a string saying what happened, so a
failing test shows how far the program got.
"""

from __future__ import annotations

import platform

from srpo_plugins.verifiers.code.sandbox.seccomp import _ARCHES

#: syscall numbers of this machine (the table the filter itself uses)
NR = _ARCHES.get(platform.machine(), (0, {}, None))[1]

_CALL = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return r, ctypes.get_errno()
def verdict(r, err, want=errno.EPERM):
    if r == -1 and err == want:
        return "denied"
    return f"allowed: r={r} errno={err}"
"""

CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
SIGCHLD = 17


def _simple(name: str, *args: int) -> str:
    return _CALL + f"def f(x):\n    return verdict(*call({NR.get(name, -1)}, *{args!r}))\n"


def probes() -> dict[str, str]:
    """name -> program; each must score its ``"denied"`` path in the sandbox."""
    out = {
        "unshare_user": _simple("unshare", CLONE_NEWUSER),
        "unshare_mount": _simple("unshare", CLONE_NEWNS),
        "setns": _simple("setns", 0, 0),
        "mount": _simple("mount", 0, 0, 0, 0, 0),
        "umount2": _simple("umount2", 0, 0),
        "pivot_root": _simple("pivot_root", 0, 0),
        "chroot": _simple("chroot", 0),
        "ptrace_traceme": _simple("ptrace", 0, 0, 0, 0),
        "keyctl": _simple("keyctl", 0, 0, 0, 0, 0),
        "add_key": _simple("add_key", 0, 0, 0, 0, 0),
        "request_key": _simple("request_key", 0, 0, 0, 0),
        "bpf": _simple("bpf", 0, 0, 0),
        "perf_event_open": _simple("perf_event_open", 0, 0, 0, 0, 0),
        "userfaultfd": _simple("userfaultfd", 0),
        "kexec_load": _simple("kexec_load", 0, 0, 0, 0),
        "init_module": _simple("init_module", 0, 0, 0),
        "finit_module": _simple("finit_module", 0, 0, 0),
        "io_uring_setup": _simple("io_uring_setup", 1, 0),
        "clone3": _CALL
        + f"def f(x):\n    return verdict(*call({NR.get('clone3', -1)}, 0, 0), errno.ENOSYS)\n",
        # a raw clone into a new user namespace; a child that got through exits at once
        "clone_newuser": _CALL
        + "def f(x):\n"
        + f"    r, err = call({NR.get('clone', -1)}, {CLONE_NEWUSER | SIGCHLD}, 0, 0, 0, 0)\n"
        + "    if r == 0:\n        os._exit(0)\n"
        + "    if r > 0:\n        os.waitpid(r, 0)\n"
        + "    return verdict(r, err)\n",
        # the finding: a new user + mount namespace, then a mount in it
        "userns_then_mount": _CALL
        + "def f(x):\n"
        + f"    r, err = call({NR.get('unshare', -1)}, {CLONE_NEWUSER | CLONE_NEWNS})\n"
        + "    if r == -1:\n        return verdict(r, err)\n"
        + "    m = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)\n"
        + "    return f'allowed: new user+mount namespace, mount -> {m}'\n",
        # the filter is really loaded (seccomp mode 2) in the program's process
        "seccomp_mode": "def f(x):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('Seccomp:'):\n"
        "            return 'denied' if line.split()[1] == '2' else 'allowed: ' + line\n"
        "    return 'allowed: no Seccomp line'\n",
    }
    return out


#: What a test program does need: threads, fork, a Python subprocess, multiprocessing.
NORMAL = """
import os, subprocess, sys, threading, multiprocessing
def f(x):
    box = []
    t = threading.Thread(target=lambda: box.append(x * x))
    t.start()
    t.join()
    out = subprocess.run([sys.executable, "-c", "print(7)"], capture_output=True, text=True)
    assert out.stdout.strip() == "7", out
    with multiprocessing.Pool(2) as pool:
        assert pool.map(abs, [-1, 2, -3]) == [1, 2, 3]  # (program functions do not pickle)
    pid = os.fork()
    if pid == 0:
        os._exit(5)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 5
    return box[0]
"""

#: 8 children each touching 400 MB: 3.2 GB if only per-process limits held.
FORK_AND_ALLOCATE = """
import os, time
def f(x):
    kids = []
    for _ in range(8):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                b = bytearray(400 << 20)
                for i in range(0, len(b), 4096):
                    b[i] = 1
                time.sleep(3)
                code = 0
            finally:
                os._exit(code)
        kids.append(pid)
    for k in kids:
        assert os.waitpid(k, 0)[1] == 0, "a child failed"
    return x * x
"""

#: Correct programs that import stdlib modules the harness has not loaded.
STDLIB_IMPORTS = {
    "heapq": "import heapq\ndef f(x):\n    h = [x * x, 99]\n    heapq.heapify(h)\n    return h[0]",
    "bisect": "import bisect\ndef f(x):\n    xs = [0, x * x, 99]\n    return xs[bisect.bisect_left(xs, x * x)]",
    "decimal": "from decimal import Decimal\ndef f(x):\n    return int(Decimal(x) * Decimal(x))",
}


def litter(token: str) -> str:
    """A correct program that leaves files (and a directory) in the shared temp dirs."""
    return (
        "import os\n"
        "def f(x):\n"
        "    for d in ('/tmp', '/var/tmp', '/dev/shm'):\n"
        "        try:\n"
        f"            open(os.path.join(d, '{token}'), 'w').write('x')\n"
        f"            os.makedirs(os.path.join(d, '{token}-dir', 'sub'), exist_ok=True)\n"
        f"            open(os.path.join(d, '{token}-dir', 'sub', 'f'), 'w').write('x')\n"
        "        except OSError:\n"
        "            pass\n"
        "    return x * x\n"
    )


#: A correct program that leaves a System V shared memory segment (64 MiB) behind.
SYSV_SHM = """
import ctypes
def f(x):
    libc = ctypes.CDLL(None, use_errno=True)
    shmid = libc.shmget(0, 64 << 20, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
    assert shmid >= 0, ctypes.get_errno()
    return x * x
"""
