"""csrc/grpo_cuda.cu (with the shared csrc/grpo_math.h) compiles standalone with nvcc.

GPU parity is not here: every case of tests/test_ops_parity.py also runs on CUDA (marked
``cuda``, skipped without a GPU), from the shared cases of tests/support/ops.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = Path(home) / "bin" / "nvcc"
    return str(cand) if cand.exists() else shutil.which("nvcc")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_standalone(arch: str, tmp_path: Path) -> None:
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (set CUDA_HOME)")
    obj = tmp_path / f"grpo_{arch}.o"
    res = subprocess.run(
        [
            nvcc,
            "-c",
            str(CSRC / "grpo_cuda.cu"),
            "-I",
            str(CSRC),
            "-o",
            str(obj),
            f"-arch={arch}",
            "-O3",
            "-Werror",
            "all-warnings",
            "-Xptxas",
            "-v",  # per-kernel resources, checked below
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert obj.stat().st_size > 0
    # Every fused-kernel instance (dtype x mask x KL x grad x token weight: 3 * 2 * 4 * 2 * 2)
    # was compiled; the float32/bfloat16 ones (the fast path) spill no registers. (float64,
    # the gradcheck path, may: sm_90 spills 24 bytes in the weighted k3 float-mask kernel.)
    lines = res.stderr.splitlines()
    entries = [ln for ln in lines if "Compiling entry function" in ln]
    assert sum("fused_kernel" in ln for ln in entries) == 96, res.stderr[-4000:]
    spills = []
    for k, ln in enumerate(lines):
        if "spill stores" in ln and " 0 bytes spill stores" not in ln:
            kernel = next(x for x in reversed(lines[:k]) if "Function properties" in x)
            if "fused_kernelId" not in kernel:  # not a float64 instance
                spills.append((kernel, ln))
    assert not spills, spills
