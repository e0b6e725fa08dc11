"""Micro-batches free of groups: one advantage pass over the mini-batch, then a loss pass per
micro-batch with the mini-batch's advantages and denominator, equals the one-call loss.

That is what lets ``srpo.policy.microbatch`` cut a batch by tokens instead of by groups, so
each case here splits a batch into row sets that cut through its groups (shuffled, unequal
sizes, a single row, an empty set) and checks, on every device:

* the summed micro-batch losses and the assembled gradient against the one-call compiled op
  (float32 ≤ 1e-6 relative on the loss; the gradient is bit for bit: each token's gradient is
  computed from the same float64 advantage and the same row scale) and against the float64
  torch reference run the same split way (the oracle);
* the advantage pass against the reference estimator, and its stats against the one call's;
* float64 gradcheck through the given-advantages path; the argument errors.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import srpo.ops as ops
from srpo.algo import AGGREGATIONS, LossConfig, grpo_loss_reference
from srpo.algo.grpo import group_advantages
from tests.support.ops import (
    DEVICES,
    F64,
    KL_CFG,
    NASTY_CASES,
    TOL,
    Batch,
    OpCase,
    case_params,
    long_batch,
    make_batch,
    require_compiled,
    to_device,
    with_weights,
)

# nasty cases (singletons, near-constant rewards, masked rows, empty batches, ...) and every
# aggregation with and without a KL term
SPLIT_CASES = (
    NASTY_CASES
    + [
        OpCase(
            f"{agg}-kl{kl}",
            lambda d, s=k, kl=kl: make_batch(n=37, t=29, seed=90 + s, dtype=d, with_ref=kl),
            LossConfig(aggregation=agg, kl_coef=0.05 if kl else 0.0, dual_clip=3.0),
        )
        for k, (agg, kl) in enumerate((a, kl) for a in AGGREGATIONS for kl in (False, True))
    ]
    + [
        OpCase(
            "weighted",
            lambda d: with_weights(long_batch(n=32, t=300, seed=7, dtype=d), "icepop"),
            KL_CFG,
        ),
    ]
)


def _splits(n: int, seed: int) -> list[torch.Tensor]:
    """Row sets through the groups: a shuffle cut into unequal pieces (one of a single row,
    one empty)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    cuts = sorted({0, n, min(1, n), *torch.randint(0, n + 1, (3,), generator=gen).tolist()})
    return [*(perm[a:b] for a, b in itertools.pairwise(cuts)), perm[:0]]


def _units(mask: torch.Tensor, cfg: LossConfig) -> float:
    if cfg.aggregation == "token-mean":
        return float(mask.double().sum())
    return float((mask.sum(1) > 0).sum())


def _split_run(b: Batch, cfg: LossConfig, backend: str, device: str, as_f64: bool = False):
    """Advantage pass, then one loss call per row set; returns (summed loss, gradient, the
    pass, per-piece outputs)."""
    b = to_device(b, device)
    if as_f64:
        b = {k: (v.to(F64) if v is not None and v.is_floating_point() else v) for k, v in b.items()}
    logp = b["logp"].detach().clone().requires_grad_()
    passed = ops.advantage_pass(b["rewards"], b["group_ids"], cfg, backend=backend)
    denom = max(_units(b["mask"], cfg), 1.0)
    total, outs = None, []
    for rows in _splits(logp.shape[0], seed=logp.shape[0]):
        rows = rows.to(device)
        piece = {k: (v[rows] if v is not None else None) for k, v in b.items() if k != "logp"}
        out = ops.grpo_loss(
            logp=logp[rows],
            cfg=cfg,
            backend=backend,
            advantages=passed.advantages[rows],
            denominator=denom,
            **piece,
        )
        out.loss.backward()
        outs.append(out)
        total = out.loss.detach() if total is None else total + out.loss.detach()
    if logp.grad is None:  # no rows at all
        logp.grad = torch.zeros_like(logp)
    return total, logp.grad, passed, outs


def _one_call(b: Batch, cfg: LossConfig, device: str):
    b = to_device(b, device)
    logp = b.pop("logp").detach().clone().requires_grad_()
    out = ops.grpo_loss(logp=logp, cfg=cfg, backend="compiled", **b)
    out.loss.backward()
    return out, logp.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("case", "dtype"), case_params(SPLIT_CASES))
