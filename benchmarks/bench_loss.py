"""GRPO loss forward+backward: fused op vs torch reference vs an eager framework-style loss.

Run: ``pytest benchmarks/bench_loss.py`` (ratios are printed at the end). Size:
N=4096 rollouts x T=1024 tokens, G=16 rollouts per prompt, ragged lengths, float32, bool mask;
``SRPO_BENCH_N`` / ``SRPO_BENCH_T`` shrink it for a quick check.

The bandwidth floor is a ``copy_`` whose read+write traffic equals the bytes the op must touch
at least once (read logp, old_logp, mask; write the gradient: 13 B/token in float32), so
``fused / floor`` is how far the fused pass is from streaming its data once. (The fused kernel
skips loading logp/old_logp for 16-token chunks whose mask is all 0 -- ~44% of this ragged
batch -- so its GB/s figure is the effective rate over the nominal bytes.)

On a small shared machine, wall-clock medians swing with other processes' load: compare the
ratios of one run, and the mins.
"""

from __future__ import annotations

import os

import pytest
import torch

import srpo.ops as ops
from srpo.algo import LossConfig, grpo_loss_reference

N = int(os.environ.get("SRPO_BENCH_N", 4096))
T = int(os.environ.get("SRPO_BENCH_T", 1024))
G = 16
CFG = LossConfig(clip_low=0.2, clip_high=0.28)


def make_inputs(n: int, t: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(t // 8, t + 1, (n,), generator=gen)
    old = -torch.rand(n, t, generator=gen) * 3
    batch = {
        "rewards": torch.randint(0, 2, (n,), generator=gen).float(),
        "group_ids": torch.arange(n) // G,
        "logp": old + 0.2 * torch.randn(n, t, generator=gen),
        "old_logp": old,
        "mask": torch.arange(t)[None, :] < lengths[:, None],
    }
    return {k: (v.to(dtype) if k.endswith("logp") else v).to(device) for k, v in batch.items()}


def bytes_touched(n: int, t: int, dtype: torch.dtype) -> int:
    e = torch.empty((), dtype=dtype).element_size()
    return n * t * (3 * e + 1)  # logp + old_logp + grad, + 1-byte mask


def eager_framework_loss(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
) -> torch.Tensor:
    """How popular frameworks write it: a Python loop over groups, then a materialized
    [N, T] advantage and an elementwise clipped loss (cf. verl compute_grpo_outcome_advantage
    + compute_policy_loss)."""
    scores = rewards.clone()
    id2score: dict[int, list[torch.Tensor]] = {}
    for i, g in enumerate(group_ids.tolist()):
        id2score.setdefault(g, []).append(scores[i])
    id2mean, id2std = {}, {}
    for g, vals in id2score.items():
        s = torch.stack(vals)
        id2mean[g] = s.mean() if len(vals) > 1 else torch.tensor(0.0)
        id2std[g] = s.std() if len(vals) > 1 else torch.tensor(1.0)
    for i, g in enumerate(group_ids.tolist()):
        scores[i] = (scores[i] - id2mean[g]) / (id2std[g] + 1e-6)
    m = mask.to(logp.dtype)
    advantages = scores.unsqueeze(-1) * m  # [N, T] materialized
    ratio = torch.exp(logp - old_logp)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    pg = torch.maximum(pg1, pg2)
    return (pg * m).sum() / m.sum()


@pytest.fixture(scope="module")
def cpu_inputs() -> dict:
    return make_inputs(N, T)


def _fwd_bwd(fn, inputs: dict):
    logp = inputs["logp"].clone().requires_grad_()
    rest = {k: v for k, v in inputs.items() if k != "logp"}

    def step() -> None:
        logp.grad = None
        out = fn(logp=logp, **rest)
        loss = out if isinstance(out, torch.Tensor) else out.loss
        loss.backward()

    return step


def test_fused(benchmark, record, cpu_inputs) -> None:
    assert ops.active_backend() != "reference", ops.backend_info()
    step = _fwd_bwd(lambda **kw: ops.grpo_loss(**kw, cfg=CFG, backend="compiled"), cpu_inputs)
    benchmark.pedantic(step, rounds=15, warmup_rounds=2)
    record("fused", benchmark, bytes=bytes_touched(N, T, torch.float32))


def test_reference(benchmark, record, cpu_inputs) -> None:
    step = _fwd_bwd(lambda **kw: grpo_loss_reference(**kw, cfg=CFG), cpu_inputs)
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    record("reference", benchmark)


def test_eager_framework(benchmark, record, cpu_inputs) -> None:
    step = _fwd_bwd(eager_framework_loss, cpu_inputs)
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    record("eager_framework", benchmark)


def test_bandwidth_floor(benchmark, record) -> None:
    half = bytes_touched(N, T, torch.float32) // 2  # copy_: reads `half`, writes `half`
    src = torch.ones(half, dtype=torch.uint8)
    dst = torch.empty_like(src)
    benchmark.pedantic(lambda: dst.copy_(src), rounds=15, warmup_rounds=2)
    record("bandwidth_floor", benchmark, bytes=2 * half)


# --- GPU variant: achieved bandwidth vs the card's HBM peak -------------------------------
HBM_PEAK_GBS = {
    "H200": 4800.0,
    "H100 SXM": 3350.0,
    "H100 PCIe": 2000.0,
    "H100": 3350.0,
    "A100-SXM4-80GB": 2039.0,
    "A100": 1555.0,
    "L40S": 864.0,
}


def _peak(name: str) -> float | None:
    for key, val in HBM_PEAK_GBS.items():
        if key in name:
            return val
    return None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cuda(benchmark, record, dtype) -> None:
    if not ops.active_backend().endswith("cuda"):
        pytest.skip("no CUDA kernels in this build")
    n, t = 4 * N, 2 * T
    inputs = make_inputs(n, t, "cuda", dtype)
    step = _fwd_bwd(lambda **kw: ops.grpo_loss(**kw, cfg=CFG, backend="compiled"), inputs)

    def timed() -> None:
        step()
        torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=30, warmup_rounds=3)
    extra = {"bytes": bytes_touched(n, t, dtype)}
    peak = _peak(torch.cuda.get_device_name())
    if peak:
        extra["peak_gbs"] = peak
    record(f"fused_cuda_{str(dtype).split('.')[-1]}", benchmark, **extra)
