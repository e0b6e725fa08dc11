"""Micro-batches by token budget (issue 24): the planner's invariants, and the update on the
real tiny model — token-budget passes (padded or packed layout, rows of any groups) step
exactly as one pass over the whole mini-batch, and skipping zero-advantage rows stays exact."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from srpo.config import AlgorithmSection
from srpo.policy.microbatch import (
    packed_micro_batches,
    padded_micro_batches,
    pass_cost,
    split_across_ranks,
)
from tests.support.tiny_update import tiny_policy, tiny_rollouts

lengths_st = st.dictionaries(st.integers(0, 500), st.integers(1, 300), max_size=60)


@given(lengths_st, st.integers(1, 400))
def test_packed_passes_cover_every_row_once_under_the_budget(lengths, budget):
    passes = packed_micro_batches(lengths, budget)
    rows = [r for p in passes for r in p]
    assert sorted(rows) == sorted(lengths)
    for p in passes:
        assert len(p) == 1 or pass_cost([lengths[r] for r in p], padded=False) <= budget
    # no more passes than needed by more than the rows that run alone, + rounding
    over = sum(n > budget for n in lengths.values())
    fit = sum(n for n in lengths.values() if n <= budget)
    assert len(passes) <= over + max(1, 2 * -(-fit // budget)) or not lengths


@given(lengths_st, st.integers(1, 2000))
def test_padded_passes_cover_every_row_once_under_the_budget(lengths, budget):
    passes = padded_micro_batches(lengths, budget)
    assert sorted(r for p in passes for r in p) == sorted(lengths)
    for p in passes:
        assert len(p) == 1 or pass_cost([lengths[r] for r in p], padded=True) <= budget


def test_packed_passes_are_balanced_on_a_long_tail():
    """Log-normal lengths (mean ~250, cap 2048): the passes' token counts within 25% of each
    other, and their number the least that fits."""
    rng = random.Random(0)
    lengths = {i: min(2048, int(rng.lognormvariate(5.3, 0.7))) + 40 for i in range(64)}
    budget = 4096
    passes = packed_micro_batches(lengths, budget)
    loads = [sum(lengths[r] for r in p) for p in passes]
    assert len(passes) == -(-sum(lengths.values()) // budget)
    assert max(loads) <= budget and min(loads) >= 0.75 * max(loads)


def test_ranks_get_about_equal_tokens():
    rng = random.Random(1)
    lengths = {i: rng.randint(10, 2000) for i in range(64)}
    shares = split_across_ranks(lengths, 4)
    assert sorted(r for s in shares for r in s) == list(range(64))
    loads = [sum(lengths[r] for r in s) for s in shares]
    assert max(loads) - min(loads) <= max(lengths.values())
    assert split_across_ranks(lengths, 4) == shares  # every rank computes the same split


# --------------------------------------------------------------------------- the update


REWARDS = [1, 1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0.5, 0, 0]


def _update(**options):
    policy = tiny_policy(**options)
    batch, scores = tiny_rollouts(policy, [float(r) for r in REWARDS])
    metrics = policy.update(batch, scores)
    return metrics, {k: v.clone() for k, v in policy.model.state_dict().items()}


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_token_budget_passes_step_like_one_pass(aggregation):
    """One optimizer step over 16 rows: one pass of everything, the count layout, and token
    budgets that cut through groups (padded and packed layouts) give the same loss, gradient
    norm and weights within float32 noise."""
    algo = AlgorithmSection(group_size=4, aggregation=aggregation)
    results = {}
    for name, options in {
        "one-pass": {"micro_batch_size": 64},
        "count": {"micro_batch_size": 4},
        "budget-padded": {"max_tokens_per_micro_batch": 60},
        "budget-packed": {"max_tokens_per_micro_batch": 60, "padding_free": True},
    }.items():
        policy = tiny_policy(algo, **options)
        batch, scores = tiny_rollouts(policy, [float(r) for r in REWARDS])
        metrics = policy.update(batch, scores)
        results[name] = (metrics, {k: v.clone() for k, v in policy.model.state_dict().items()})
    base_m, base_w = results["one-pass"]
    for name, (m, w) in results.items():
        for key in ("loss", "grad_norm", "tokens", "adv_abs_mean", "zero_adv_group_frac"):
            assert m[key] == pytest.approx(base_m[key], rel=2e-5, abs=1e-7), (name, key)
        for k in base_w:
            torch.testing.assert_close(w[k], base_w[k], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")
    assert results["budget-padded"][0]["update/pad_frac"] >= 0
    assert results["budget-packed"][0]["update/pad_frac"] == 0
    assert results["one-pass"][0]["memory/update_peak_gb"] > 0.05


def test_skipping_zero_advantage_rows_is_bit_identical_with_a_budget():
    """Rows of flat groups (and a row at its group's mean) go to passes of their own, which
    are then not run: weights bit for bit, metrics equal."""
    options = {"max_tokens_per_micro_batch": 50, "mini_batches": 2, "ppo_epochs": 2}
    m_skip, w_skip = _update(skip_zero_advantage=True, **options)
    m_full, w_full = _update(skip_zero_advantage=False, **options)
    assert all(torch.equal(w_skip[k], w_full[k]) for k in w_full)
    assert m_skip["skipped_token_frac"] > 0.3 and m_full["skipped_token_frac"] == 0.0
    for key in ("loss", "grad_norm", "clip_frac_low", "tokens", "zero_adv_group_frac"):
        assert m_skip[key] == pytest.approx(m_full[key], rel=1e-6, abs=1e-12), key
