"""A seccomp filter for sandboxed programs, compiled here to classic BPF (no dependency).

Why: namespaces and uids stop a program from *seeing* the host, but every syscall still
reaches the kernel. A test program never needs to mount, trace, load modules, create
namespaces (a nested user namespace hands it full capabilities over a fresh mount
namespace), use keyrings, BPF, perf, userfaultfd or io_uring, so those answer EPERM and
a whole class of kernel attack surface is gone. ``clone3`` answers ENOSYS, so libc falls
back to ``clone``, whose flags (unlike clone3's, behind a pointer) the filter can check:
threads, ``fork``, ``subprocess`` and ``multiprocessing`` keep working; namespace flags
do not. A syscall of a foreign ABI (i386 ``int 0x80`` or x32 on x86_64) kills the
process: its numbers would otherwise slip past the table.

bubblewrap loads the program from ``--seccomp FD`` (an array of ``struct sock_filter``)
after its own namespace setup and just before exec'ing the harness.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

# classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
# offsets in struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}; little-endian
_OFF_NR, _OFF_ARCH, _OFF_ARG0_LO = 0, 4, 16

#: clone() flags that create namespaces (CLONE_NEWTIME is clone3-only: it overlaps CSIGNAL)
CLONE_NS_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)

#: Denied with EPERM: what a test program never needs. Names, so each arch maps its own.
DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "name_to_handle_at", "open_by_handle_at",
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd", "fanotify_init",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "syslog",
    "sethostname", "setdomainname", "settimeofday", "clock_settime", "adjtimex",
    "clock_adjtime", "vhangup",
)  # fmt: skip

# syscall numbers: x86_64 (arch/x86/entry/syscalls) and the generic table (aarch64)
_X86_64 = {
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "unshare": 272,
    "setns": 308, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "name_to_handle_at": 303, "open_by_handle_at": 304,
    "keyctl": 250, "add_key": 248, "request_key": 249,
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "fanotify_init": 300,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163,
    "quotactl": 179, "syslog": 103, "sethostname": 170, "setdomainname": 171,
    "settimeofday": 164, "clock_settime": 227, "adjtimex": 159, "clock_adjtime": 305,
    "vhangup": 153, "clone": 56, "clone3": 435,
}  # fmt: skip
_GENERIC = {
    "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
    "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51, "unshare": 97,
    "setns": 268, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442,
    "name_to_handle_at": 264, "open_by_handle_at": 265,
    "keyctl": 219, "add_key": 217, "request_key": 218,
    "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "fanotify_init": 262,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
    "delete_module": 106, "swapon": 224, "swapoff": 225, "reboot": 142, "acct": 89,
    "quotactl": 60, "syslog": 116, "sethostname": 161, "setdomainname": 162,
    "settimeofday": 170, "clock_settime": 112, "adjtimex": 171, "clock_adjtime": 266,
    "vhangup": 58, "clone": 220, "clone3": 435,
}  # fmt: skip

#: machine -> (AUDIT_ARCH_*, syscall table, first number of a foreign ABI sharing the arch)
_ARCHES: dict[str, tuple[int, dict[str, int], int | None]] = {
    "x86_64": (0xC000003E, _X86_64, 0x40000000),  # x32 numbers have bit 30 set
    "aarch64": (0xC00000B7, _GENERIC, None),
}


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def build_filter(machine: str | None = None) -> bytes | None:
    """The filter for ``machine`` (default: this one) as raw ``sock_filter``s; None when
    the architecture is not known here (the caller then runs without, and says so)."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, table, foreign = arch
    eperm = _ins(_RET_K, _RET_ERRNO | errno.EPERM)
    prog = [
        _ins(_LD_W_ABS, _OFF_ARCH),
        _ins(_JEQ_K, audit_arch, jt=1),
        _ins(_RET_K, _RET_KILL_PROCESS),
        _ins(_LD_W_ABS, _OFF_NR),
    ]
    if foreign is not None:
        prog += [_ins(_JGE_K, foreign, jf=1), _ins(_RET_K, _RET_KILL_PROCESS)]
    for name in DENIED:
        prog += [_ins(_JEQ_K, table[name], jf=1), eperm]
    prog += [_ins(_JEQ_K, table["clone3"], jf=1), _ins(_RET_K, _RET_ERRNO | errno.ENOSYS)]
    prog += [
        _ins(_JEQ_K, table["clone"], jf=3),
        _ins(_LD_W_ABS, _OFF_ARG0_LO),
        _ins(_JSET_K, CLONE_NS_FLAGS, jf=1),
        eperm,
        _ins(_RET_K, _RET_ALLOW),
    ]
    return b"".join(prog)


def filter_fd(prog: bytes) -> int:
    """A fresh fd positioned at the start of ``prog`` (one per run: bwrap reads it to EOF,
    so concurrent runs must not share a file offset). Inheritable; the caller closes it."""
    fd = os.memfd_create("srpo-seccomp", 0)
    try:
        os.write(fd, prog)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