def test_split_batch_equals_one_call(device: str, case: OpCase, dtype: torch.dtype) -> None:
    require_compiled(device)
    b = case.build(dtype)
    whole, g_whole = _one_call(b, case.cfg, device)
    loss, grad, passed, outs = _split_run(b, case.cfg, "compiled", device)
    tol = TOL[dtype]
    torch.testing.assert_close(loss.double(), whole.loss.double(), rtol=1e-6, atol=1e-7)
    # each token's gradient comes from the same advantage and the same row scale: bit for bit
    # with a bool mask (a float mask's count is summed in another order here than in the op)
    exact = b["mask"].dtype == torch.bool
    torch.testing.assert_close(grad, g_whole, rtol=0 if exact else 1e-6, atol=0)
    # the pass's stats are the one call's
    for key in ("zero_adv_group_frac", "adv_abs_mean"):
        want = whole.stats[key].double()
        torch.testing.assert_close(getattr(passed, key).double(), want, rtol=1e-6, atol=1e-7)
    # the oracle: the float64 reference, split the same way, on the CPU
    ref_loss, ref_grad, _, _ = _split_run(b, case.cfg, "reference", "cpu", as_f64=True)
    torch.testing.assert_close(loss.double().cpu(), ref_loss, rtol=tol["loss"], atol=1e-7)
    torch.testing.assert_close(
        grad.double().cpu(), ref_grad, rtol=tol["grad_rtol"], atol=tol["grad_atol"]
    )
    # per piece: the same stats as the reference (token means over the piece)
    for got in outs:
        assert got.stats["zero_adv_group_frac"] == 0  # given advantages carry no groups
        assert torch.isfinite(got.loss)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
@pytest.mark.parametrize("std_normalize", [True, False])
def test_advantage_pass_matches_the_estimator(
    device: str, estimator: str, std_normalize: bool
) -> None:
    """Compiled (grpo) or registry (rloo: not fused) advantages equal the float64 estimator,
    on shuffled sparse ids with singletons and a flat group."""
    require_compiled(device)
    b = make_batch(n=41, t=3, seed=5)
    cfg = LossConfig(advantage=estimator, std_normalize=std_normalize)
    got = ops.advantage_pass(b["rewards"].to(device), b["group_ids"].to(device), cfg)
    want = group_advantages(
        b["rewards"].double(), b["group_ids"], std_normalize=std_normalize, estimator=estimator
    )
    assert got.advantages.dtype == F64 and got.advantages.device.type == device
    torch.testing.assert_close(got.advantages.cpu(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.adv_abs_mean.cpu(), want.abs().mean(), rtol=1e-12, atol=0)
    assert 0 < float(got.zero_adv_group_frac) < 1


def test_advantage_pass_on_an_empty_batch_and_nonfinite_rewards() -> None:
    empty = ops.advantage_pass(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert empty.advantages.shape == (0,) and float(empty.adv_abs_mean) == 0.0
    with pytest.raises(ValueError, match="rewards"):
        ops.advantage_pass(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0]))


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_given_advantages_errors_name_the_argument(backend: str) -> None:
    b = make_batch(n=6, t=4, seed=1, with_ref=False)
    with pytest.raises(ValueError, match="advantages must have shape"):
        ops.grpo_loss(**b, backend=backend, advantages=torch.zeros(5))
    with pytest.raises(ValueError, match="denominator must be > 0"):
        ops.grpo_loss(**b, backend=backend, advantages=torch.zeros(6), denominator=0.0)
    bad = torch.zeros(6, dtype=F64)
    bad[2] = float("inf")
    with pytest.raises(ValueError, match="advantages"):
        ops.grpo_loss(**b, backend=backend, advantages=bad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_gradcheck_given_advantages(device: str, aggregation: str) -> None:
    """float64 gradcheck of the loss pass with given advantages and a denominator."""
    require_compiled(device)
    b = to_device(make_batch(n=9, t=6, seed=11, dtype=F64, with_ref=True), device)
    cfg = LossConfig(aggregation=aggregation, kl_coef=0.1, dual_clip=2.5)
    adv = torch.linspace(-1.5, 1.5, 9, dtype=F64, device=device)
    logp = b.pop("logp").detach().clone().requires_grad_()

    def f(x: torch.Tensor) -> torch.Tensor:
        return ops.grpo_loss(
            logp=x, cfg=cfg, backend="compiled", advantages=adv, denominator=17.0, **b
        ).loss

    assert torch.autograd.gradcheck(f, (logp,), eps=1e-6, atol=1e-7)


def test_reference_denominator_rescales_its_own_mean() -> None:
    """The reference with a denominator is its own aggregation × units ÷ denominator (so a
    custom registered aggregation keeps its meaning), float64 exact."""
    b = make_batch(n=12, t=9, seed=3, dtype=F64, with_ref=False)
    for agg in AGGREGATIONS:
        cfg = LossConfig(aggregation=agg)
        mean = grpo_loss_reference(**b, cfg=cfg).loss
        units = _units(b["mask"], cfg)
        adv = group_advantages(b["rewards"].double(), b["group_ids"])
        got = grpo_loss_reference(**b, cfg=cfg, advantages=adv, denominator=3 * units).loss
        torch.testing.assert_close(got, mean / 3, rtol=1e-12, atol=0)
