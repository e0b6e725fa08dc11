"""Rollout correction (srpo.algo.rollout_correction): the weights of each mode against the
formulas written out by hand, the loss with weights on every backend, the run-file options and
their errors, and the policy update with a perturbed behaviour policy.

The compiled op's parity with weights (all modes x dtypes x the nasty cases, every device) is in
tests/test_ops_parity.py (``WEIGHTED_CASES`` of tests/support/ops.py)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from srpo.algo import (
    LossConfig,
    RolloutCorrectionOptions,
    correction_weights,
    grpo_loss_reference,
)
from srpo.config import AlgorithmSection, load_config
from srpo.errors import ConfigError
from srpo.ops import active_backend, make_loss_fn
from tests.support.ops import make_batch

F64 = torch.float64

# two rows of 3 tokens; row 1 has its last token masked (with garbage behind the mask)
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -7.0]], dtype=F64)
BEHAV = torch.tensor([[-1.5, -1.0, -0.5], [-0.1, -3.0, float("nan")]], dtype=F64)
MASK = torch.tensor([[True, True, True], [True, True, False]])
D = [[0.5, -1.0, 0.0], [-0.2, 1.8]]  # old - behaviour on the masked tokens


def _opts(mode: str, **bounds: float) -> RolloutCorrectionOptions:
    return RolloutCorrectionOptions(mode=mode, **bounds)


def _expected_stats(weights: list[list[float]], truncated: int) -> dict[str, float]:
    flat = [d for row in D for d in row]
    n = len(flat)
    return {
        "mismatch_logp_abs_diff": sum(abs(d) for d in flat) / n,
        "mismatch_kl": sum(math.exp(d) - 1 - d for d in flat) / n,
        "mismatch_masked_frac": sum(w == 0 for row in weights for w in row) / n,
        "mismatch_truncated_frac": truncated / n,
    }


def _check(mode_opts: RolloutCorrectionOptions, want_w: list[list[float]], truncated: int):
    w, stats = correction_weights(OLD, BEHAV, MASK, mode_opts)
    assert w is not None and w.dtype == F64
    want = torch.tensor([want_w[0], [*want_w[1], 0.0]], dtype=F64)
    torch.testing.assert_close(w, want, rtol=1e-14, atol=0.0)
    for k, v in _expected_stats(want_w, truncated).items():
        assert v == pytest.approx(float(stats[k]), rel=1e-12, abs=1e-15), k


def test_mode_none_has_no_weight_but_reports_the_mismatch():
    w, stats = correction_weights(OLD, BEHAV, MASK, _opts("none"))
    assert w is None
    for k, v in _expected_stats([[1, 1, 1], [1, 1]], 0).items():
        assert v == pytest.approx(float(stats[k]), rel=1e-12), k


def test_token_tis_truncates_each_token_ratio_at_high():
    e = math.exp
    _check(_opts("token_tis"), [[e(0.5), e(-1.0), 1.0], [e(-0.2), 2.0]], truncated=1)
    _check(_opts("token_tis", high=1.5), [[1.5, e(-1.0), 1.0], [e(-0.2), 1.5]], truncated=2)


def test_seq_tis_truncates_the_sequence_ratio():
    r0, r1 = math.exp(0.5 - 1.0 + 0.0), math.exp(-0.2 + 1.8)  # 0.607, 4.95
    _check(_opts("seq_tis"), [[r0] * 3, [2.0] * 2], truncated=2)
    _check(_opts("seq_tis", high=5.0), [[r0] * 3, [r1] * 2], truncated=0)


def test_seq_mis_drops_sequences_outside_the_band_and_keeps_the_ratio_of_the_others():
    r0 = math.exp(-0.5)
    _check(_opts("seq_mis"), [[r0] * 3, [0.0] * 2], truncated=0)  # rho_1 = 4.95 > 2
    _check(_opts("seq_mis", low=0.7, high=6.0), [[0.0] * 3, [math.exp(1.6)] * 2], truncated=0)


def test_icepop_masks_tokens_outside_the_band_and_keeps_k_inside():
    e = math.exp
    # default band [0.5, 5]: e^1.8 = 6.05 is out, e^-1 = 0.37 is out
    _check(_opts("icepop"), [[e(0.5), 0.0, 1.0], [e(-0.2), 0.0]], truncated=0)
    _check(_opts("icepop", low=0.3, high=1.2), [[0.0, e(-1.0), 1.0], [e(-0.2), 0.0]], 0)


def test_float32_inputs_give_float32_weights_computed_in_float64():
    w, _ = correction_weights(OLD.float(), BEHAV.float(), MASK.float(), _opts("seq_tis"))
    assert w is not None and w.dtype == torch.float32
    assert w[1, 2] == 0.0 and w[0, 0] == pytest.approx(math.exp(-0.5), rel=1e-6)


# --------------------------------------------------------------------------- the loss


def _manual_loss(b: dict, w: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """token-mean GRPO by hand: sum_it m (w pg + kl_coef k3) / sum_it m."""
    from srpo.algo import group_advantages

    on = b["mask"]
    adv = group_advantages(b["rewards"], b["group_ids"])[:, None]
    x = torch.where(on, b["logp"], 0.0)
    xo = torch.where(on, b["old_logp"], 0.0)
    r = torch.exp(x - xo)
    pg = torch.maximum(-adv * r, -adv * r.clamp(0.8, 1.2))
    dr = torch.where(on, b["ref_logp"], 0.0) - x
    k3 = torch.exp(dr) - dr - 1
    per = torch.where(on, w, 0.0) * pg + kl_coef * k3
    return (per * on).sum() / on.sum()


@pytest.mark.parametrize("backend", ["reference", "compiled", "auto"])
def test_loss_fn_takes_the_weight_on_every_backend(backend: str) -> None:
    if backend == "compiled" and active_backend() == "reference":
        pytest.skip("compiled op unavailable")
    b = make_batch(n=16, t=9, seed=4, dtype=F64)
    behaviour = b["old_logp"] + 0.5 * torch.randn(
        16, 9, dtype=F64, generator=torch.Generator().manual_seed(2)
    )
    w, _ = correction_weights(b["old_logp"], behaviour, b["mask"], _opts("token_tis", high=1.3))
    assert w is not None
    cfg = LossConfig(kl_coef=0.1)
    out = make_loss_fn(backend)(**b, cfg=cfg, token_weight=w)
    torch.testing.assert_close(out.loss, _manual_loss(b, w, 0.1), rtol=1e-10, atol=1e-14)
    plain = make_loss_fn(backend)(**b, cfg=cfg)
    assert not torch.isclose(out.loss, plain.loss)  # the weight does something


def test_registry_composition_weights_any_surrogate() -> None:
    """A non-fused combination (rloo) runs in torch and applies the weight too."""
    b = make_batch(n=12, t=7, seed=6, dtype=F64, with_ref=False)
    cfg = LossConfig(advantage="rloo")
    zero = torch.zeros(12, 7, dtype=F64)
    logp = b.pop("logp").requires_grad_()
    out = make_loss_fn("auto")(logp=logp, **b, cfg=cfg, token_weight=zero)
    out.loss.backward()
    assert out.loss.item() == 0.0 and bool((logp.grad == 0).all())
    two = make_loss_fn("auto")(logp=logp, **b, cfg=cfg, token_weight=zero + 2.0).loss
    one = make_loss_fn("auto")(logp=logp, **b, cfg=cfg).loss
    torch.testing.assert_close(two, 2.0 * one)


def test_mode_none_loss_is_unchanged() -> None:
    b = make_batch(n=16, t=9, seed=4, dtype=F64)
    w, _ = correction_weights(b["old_logp"], b["old_logp"] - 0.3, b["mask"], _opts("none"))
    assert w is None
    a = grpo_loss_reference(**b, token_weight=w)
    c = grpo_loss_reference(**b)
    assert torch.equal(a.loss, c.loss)


# --------------------------------------------------------------------------- options


def test_defaults_and_loss_config_derivation() -> None:
    algo = AlgorithmSection()
    assert algo.rollout_correction.mode == "none"
    assert LossConfig.from_options(algo).rollout_correction == RolloutCorrectionOptions()
    algo = AlgorithmSection(rollout_correction={"mode": "icepop", "high": 4.0})
    cfg = LossConfig.from_options(algo)
    assert cfg.rollout_correction.bounds == (0.5, 4.0)
    assert _opts("token_tis").bounds == (None, 2.0)
    assert _opts("seq_tis").bounds == (None, 2.0)
    assert _opts("seq_mis").bounds == (0.0, 2.0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"mode": "tis"}, "unknown mode 'tis'"),
        ({"mode": "icepop", "low": 2.0, "high": 1.0}, "must be > low for icepop"),
        ({"mode": "icepop", "low": 6.0}, r"low \(6.0\) must be < high; icepop's default high"),
        ({"mode": "seq_mis", "high": 0.5, "low": 0.5}, "must be > low"),
        ({"mode": "icepop", "high": 0.4}, "low 0.5 \\(icepop's default\\)"),
        ({"mode": "token_tis", "high": -1.0}, "greater than 0"),
        ({"mode": "icepop", "low": -0.5}, "greater than or equal to 0"),
        ({"mode": "token_tis", "cap": 2.0}, "Extra inputs"),
    ],
)
def test_invalid_options(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AlgorithmSection(rollout_correction=options)


RUN_FILE = """\
run:
  output_dir: {out}
