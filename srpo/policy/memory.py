"""The peak memory of one update, for the ``memory/update_peak_gb`` metric
(``memory/``: machine-dependent, left out of reproducibility checks like ``time/``).

On CUDA it is the allocator's peak since the update began (``max_memory_allocated`` after
``reset_peak_memory_stats``). On Linux CPUs it is the process's peak resident set since the
update began: writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's high-water mark
(VmHWM) to the current RSS, and VmHWM is read back at the end — a true peak, not a sample,
at the cost of two small file operations per update. Elsewhere it is the lifetime peak RSS
(``ru_maxrss``), which can only say the update stayed under it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
from functools import cache
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def proc_kib_field(path: Path, key: str) -> int | None:
    """A ``Key:   N kB`` line of a /proc file (status, meminfo) in bytes; None where the file
    or the key is missing (not Linux)."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _vm_hwm_bytes() -> int | None:
    return proc_kib_field(_STATUS, "VmHWM")


class PeakMemory:
    """Started at construction; ``read_gb`` gives the peak since then (GB = 1e9 bytes)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.reset_ok = False
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
            self.device = device
            return
        try:
            _CLEAR_REFS.write_text("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False

    def read_gb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 1e9
        hwm = _vm_hwm_bytes() if self.reset_ok else None
        if hwm is None:
            scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        return hwm / 1e9


@cache
def _libc_malloc_trim() -> object | None:
    """glibc's ``malloc_trim``, or None (musl, macOS, Windows: nothing to call)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_host_memory(device: torch.device) -> None:
    """Give the freed heap back to the OS between the step's phases (CPU runs on glibc).

    torch's CPU tensors come from malloc. After the first large tensor is freed, glibc raises
    its mmap threshold (up to 32 MB), so a pass's activations and generation's buffers come
    from the heap afterwards, and what they free stays in the process: on the SmolLM2 example
    at 48 tokens about 1 GB after generation and 3 GB after the update, which the next phase
    then stacks its own peak on (benchmarks/RESULTS.md, "Where the memory goes").
    ``malloc_trim(0)`` returns every free page, in a few milliseconds. On CUDA the host side
    holds little and the device's caching allocator is left alone.
    """
    if device.type != "cpu":
        return
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)  # type: ignore[operator]
