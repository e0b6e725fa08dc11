"""Registries where algorithms vary: built-ins by name, a new variant in one registration,
the compiled op for the built-in family and torch for the rest."""

from __future__ import annotations

import pytest
import torch

from srpo.algo import (
    ADVANTAGES,
    GroupAdvantages,
    LossConfig,
    SurrogateOutput,
    group_advantages,
    grpo_loss_reference,
    register_advantage,
    register_policy_loss,
)
from srpo.algo.registry import Registry
from srpo.ops import make_loss_fn


def _batch(seed: int = 0, n_groups: int = 3, g: int = 4, t: int = 5):
    gen = torch.Generator().manual_seed(seed)
    n = n_groups * g
    rewards = torch.randint(0, 2, (n,), generator=gen).double()
    rewards[:g] = 1.0  # one flat group
    group_ids = torch.arange(n_groups).repeat_interleave(g)
    logp = (-torch.rand(n, t, generator=gen, dtype=torch.float64)).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(n, t, generator=gen, dtype=torch.float64)
    mask = torch.rand(n, t, generator=gen) > 0.2
    return rewards, group_ids, logp, old, mask


def test_rloo_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 5.0])
    g = torch.tensor([0, 0, 0, 1, 1, 2])
    got = group_advantages(r, g, estimator="rloo")
    # group 0: r_i - mean of the others: 1 - 0, 0 - 0.5, 0 - 0.5; group 1 flat; singleton 0
    assert got.tolist() == [1.0, -0.5, -0.5, 0.0, 0.0, 0.0]


def test_builtin_family_is_fused_and_the_rest_is_not():
    assert LossConfig().fused
    assert LossConfig(kl_estimator="k1", aggregation="seq-mean-token-sum-norm").fused
    assert not LossConfig(advantage="rloo").fused


def test_unknown_names_are_one_line_errors_with_a_suggestion():
    with pytest.raises(
        ValueError,
        match=r"LossConfig.advantage: unknown advantage estimator "
        r"'grop' \(did you mean 'grpo'\?\)",
    ):
        LossConfig(advantage="grop")
    reg: Registry = Registry("thing")
    reg.register("a")(len)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(len)


def test_a_new_estimator_is_one_function_and_one_registration(monkeypatch):
    """Register a variant, select it by name: the loss runs it in torch (same stats keys),
    and a compiled-only backend refuses it with a clear message."""
    monkeypatch.setattr(ADVANTAGES, "_items", dict(ADVANTAGES._items))  # undo afterwards
    calls = []

    @register_advantage("sign")
    def sign_advantages(rewards, group_ids, cfg):
        calls.append(len(rewards))
        adv = ADVANTAGES.get("grpo")(rewards, group_ids, cfg)
        return GroupAdvantages(torch.sign(adv.advantages), adv.flat)

    rewards, group_ids, logp, old, mask = _batch()
    cfg = LossConfig(advantage="sign")
    out = make_loss_fn("auto")(rewards, group_ids, logp, old, mask, cfg=cfg)
    out.loss.backward()
    assert calls and logp.grad is not None and torch.isfinite(out.loss)
    assert set(out.stats) == set(grpo_loss_reference(rewards, group_ids, logp, old, mask).stats)
    # differs from plain GRPO (the advantages' magnitudes changed)
    base = grpo_loss_reference(rewards, group_ids, logp, old, mask).loss
    assert not torch.allclose(out.loss, base)
    with pytest.raises(ValueError, match="compiled loss implements"):
        make_loss_fn("compiled")(rewards, group_ids, logp, old, mask, cfg=cfg)


def test_a_new_surrogate_runs_through_the_composition(monkeypatch):
    from srpo.algo import POLICY_LOSSES

    monkeypatch.setattr(POLICY_LOSSES, "_items", dict(POLICY_LOSSES._items))

    @register_policy_loss("vanilla_pg")
    def vanilla_pg(logp, old_logp, adv, cfg):
        return SurrogateOutput(-adv * torch.exp(logp - old_logp), {})

    rewards, group_ids, logp, old, mask = _batch(1)
    out = grpo_loss_reference(
        rewards, group_ids, logp, old, mask, cfg=LossConfig(policy_loss="vanilla_pg")
    )
    adv = group_advantages(rewards, group_ids)[:, None]
    m = mask.double()
    want = (-adv * torch.exp(logp - old) * m).sum() / m.sum()
    torch.testing.assert_close(out.loss, want)
    assert out.stats["clip_frac_low"] == 0.0  # no clipping in this surrogate


def test_auto_uses_the_compiled_op_for_the_builtin_family():
    """Same numbers as the reference either way (the compiled op when it is built)."""
    rewards, group_ids, logp, old, mask = _batch(2)
    cfg = LossConfig(dual_clip=3.0, aggregation="seq-mean-token-mean")
    got = make_loss_fn("auto")(rewards, group_ids, logp, old, mask, cfg=cfg)
    want = make_loss_fn("reference")(rewards, group_ids, logp, old, mask, cfg=cfg)
    torch.testing.assert_close(got.loss, want.loss)


def test_loss_config_is_derived_from_the_run_file_section():
    from srpo.config import AlgorithmSection

    section = AlgorithmSection(clip_high=0.28, aggregation="seq-mean-token-mean", advantage="rloo")
    cfg = LossConfig.from_options(section)
    assert (cfg.clip_high, cfg.aggregation, cfg.advantage) == (0.28, "seq-mean-token-mean", "rloo")
    assert cfg.zero_var_tol == LossConfig().zero_var_tol  # not in the run file: default


def test_run_file_names_are_checked_with_their_line(write_config):
    from srpo.config import load_config
    from srpo.errors import ConfigError
    from srpo.kernel.build import plan

    path = write_config(**{"algorithm.advantage": "rlooo"})
    with pytest.raises(
        ConfigError,
        match=r"plugins.yaml:\d+: algorithm.advantage: unknown "
        r"advantage estimator 'rlooo' \(did you mean 'rloo'\?\)",
    ):
        plan(load_config(path))
    path = write_config(**{"algorithm.advantage": "rloo", "algorithm.loss_backend": "compiled"})
    with pytest.raises(ConfigError, match=r"algorithm\.loss_backend: the compiled loss"):
        plan(load_config(path))