policy:
  path: {model}
datasets:
  math: {{path: {data}}}
sampler:
  name: hf
verifiers:
  math: {{name: math}}
algorithm:
  clip_high: 0.28
  rollout_correction:
    mode: icepop
    low: {low}
    high: {high}
"""


@pytest.mark.parametrize(
    ("low", "high", "line", "where"),
    [
        (2.0, 1.0, 16, "algorithm.rollout_correction.high: Value error, must be > low"),
        (-1.0, 3.0, 15, "algorithm.rollout_correction.low: Input should be greater than"),
    ],
)
def test_run_file_errors_point_at_the_line(tmp_path: Path, low, high, line, where) -> None:
    from tests.support.tiny import TINY

    path = tmp_path / "plugins.yaml"
    path.write_text(
        RUN_FILE.format(
            out=tmp_path / "out",
            model=TINY / "model",
            data=TINY / "data" / "math_train.jsonl",
            low=low,
            high=high,
        )
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line}: {where}"), msg
    assert "\n" not in msg


# --------------------------------------------------------------------------- the policy


def _policy(**rollout_correction):
    from srpo.config import PolicySection
    from srpo.policy import Policy
    from tests.support.tiny import TINY

    cfg = PolicySection(path=TINY / "model", micro_batch_size=8)
    algo = AlgorithmSection(group_size=4, rollout_correction=rollout_correction or {})
    torch.manual_seed(0)
    return Policy(TINY / "model", cfg, algo, total_steps=4)


def _perturbed_rollouts(policy, scale: float = 0.2):
    """Real rollouts of the tiny model (4 groups of 4), the behaviour log-probs moved by
    ``scale * N(0, 1)`` on the response tokens (a sampler whose numbers differ)."""
    from tests.test_policy_update import REWARDS, _rollouts

    batch, scores = _rollouts(policy, [float(r) for r in REWARDS])
    gen = torch.Generator().manual_seed(3)
    noise = scale * torch.randn(batch.behaviour_logp.shape, generator=gen)
    behaviour = torch.where(batch.response_mask, batch.behaviour_logp + noise, 0.0)
    return dataclasses.replace(batch, behaviour_logp=behaviour), scores


MISMATCH = (
    "mismatch_logp_abs_diff",
    "mismatch_kl",
    "mismatch_masked_frac",
    "mismatch_truncated_frac",
)


def test_policy_update_reports_the_mismatch_and_truncates() -> None:
    policy = _policy(mode="token_tis", high=1.05)
    batch, scores = _perturbed_rollouts(policy)
    metrics = policy.update(batch, scores)
    for k in MISMATCH:
        assert k in metrics, k
    assert metrics["mismatch_logp_abs_diff"] == pytest.approx(
        metrics["behaviour_logp_gap"], rel=1e-5
    )
    assert metrics["mismatch_logp_abs_diff"] > 0.05
    assert metrics["mismatch_kl"] > 0.0
    assert 0.1 < metrics["mismatch_truncated_frac"] < 0.9
    assert metrics["mismatch_masked_frac"] == 0.0


def test_policy_icepop_band_excluding_every_token_gives_no_policy_gradient() -> None:
    """icepop with a band no token's ratio reaches: every weight 0, so (no KL term) the loss
    and the gradient are exactly 0; the same batch without correction has a gradient. Stage
    overrides switch the correction on and off."""
    policy = _policy()
    batch, scores = _perturbed_rollouts(policy, scale=0.05)
    policy.override_algorithm({"rollout_correction": {"mode": "icepop", "low": 50.0, "high": 60.0}})
    assert policy.loss_config.rollout_correction.mode == "icepop"
    before = {k: v.clone() for k, v in policy.model.state_dict().items()}
    metrics = policy.update(batch, scores)
    assert metrics["mismatch_masked_frac"] == 1.0
    assert metrics["loss"] == 0.0
    assert metrics["grad_norm"] == 0.0
    after = policy.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # Adam: 0 gradient, 0 step

    policy.override_algorithm({})  # back to the run file: no correction
    assert policy.loss_config.rollout_correction.mode == "none"
    metrics = policy.update(batch, scores)
    assert metrics["grad_norm"] > 0.0
    assert metrics["mismatch_masked_frac"] == 0.0 and metrics["mismatch_kl"] > 0.0


def test_policy_rejects_an_invalid_stage_override() -> None:
    from srpo.errors import PluginError

    policy = _policy()
    with pytest.raises(PluginError, match=r"algorithm\.rollout_correction\.high"):
        policy.override_algorithm(
            {"rollout_correction": {"mode": "seq_mis", "low": 3.0, "high": 2.0}}
        )
