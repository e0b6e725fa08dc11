"""File-system repairs for the no-bubblewrap fallback: a readable stdlib, no stray files.

Why a readable stdlib: as root, the harness starts as root and drops to the slot uid; an
interpreter under a 0700 directory (``/root/.pyenv/...``) then cannot import a module it
has not loaded yet, and correct programs importing ``heapq`` fail. ``READABLE_PATH``
(run by the harness while still root) opens each ``sys.path`` directory the slot uid
cannot reach and replaces the entry with ``/proc/self/fd/N``: a process may always walk
its own fds, and the walk then checks permissions only *below* that directory. Nothing is
chmod'ed or copied on the host, and the program gains read access to the (world-readable)
contents of those directories only: ``..`` from them stops at the first directory it
could not traverse before.

Why a sweep: without a mount namespace the program can write every world-writable
directory (``/tmp``, ``/var/tmp``, ``/dev/shm``...). Its working directory, ``HOME`` and
``TMPDIR`` are a private per-run directory; whatever the slot uid still left in the shared
ones is removed after the run (its uid is exclusive to the run, so every entry it owns
there is the run's). So are its System V IPC objects: without an IPC namespace a shared
memory segment outlives its creator and would keep memory past the sample's cap.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import stat

#: World-writable places on a typical host a program could leave files in.
SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")

#: Trusted code the harness runs before ``main`` (as root, before dropping to the uid).
READABLE_PATH = """
def _srpo_readable_path():
    import os, sys

    def reachable(p):
        while True:
            try:
                if not os.stat(p).st_mode & 0o001:
                    return False
            except OSError:
                return True
            up = os.path.dirname(p)
            if up == p:
                return True
            p = up

    out = []
    for p in sys.path:
        if p and os.path.isdir(p) and not reachable(p):
            p = "/proc/self/fd/%d" % os.open(p, os.O_RDONLY | os.O_DIRECTORY)
        out.append(p)
    sys.path[:] = out
    sys.path_importer_cache.clear()


_srpo_readable_path()
del _srpo_readable_path
"""


def remove_files_of_uid(uid: int, roots: tuple[str, ...] = SHARED_WRITABLE) -> list[str]:
    """Delete what ``uid`` owns in ``roots`` (and world-writable dirs below); the paths.

    Call only once no process of ``uid`` is left. Symlinks are removed, never followed.
    """
    removed: list[str] = []
    for root in roots:
        _sweep(root, uid, removed, depth=0)
    return removed


def _sweep(d: str, uid: int, removed: list[str], depth: int) -> None:
    try:
        entries = list(os.scandir(d))
    except OSError:
        return
    for e in entries:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        if st.st_uid == uid:
            if is_dir:
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(e.path)
            removed.append(e.path)
        elif is_dir and st.st_mode & stat.S_IWOTH and depth < 8:
            _sweep(e.path, uid, removed, depth + 1)  # others may write here: so could uid


_IPC_RMID = 0
#: /proc/sysvipc table -> (id column, remover(libc, id))
_IPC = {
    "shm": ("shmid", lambda libc, i: libc.shmctl(i, _IPC_RMID, None)),
    "sem": ("semid", lambda libc, i: libc.semctl(i, 0, _IPC_RMID)),
    "msg": ("msqid", lambda libc, i: libc.msgctl(i, _IPC_RMID, None)),
}


def remove_ipc_of_uid(uid: int) -> int:
    """Remove the System V shm segments, semaphores and queues ``uid`` owns or created."""
    n = 0
    libc = None
    for table, (id_col, rm) in _IPC.items():
        try:
            with open(f"/proc/sysvipc/{table}") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        if not lines:
            continue
        head = lines[0].split()
        try:
            ci, cu, cc = head.index(id_col), head.index("uid"), head.index("cuid")
        except ValueError:
            continue
        for line in lines[1:]:
            f = line.split()
            if len(f) == len(head) and uid in (int(f[cu]), int(f[cc])):
                libc = libc or ctypes.CDLL(None, use_errno=True)
                n += rm(libc, int(f[ci])) == 0
    return n
