"""Shared cases and checks for the compiled GRPO op (``srpo.ops``), parametrized by device.

Every parity case runs on every device (``DEVICES``: CPU, and CUDA where present, marked
``cuda``) against the float64 torch reference on the CPU, fed the same input values.

Tolerances (vs that reference):
  float64  rtol 1e-9             (same math, only summation order differs)
  float32  rtol 1e-5, grad 1e-4  (float32 accumulation, polynomial exp <= 2 ulp)
  bfloat16 rtol 1e-4, grad 8e-3  (float32 math; the gradient is rounded to bf16: 2^-8)

Weighted cases (rollout correction, ``token_weight``): every nasty case and a slice of the
option grid again with the weights of each correction mode (``WEIGHTED_CASES``), computed by
``srpo.algo.correction_weights`` from a perturbed behaviour policy; NaN weights are stored at
masked positions, which the op must ignore.

Also a child-process entry point, run from the repository root:
  python -m tests.support.ops isa-outputs PATH   the CPU kernels' outputs on ISA_BATCHES
                                                 (SRPO_CPU_ISA picks the copy), saved to PATH
  python -m tests.support.ops fork-check         the op in a fork()ed child (helper threads
                                                 do not survive fork: the pool must be rebuilt)
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

import srpo.ops as ops
from srpo.algo import (
    AGGREGATIONS,
    STAT_NAMES,
    LossConfig,
    LossOutput,
    RolloutCorrectionOptions,
    correction_weights,
    grpo_loss_reference,
)

F64 = torch.float64
F32 = torch.float32
BF16 = torch.bfloat16
DTYPES = (F32, F64, BF16)
TOL = {
    F64: {"loss": 1e-9, "grad_rtol": 1e-9, "grad_atol": 1e-12, "stat_rtol": 1e-9},
    F32: {"loss": 1e-5, "grad_rtol": 1e-4, "grad_atol": 1e-7, "stat_rtol": 1e-5},
    BF16: {"loss": 1e-4, "grad_rtol": 8e-3, "grad_atol": 1e-6, "stat_rtol": 1e-5},
}

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]


def require_compiled(device: str) -> None:
    """Fail if the compiled op did not load; skip on a device this build has no kernels for."""
    assert ops.active_backend() != "reference", ops.backend_info()["errors"]
    if device == "cuda" and not ops.backend_info()["cuda_kernels"]:
        pytest.skip(f"no CUDA kernels in this build: {ops.backend_info()}")


# --------------------------------------------------------------------------- batches

Batch = dict[str, torch.Tensor | None]


def make_batch(
    n: int = 24,
    t: int = 33,
    seed: int = 0,
    dtype: torch.dtype = F32,
    with_ref: bool = True,
    float_mask: bool = False,
) -> Batch:
    """Ragged masks, unequal groups with arbitrary (negative, sparse, shuffled) ids, a flat
    group, singletons and a fully-masked row."""
    gen = torch.Generator().manual_seed(seed)
    sizes, left = [], n
    while left > 0:
        s = min(left, int(torch.randint(1, 7, (1,), generator=gen)))
        sizes.append(s)
        left -= s
    ids = torch.cat(
        [
            torch.full((s,), int(torch.randint(-50, 50, (1,), generator=gen)) * 100 + k)
            for k, s in enumerate(sizes)
        ]
    )
    ids = ids[torch.randperm(n, generator=gen)]
    rewards = torch.randint(0, 3, (n,), generator=gen).float() + 0.1 * torch.randn(n, generator=gen)
    if n:
        rewards[ids == ids[0]] = 1.0  # one flat group
    old = -torch.rand(n, t, generator=gen) * 3
    logp = old + 0.3 * torch.randn(n, t, generator=gen)
    ref = old + 0.2 * torch.randn(n, t, generator=gen)
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    if n > 1:
        lengths[1] = 0  # a fully-masked row
    mask = torch.arange(t)[None, :] < lengths[:, None]
    if float_mask:
        mask = mask.float() * (0.5 + torch.rand(n, t, generator=gen))
    return {
        "rewards": rewards,
        "group_ids": ids.to(torch.int32),
        "logp": logp.to(dtype),
        "old_logp": old.to(dtype),
        "mask": mask,
        "ref_logp": ref.to(dtype) if with_ref else None,
    }


def long_batch(
    n: int = 96, t: int = 1037, seed: int = 0, dtype: torch.dtype = F32, float_mask: bool = False
) -> Batch:
    """Groups of 8 with positive, negative and zero advantages; long rows (several SIMD vectors,
    several CUDA chunks) with a ragged tail and whole masked chunks between unmasked ones."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (n,), generator=gen).double()
    rewards[:8] = 1.0  # a flat group: A = 0 rows
    old = -torch.rand(n, t, generator=gen) * 3
    logp = old + 0.4 * torch.randn(n, t, generator=gen)
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    mask[::3, 40:300] = False  # whole masked chunks between unmasked ones
    mask[1::5] &= torch.rand(n // 5 + (1 if n % 5 > 1 else 0), t, generator=gen) < 0.3
    if float_mask:
        mask = mask.float() * (0.5 + torch.rand(n, t, generator=gen))
    return {
        "rewards": rewards,
        "group_ids": torch.arange(n) // 8,
        "logp": logp.to(dtype),
        "old_logp": old.to(dtype),
        "mask": mask,
        "ref_logp": (old + 0.2 * torch.randn(n, t, generator=gen)).to(dtype),
    }


def _as_dtype(batch: Batch, dtype: torch.dtype) -> Batch:
    return {
        k: (v.to(dtype) if v is not None and k.endswith("logp") else v) for k, v in batch.items()
    }


def _singletons(dtype: torch.dtype) -> Batch:
    b = make_batch(n=12, t=9, seed=21, dtype=dtype)
    b["group_ids"] = torch.arange(12) * 7 - 40  # every group has one member: A = 0
    return b


def _near_constant(dtype: torch.dtype) -> Batch:
    """Float noise on equal rewards must not be blown up to +-1 by the std division."""
    b = make_batch(n=16, t=11, seed=22, dtype=dtype)
    b["group_ids"] = torch.arange(16) // 4
    r = torch.tensor([1.0, 1.0 + 1e-9, 1.0 - 1e-9, 1.0], dtype=F64)
    b["rewards"] = torch.cat([r, 1e6 + 1e-4 * r, r * 0.0 + 3.0, torch.tensor([0.0, 1, 0, 1])])
    return b


def _masked_rows(dtype: torch.dtype) -> Batch:
    b = make_batch(n=10, t=13, seed=23, dtype=dtype)
    b["mask"][::2] = False  # half the rows fully masked
    return b


def _all_masked(dtype: torch.dtype) -> Batch:
    b = make_batch(n=6, t=5, seed=24, dtype=dtype)
    b["mask"][:] = False  # no token at all: loss and token stats 0
    return b


def _nonfinite_masked(dtype: torch.dtype) -> Batch:
    """NaN/inf stored at mask == 0 must not reach the loss, the gradient or the error check."""
    b = make_batch(n=8, t=10, seed=2, dtype=dtype)
    b["mask"][:, 7:] = False
    b["logp"][:, 8] = float("nan")
    b["old_logp"][:, 9] = float("inf")
    b["ref_logp"][:, 7] = float("-inf")
    b["logp"][1, :] = float("nan")  # row 1 is fully masked
    return b


def _sparse_ids(dtype: torch.dtype, id_dtype: torch.dtype) -> Batch:
    b = make_batch(n=20, t=7, seed=25, dtype=dtype)
    if id_dtype == torch.uint8:
        b["group_ids"] = torch.tensor([9, 200, 9, 3, 200, 3, 77, 9] * 3)[:20].to(torch.uint8)
    else:  # huge and negative ids, interleaved
        base = torch.tensor([-(10**12), 5, 10**12, -3, 0])
        b["group_ids"] = base[torch.arange(20) % 5].to(id_dtype)
    return b


def _empty(n: int, t: int) -> Callable[[torch.dtype], Batch]:
    def build(dtype: torch.dtype) -> Batch:
        return {
            "rewards": torch.zeros(n),
            "group_ids": torch.zeros(n, dtype=torch.long),
            "logp": torch.zeros(n, t, dtype=dtype),
            "old_logp": torch.zeros(n, t, dtype=dtype),
            "mask": torch.ones(n, t, dtype=torch.bool),
            "ref_logp": None,
        }

    return build


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class OpCase:
    """One parity case: a batch builder (inputs on the CPU, log-probs in the given dtype) and
    a config, run in each of ``dtypes``."""

    name: str
    build: Callable[[torch.dtype], Batch]
    cfg: LossConfig = field(default_factory=LossConfig)
    dtypes: tuple[torch.dtype, ...] = DTYPES


def _option_grid() -> list[OpCase]:
    """Every combination of the options the op implements."""
    cases = []
    for std, agg, dual, kl, clip in itertools.product(
        [True, False],
        AGGREGATIONS,
        [None, 3.0],
        [None, "k1", "k2", "k3"],
        [(0.2, 0.2), (0.2, 0.28)],
    ):
        cfg = LossConfig(
            clip_low=clip[0],
            clip_high=clip[1],
            dual_clip=dual,
            kl_coef=0.05 if kl else 0.0,
            kl_estimator=kl or "k3",
            aggregation=agg,
            norm_constant=16.0 if agg == "seq-mean-token-sum-norm" and std else None,
            std_normalize=std,
        )
        name = f"{agg}-{'std' if std else 'nostd'}-dual{dual}-kl{kl}-clip{clip[1]}"
        seed = len(cases) * 7 + 1

        def build(dtype: torch.dtype, seed: int = seed, kl: str | None = kl) -> Batch:
            return make_batch(seed=seed, dtype=dtype, with_ref=bool(kl))

        cases.append(OpCase(name, build, cfg))
    return cases


KL_CFG = LossConfig(kl_coef=0.1, kl_estimator="k2", dual_clip=2.0, clip_high=0.28)

NASTY_CASES = [
    OpCase("singleton-groups", _singletons, KL_CFG),
    OpCase("near-constant-rewards", _near_constant),
    OpCase("fully-masked-rows", _masked_rows, LossConfig(aggregation="seq-mean-token-mean")),
    OpCase("all-masked", _all_masked, LossConfig(kl_coef=0.1)),
    OpCase("empty-0x8", _empty(0, 8)),
    OpCase("empty-0x0", _empty(0, 0)),
    OpCase("empty-3x0", _empty(3, 0), LossConfig(aggregation="seq-mean-token-sum-norm")),
    OpCase("nonfinite-at-masked", _nonfinite_masked, LossConfig(kl_coef=0.1, kl_estimator="k3")),
    OpCase("sparse-ids-int64", lambda d: _sparse_ids(d, torch.long), KL_CFG),
    OpCase("sparse-ids-uint8", lambda d: _sparse_ids(d, torch.uint8)),
    OpCase(
        "float-mask", lambda d: make_batch(n=40, t=70, seed=3, dtype=d, float_mask=True), KL_CFG
    ),
    OpCase("ref-without-kl", lambda d: make_batch(n=40, t=70, seed=3, dtype=d), LossConfig()),
    OpCase("long-rows", lambda d: long_batch(n=40, t=2500, seed=4, dtype=d), KL_CFG),
    OpCase(
        "long-rows-float-mask",
        lambda d: long_batch(n=24, t=1100, seed=5, dtype=d, float_mask=True),
        LossConfig(dual_clip=3.0, aggregation="seq-mean-token-mean"),
    ),
]

OPTION_CASES = _option_grid()

# --------------------------------------------------------------------------- weighted cases

#: Correction modes with weights, and explicit bounds that put tokens on both sides of a band.
WEIGHT_MODES = {
    "token_tis": RolloutCorrectionOptions(mode="token_tis"),
    "seq_tis": RolloutCorrectionOptions(mode="seq_tis", high=1.5),
    "seq_mis": RolloutCorrectionOptions(mode="seq_mis", low=0.3, high=2.0),
    "icepop": RolloutCorrectionOptions(mode="icepop", low=0.8, high=1.25),
}


def with_weights(batch: Batch, mode: str, seed: int = 0) -> Batch:
    """``batch`` plus ``token_weight`` [N, T] float32 (float64 for float64 log-probs): the
    weights of ``mode`` for a behaviour policy 0.3 * N(0, 1) away from ``old_logp``, NaN where
    the mask is 0 (the op must never read them into the math)."""
    old = batch["old_logp"]
    assert old is not None
    gen = torch.Generator().manual_seed(1000 + seed)
    behaviour = old.double() + 0.3 * torch.randn(old.shape, generator=gen, dtype=F64)
    weight, _ = correction_weights(old, behaviour, batch["mask"], WEIGHT_MODES[mode])
    assert weight is not None
    weight = weight.clone()
    weight[batch["mask"] == 0] = float("nan")
    return {**batch, "token_weight": weight}


def _weighted(case: OpCase, mode: str, seed: int) -> OpCase:
    def build(dtype: torch.dtype) -> Batch:
        return with_weights(case.build(dtype), mode, seed)

    return OpCase(f"{case.name}-w{mode}", build, case.cfg, case.dtypes)


WEIGHTED_CASES = [
    _weighted(c, mode, k) for k, c in enumerate(NASTY_CASES) for mode in WEIGHT_MODES
] + [
    _weighted(c, list(WEIGHT_MODES)[k % len(WEIGHT_MODES)], k)
    for k, c in enumerate(OPTION_CASES)
    if k % 5 == 0
]


def case_params(cases: list[OpCase]) -> list:
    """pytest params (case, dtype) with readable ids."""
    return [
        pytest.param(c, d, id=f"{c.name}-{str(d).removeprefix('torch.')}")
        for c in cases
        for d in c.dtypes
    ]


# --------------------------------------------------------------------------- running


def to_device(batch: Batch, device: str) -> Batch:
    return {k: (v.to(device) if v is not None else None) for k, v in batch.items()}


def run(
    batch: Batch, cfg: LossConfig, backend: str, device: str = "cpu", as_f64: bool = False
) -> tuple[LossOutput, torch.Tensor]:
    """Forward + backward on ``device``; returns the output and d loss / d logp."""
    b = to_device(batch, device)
    if as_f64:
        b = {k: (v.to(F64) if v is not None and v.is_floating_point() else v) for k, v in b.items()}
    logp = b.pop("logp").detach().clone().requires_grad_()
    if backend == "reference":
        out = grpo_loss_reference(logp=logp, cfg=cfg, **b)
    else:
        out = ops.grpo_loss(logp=logp, cfg=cfg, backend=backend, **b)
    out.loss.backward()
    return out, logp.grad


def assert_matches_reference(batch: Batch, cfg: LossConfig, device: str = "cpu") -> None:
    """The compiled op on ``device`` vs the float64 reference on the CPU (same input values):
    loss, gradient (exactly 0 and finite at masked positions), stats, output dtypes."""
    dtype = batch["logp"].dtype
    got, g_got = run(batch, cfg, "compiled", device)
    want, g_want = run(batch, cfg, "reference", "cpu", as_f64=True)
    tol = TOL[dtype]
    assert got.loss.device.type == device
    assert got.loss.dtype == (F64 if dtype == F64 else F32)
    assert g_got.dtype == dtype and g_got.shape == batch["logp"].shape
    assert torch.isfinite(got.loss) and bool(torch.isfinite(g_got).all())
    mask = batch["mask"].to(device)
    assert bool((g_got[mask == 0] == 0).all())
    torch.testing.assert_close(got.loss.double().cpu(), want.loss, rtol=tol["loss"], atol=1e-7)
    torch.testing.assert_close(
        g_got.double().cpu(), g_want, rtol=tol["grad_rtol"], atol=tol["grad_atol"]
    )
    assert set(got.stats) == set(STAT_NAMES) == set(want.stats)
    for k in STAT_NAMES:
        torch.testing.assert_close(
            got.stats[k].double().cpu(),
            want.stats[k].double(),
            rtol=tol["stat_rtol"],
            atol=1e-6,
            msg=k,
        )


def outputs(batch: Batch, cfg: LossConfig, device: str = "cpu") -> list[torch.Tensor]:
    """Loss, gradient and stats of the compiled op, for bit-for-bit comparisons."""
    out, grad = run(batch, cfg, "compiled", device)
    return [out.loss, grad, *out.stats.values()]


# --------------------------------------------------------------------------- child processes

# The CPU kernels' ISA copies (tests/test_ops_cpu_kernels.py): each batch is run in a child
# with SRPO_CPU_ISA set (read once per process), then compared with the reference. Weighted
# batches (token_weight, icepop) exercise the weighted instantiation of each copy.
ISA_CFG = LossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.05, kl_estimator="k3")
ISA_BATCHES = {
    f"{str(d).removeprefix('torch.')}-{'float' if fm else 'bool'}-mask{'-weighted' if w else ''}": (
        d,
        fm,
        w,
    )
    for d in (F32, BF16)
    for fm in (False, True)
    for w in (False, True)
}


def isa_batch(key: str) -> Batch:
    dtype, float_mask, weighted = ISA_BATCHES[key]
    b = long_batch(n=48, t=531, seed=5, dtype=dtype, float_mask=float_mask)
    return with_weights(b, "icepop", 5) if weighted else b


def _isa_outputs(path: str) -> None:
    torch.save({key: outputs(isa_batch(key), ISA_CFG) for key in ISA_BATCHES}, path)


def _fork_check() -> None:
    """Tensors stay below ATen's parallel grain (32768 elements): torch's own OpenMP regions
    hang in a forked child (libgomp is not fork-safe), whatever srpo does. 128 x 200 still makes
    two row blocks for srpo's pool."""
    torch.set_num_threads(2)
    b = long_batch(n=128, t=200, seed=1)
    want = run(b, ISA_CFG, "compiled")[0].loss.item()
    pid = os.fork()
    if pid == 0:
        ok = run(b, ISA_CFG, "compiled")[0].loss.item() == want
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    print("OK")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.ops")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("isa-outputs").add_argument("path")
    sub.add_parser("fork-check")
    args = parser.parse_args()
    if args.cmd == "isa-outputs":
        _isa_outputs(args.path)
    else:
        _fork_check()


if __name__ == "__main__":
    main()
