"""csrc/grpo_cuda.cu compiles standalone with nvcc; GPU parity where a GPU exists."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from srpo.algo import STAT_NAMES, LossConfig, grpo_loss_reference

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
            "-o",
            str(obj),
            f"-arch={arch}",
            "-O3",
            "-Werror",
            "all-warnings",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert obj.stat().st_size > 0


def _batch(n: int, t: int, dtype: torch.dtype, device: str) -> dict:
    gen = torch.Generator().manual_seed(n * 7 + t)
    ids = torch.randint(0, max(1, n // 5), (n,), generator=gen)
    old = -torch.rand(n, t, generator=gen) * 3
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    out = {
        "rewards": torch.randint(0, 2, (n,), generator=gen).float(),
        "group_ids": ids,
        "logp": old + 0.3 * torch.randn(n, t, generator=gen),
        "old_logp": old,
        "mask": torch.arange(t)[None] < lengths[:, None],
        "ref_logp": old + 0.2 * torch.randn(n, t, generator=gen),
    }
    return {k: (v.to(dtype) if k.endswith("logp") else v).to(device) for k, v in out.items()}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("kl", [None, "k3"])
def test_cuda_parity(dtype: torch.dtype, agg: str, kl: str | None) -> None:
    import srpo.ops as ops

    if not ops.active_backend().endswith("cuda"):
        pytest.skip(f"no CUDA kernels in this build: {ops.backend_info()}")
    b = _batch(300, 2500, dtype, "cuda")  # several T-chunks per row
    if kl is None:
        b["ref_logp"] = None
    cfg = LossConfig(dual_clip=3.0, kl_coef=0.05 if kl else 0.0, aggregation=agg)  # type: ignore[arg-type]
    logp = b.pop("logp").requires_grad_()
    got = ops.grpo_loss(logp=logp, cfg=cfg, backend="compiled", **b)
    got.loss.backward()
    cpu = {
        k: (v.cpu().double() if v is not None and v.is_floating_point() else v)
        for k, v in b.items()
    }
    cpu = {k: (v.cpu() if v is not None else v) for k, v in cpu.items()}
    x = logp.detach().cpu().double().requires_grad_()
    want = grpo_loss_reference(logp=x, cfg=cfg, **cpu)
    want.loss.backward()
    rtol = {torch.float64: 1e-9, torch.float32: 1e-5, torch.bfloat16: 1e-4}[dtype]
    grtol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(got.loss.double().cpu(), want.loss, rtol=rtol, atol=1e-7)
    torch.testing.assert_close(logp.grad.double().cpu(), x.grad, rtol=grtol, atol=1e-7)
    for k in STAT_NAMES:
        torch.testing.assert_close(
            got.stats[k].double().cpu(), want.stats[k].double(), rtol=1e-5, atol=1e-6, msg=k
        )
