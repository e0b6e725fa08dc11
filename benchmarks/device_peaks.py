"""The memory bandwidth a GPU can reach at best: vendor figures by name, or its properties.

Its own module because two benchmarks report against it: ``benchmarks.gpu`` (the GB/s of
every op as a share of the peak) and ``benchmarks.bench_loss`` (the peak in the CUDA
benchmark's ``extra_info``); neither imports the other for it.
"""

from __future__ import annotations

#: Vendor peak memory bandwidth (GB/s) by a substring of torch.cuda.get_device_name(),
#: case-insensitive, first match wins (so the more specific names come first). From NVIDIA's
#: datasheets and product briefs: H200 SXM and NVL 4.8 TB/s; GH200 4.0 TB/s (96 GB HBM3; the
#: 144 GB HBM3e one: 4.9); H100 NVL 3.9, H100 PCIe 2.0, H100 SXM 3.35; A100 80GB SXM 2,039,
#: A100 80GB PCIe 1,935, A100 40GB 1,555; L40S/L40 864; L4 300; A10/A10G 600; T4 320; V100 900;
#: B200 8 TB/s.
HBM_PEAK_GBS: tuple[tuple[str, float], ...] = (
    ("GH200", 4000.0),
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100", 1555.0),
    ("B200", 8000.0),
    ("L40S", 864.0),
    ("L40", 864.0),
    ("L4", 300.0),
    ("A10", 600.0),
    ("T4", 320.0),
    ("V100", 900.0),
)


def hbm_peak_gbs(name: str) -> tuple[str, float] | None:
    """(table key, GB/s) for a device name, or None when the table does not know it."""
    low = name.lower()
    for key, gbs in HBM_PEAK_GBS:
        if key.lower() in low:
            return key, gbs
    return None


def properties_peak_gbs(index: int = 0) -> float | None:
    """2 (double data rate) x memory clock x bus width, from the CUDA device's properties."""
    import torch

    props = torch.cuda.get_device_properties(index)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9
