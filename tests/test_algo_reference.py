"""The torch reference (srpo.algo.grpo) against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from srpo.algo import LossConfig, group_advantages, grpo_loss_reference

F64 = torch.float64
SQRT3_2 = math.sqrt(3) / 2


def test_advantages_hand_computed_unequal_groups_any_ids() -> None:
    # group 7: [1,0,0,1] mean .5, unbiased std sqrt(1/3) -> +-sqrt(3)/2
    # group -3: [2,2] flat -> 0;  group 100: singleton -> 0
    # group 5: [0,1,2] mean 1, unbiased std 1 -> [-1,0,1];  group 9: [3,5] std sqrt(2)
    r = torch.tensor([1, 0, 0, 1, 2, 2, 5, 0, 1, 2, 3, 5], dtype=F64)
    g = torch.tensor([7, 7, 7, 7, -3, -3, 100, 5, 5, 5, 9, 9], dtype=torch.int16)
    a = group_advantages(r, g, eps=0.0)
    s2 = 1 / math.sqrt(2)
    want = [SQRT3_2, -SQRT3_2, -SQRT3_2, SQRT3_2, 0, 0, 0, -1, 0, 1, -s2, s2]
    torch.testing.assert_close(a, torch.tensor(want, dtype=F64))
    # Dr.GRPO: centered only
    a = group_advantages(r, g, std_normalize=False)
    want = [0.5, -0.5, -0.5, 0.5, 0, 0, 0, -1, 0, 1, -1, 1]
    torch.testing.assert_close(a, torch.tensor(want, dtype=F64))


def test_advantages_eps_in_denominator() -> None:
    a = group_advantages(torch.tensor([0.0, 1.0, 2.0]), torch.zeros(3, dtype=torch.long), eps=0.5)
    torch.testing.assert_close(a, torch.tensor([-1 / 1.5, 0.0, 1 / 1.5], dtype=F64))


@pytest.mark.parametrize("std_normalize", [True, False])
def test_flat_groups_are_exactly_zero_never_nan(std_normalize: bool) -> None:
    r = torch.tensor(
        [1.0, 1.0 + 1e-9, 1.0 - 1e-9]  # float noise: std ~1e-9 must not become +-1
        + [1000.0, 1000.0 + 1e-7]  # relative rule: noise on a large mean
        + [0.3, 0.3, 0.3]  # all equal
        + [42.0]  # singleton
        + [float(x) for x in range(4)],  # a real group
        dtype=F64,
    )
    g = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 4, 4, 4, 4])
    a = group_advantages(r, g, std_normalize=std_normalize)
    assert torch.isfinite(a).all()
    assert (a[:9] == 0).all()
    assert (a[9:] != 0).all()


def test_all_singletons_and_empty() -> None:
    a = group_advantages(torch.randn(5), torch.arange(5))
    assert (a == 0).all()
    assert group_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)


def _hand_batch() -> tuple[torch.Tensor, ...]:
    """Rows with A = -1, 0, +1 (rewards [0,1,2] in one group); ratios 1.5 and 0.5."""
    r = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    g = torch.zeros(3, dtype=torch.long)
    old = torch.full((3, 2), -1.0, dtype=F64)
    logp = old + torch.tensor([math.log(1.5), math.log(0.5)], dtype=F64)
    return r, g, logp.clone().requires_grad_(), old


def _run(cfg: LossConfig, mask: torch.Tensor, ref: torch.Tensor | None = None):
    r, g, logp, old = _hand_batch()
    out = grpo_loss_reference(r, g, logp, old, mask, ref, cfg)
    out.loss.backward()
    return out, logp.grad


# Per token (clip 0.2):  A=-1: ratio 1.5 -> pg 1.5 (grad 1.5), ratio .5 -> pg .8 (clipped low)
#                        A=+1: ratio 1.5 -> pg -1.2 (clipped high), ratio .5 -> pg -.5 (grad -.5)
def test_token_mean_hand_computed() -> None:
    out, grad = _run(LossConfig(eps=0.0), torch.ones(3, 2, dtype=torch.bool))
    assert out.loss.item() == pytest.approx((1.5 + 0.8 - 1.2 - 0.5) / 6)
    want = torch.tensor([[1.5, 0.0], [0.0, 0.0], [0.0, -0.5]], dtype=F64) / 6
    torch.testing.assert_close(grad, want)
    st = out.stats
    assert st["clip_frac_low"].item() == pytest.approx(1 / 6)
    assert st["clip_frac_high"].item() == pytest.approx(1 / 6)
    assert st["dual_clip_frac"].item() == 0
    assert st["approx_kl"].item() == pytest.approx(
        0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2
    )
    assert st["kl"].item() == 0
    assert st["adv_abs_mean"].item() == pytest.approx(2 / 3)
    assert st["zero_adv_group_frac"].item() == 0
    assert st["tokens"].item() == 6 and st["sequences"].item() == 3


def test_dual_clip_hand_computed() -> None:
    # A=-1, ratio 1.5 > c=1.4: loss capped at 1.4, no gradient
    out, grad = _run(LossConfig(eps=0.0, dual_clip=1.4), torch.ones(3, 2, dtype=torch.bool))
    assert out.loss.item() == pytest.approx((1.4 + 0.8 - 1.2 - 0.5) / 6)
    assert grad[0, 0].item() == 0.0
    assert grad[2, 1].item() == pytest.approx(-0.5 / 6)
    assert out.stats["dual_clip_frac"].item() == pytest.approx(1 / 6)


def test_clip_higher_hand_computed() -> None:
    # clip_high 0.6: ratio 1.5 for A=+1 is inside [0.8, 1.6] -> pg -1.5 with grad -1.5
    out, grad = _run(LossConfig(eps=0.0, clip_high=0.6), torch.ones(3, 2, dtype=torch.bool))
    assert out.loss.item() == pytest.approx((1.5 + 0.8 - 1.5 - 0.5) / 6)
    assert grad[2, 0].item() == pytest.approx(-1.5 / 6)
    assert out.stats["clip_frac_high"].item() == 0


def test_aggregations_hand_computed() -> None:
    mask = torch.ones(3, 2, dtype=torch.bool)
    mask[2, 1] = False  # row sums: A=-1: 2.3, A=0: 0, A=+1: -1.2 (one token)
    tm, g_tm = _run(LossConfig(eps=0.0), mask)
    assert tm.loss.item() == pytest.approx((2.3 - 1.2) / 5)
    assert g_tm[2, 1].item() == 0.0
    sm, g_sm = _run(LossConfig(eps=0.0, aggregation="seq-mean-token-mean"), mask)
    assert sm.loss.item() == pytest.approx((2.3 / 2 + 0 - 1.2 / 1) / 3)
    assert g_sm[0, 0].item() == pytest.approx(1.5 / 2 / 3)
    sn, g_sn = _run(
        LossConfig(eps=0.0, aggregation="seq-mean-token-sum-norm", norm_constant=4.0), mask
    )
    assert sn.loss.item() == pytest.approx((2.3 - 1.2) / 4 / 3)
    assert g_sn[0, 0].item() == pytest.approx(1.5 / 4 / 3)
    # default norm constant is T = 2
    sd, _ = _run(LossConfig(eps=0.0, aggregation="seq-mean-token-sum-norm"), mask)
    assert sd.loss.item() == pytest.approx((2.3 - 1.2) / 2 / 3)


def test_fully_masked_row_contributes_nothing() -> None:
    mask = torch.ones(3, 2, dtype=torch.bool)
    mask[1] = False
    out, grad = _run(LossConfig(eps=0.0, aggregation="seq-mean-token-mean"), mask)
    assert out.loss.item() == pytest.approx((2.3 / 2 - 1.7 / 2) / 2)  # 2 non-empty rows
    assert out.stats["sequences"].item() == 2
    assert (grad[1] == 0).all()
    all_masked, grad = _run(LossConfig(), torch.zeros(3, 2, dtype=torch.bool))
    assert all_masked.loss.item() == 0.0 and (grad == 0).all()
    assert all(torch.isfinite(v) for v in all_masked.stats.values())


@pytest.mark.parametrize(
    ("estimator", "value", "dvalue"),
    [
        ("k1", math.log(2), 1.0),  # x - y
        ("k2", 0.5 * math.log(2) ** 2, math.log(2)),  # (x - y)^2 / 2
        ("k3", 0.5 + math.log(2) - 1, 0.5),  # e^(y-x) - (y-x) - 1, d/dx = 1 - e^(y-x)
    ],
)
def test_kl_estimators_hand_computed(estimator: str, value: float, dvalue: float) -> None:
    # Equal rewards -> A = 0, so the loss is kl_coef * KL; x = log .5, y = log .25
    r = torch.ones(2, dtype=F64)
    g = torch.zeros(2, dtype=torch.long)
    logp = torch.full((2, 3), math.log(0.5), dtype=F64, requires_grad=True)
    ref = torch.full((2, 3), math.log(0.25), dtype=F64)
    cfg = LossConfig(kl_coef=0.1, kl_estimator=estimator)  # type: ignore[arg-type]
    out = grpo_loss_reference(r, g, logp, logp.detach(), torch.ones(2, 3), ref, cfg)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.1 * value)
    assert out.stats["kl"].item() == pytest.approx(value)
    assert out.stats["zero_adv_group_frac"].item() == 1.0
    torch.testing.assert_close(logp.grad, torch.full((2, 3), 0.1 * dvalue / 6, dtype=F64))


def test_float_mask_weights_and_gradient_only_into_logp() -> None:
    r, g, logp, old = _hand_batch()
    old.requires_grad_()
    out = grpo_loss_reference(r, g, logp, old, torch.full((3, 2), 0.5), None, LossConfig())
    out.loss.backward()
    assert old.grad is None and logp.grad is not None
    assert out.stats["tokens"].item() == 3.0


def test_nonfinite_inputs() -> None:
    r, g, logp, old = _hand_batch()
    mask = torch.ones(3, 2, dtype=torch.bool)
    mask[0, 1] = False
    poisoned = logp.detach().clone()
    poisoned[0, 1] = float("nan")
    old_p = old.clone()
    old_p[0, 1] = float("inf")
    x = poisoned.requires_grad_()
    out = grpo_loss_reference(r, g, x, old_p, mask)  # masked NaN/inf never poison
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(x.grad).all() and x.grad[0, 1] == 0
    with pytest.raises(ValueError, match="logp"):
        grpo_loss_reference(r, g, poisoned, old, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="rewards"):
        grpo_loss_reference(torch.tensor([0.0, float("nan"), 1.0]), g, logp, old, mask)


def test_empty_batch() -> None:
    logp = torch.zeros(0, 5, requires_grad=True)
    out = grpo_loss_reference(
        torch.zeros(0),
        torch.zeros(0, dtype=torch.long),
        logp,
        torch.zeros(0, 5),
        torch.zeros(0, 5, dtype=torch.bool),
    )
    out.loss.backward()
    assert out.loss.item() == 0.0 and logp.grad.shape == (0, 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"old_logp": torch.zeros(3, 4)}, "old_logp"),
        ({"mask": torch.ones(2, 2)}, "mask"),
        ({"rewards": torch.zeros(4)}, "rewards"),
        ({"group_ids": torch.zeros(3)}, "group_ids"),
        ({"group_ids": torch.zeros(2, dtype=torch.long)}, "group_ids"),
        ({"old_logp": torch.zeros(3, 2, dtype=F64)}, "old_logp"),
        ({"mask": torch.ones(3, 2, dtype=torch.int32)}, "mask"),
        ({"ref_logp": torch.zeros(3, 2, device="meta")}, "ref_logp"),
        ({"logp": torch.zeros(3, 2, dtype=torch.float16)}, "logp"),
        ({"logp": torch.zeros(3)}, "logp"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, match: str) -> None:
    args = {
        "rewards": torch.zeros(3),
        "group_ids": torch.zeros(3, dtype=torch.long),
        "logp": torch.zeros(3, 2),
        "old_logp": torch.zeros(3, 2),
        "mask": torch.ones(3, 2, dtype=torch.bool),
        "ref_logp": None,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        grpo_loss_reference(**args)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="dual_clip"):
        LossConfig(dual_clip=0.5)
    with pytest.raises(ValueError, match="aggregation"):
        LossConfig(aggregation="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kl_estimator"):
        LossConfig(kl_estimator="k4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ref_logp"):
        r, g, logp, old = _hand_batch()
        grpo_loss_reference(r, g, logp, old, torch.ones(3, 2), None, LossConfig(kl_coef=0.1))
