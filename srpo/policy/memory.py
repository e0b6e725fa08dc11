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

import resource
import sys
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _vm_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


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
