"""Dynamic sampling (DAPO) driven directly and through the real kernel loop with fake roles.

The fakes fabricate rollouts whose correctness is set per prompt (``meta["k"]`` of the G
samples are correct), so the curriculum — what is under test — sees exact group outcomes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from srpo_plugins.curricula.dynamic_sampling import DynamicSamplingCurriculum as DS

from srpo import events as ev
from srpo.api import PluginContext
from srpo.types import RolloutBatch, Scores
from tests.support.kernel import G, dataset, fake_batch, fake_scores, run_kernel


def make(tmp_path: Path, ks: list[int], seed: int = 0, **opts: object) -> DS:
    ctx = PluginContext(run_dir=tmp_path, seed=seed, datasets={"math": dataset(ks)})
    return DS(DS.Options(**opts), ctx)


def test_accept_groups_drops_zero_variance_robustly(tmp_path):
    cur = make(tmp_path, [0, 2, 4, 1])
    batch = fake_batch(cur.prompts)
    scores = fake_scores(batch)
    assert cur.accept_groups(batch, scores).tolist() == [False, True, False, True]
    noisy = Scores(
        reward=torch.tensor([1.0, 1.0 + 1e-9, 1.0, 1.0, 0.0, 0.5]),
        correct=torch.ones(6, dtype=torch.bool),
        error=[None] * 6,
    )
    two = RolloutBatch.concat([fake_batch(cur.prompts[:1]), fake_batch(cur.prompts[:1], 2)], 0)
    assert cur.accept_groups(two, noisy).tolist() == [False, True]


def test_kernel_refills_until_the_batch_is_full(tmp_path):
    # in order: round 1 [2,2,4,4] keeps 2, round 2 [4,4] keeps 0, round 3 [2,2] fills it
    cur = make(tmp_path, [2, 2, 4, 4, 4, 4, 2, 2] * 4, max_generation_rounds=4, shuffle=False)
    assert cur.max_generation_rounds == 4
    _, log = run_kernel(tmp_path, cur, per_step=4)
    steps = log.of(ev.StepEnd)
    assert len(steps) == 4  # 32 prompts, 8 consumed per step
    for s in steps:
        assert s.metrics["prompts"] == 4 and s.metrics["generation_rounds"] == 3
        assert s.metrics["effective_ratio"] == 1.0
        assert s.metrics["rollouts_generated"] == 8 * G
    info = cur.last_step_info()
    assert info["kept"] == 4 and info["groups"] == 8 and not info["underfilled"]
    rep = log.of(ev.EpochEnd)[0].metrics
    assert rep["groups_generated"] == 32 and rep["groups_kept"] == 16
    assert rep["zero_variance_share"] == 0.5 and rep["all_correct_share"] == 0.5
    assert rep["underfilled_steps"] == 0


def test_round_cap_underfills_with_a_clear_reason_and_warns_once(tmp_path):
    ks = ([4] * 7 + [1]) * 8  # 1 informative prompt in 8, all others solved every time
    cur = make(tmp_path, ks, max_generation_rounds=2, shuffle=False)
    with pytest.warns(UserWarning) as caught:
        _, log = run_kernel(tmp_path, cur, per_step=4)
    msgs = [str(w.message) for w in caught if "dynamic_sampling" in str(w.message)]
    assert len(msgs) == 1
    assert "kept 1/4 groups after 2 generation rounds" in msgs[0]
    assert "88% all correct" in msgs[0] and "data too easy" in msgs[0]
    steps = log.of(ev.StepEnd)
    assert len(steps) == 8 and all(s.metrics["generation_rounds"] == 2 for s in steps)
    assert all(s.metrics["prompts"] == 1 for s in steps)  # trained anyway, not aborted
    info = cur.last_step_info()
    assert info["underfilled"] and info["reason"] == "round_cap"
    assert info["zero_var_share"] == 7 / 8
    assert cur.underfilled_steps == 8
    rep = log.of(ev.EpochEnd)[0].metrics
    assert rep["underfilled_steps"] == 8 and rep["all_correct_share"] == 7 / 8


def test_short_last_batch_is_epoch_end_not_a_cap_problem(tmp_path):
    cur = make(tmp_path, [2] * 10, max_generation_rounds=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, log = run_kernel(tmp_path, cur, per_step=4)
    assert [s.metrics["prompts"] for s in log.of(ev.StepEnd)] == [4, 4, 2]
    assert cur.last_step_info()["reason"] == "epoch_end"
    assert cur.underfilled_steps == 0


def test_state_round_trip_mid_epoch_and_determinism(tmp_path):
    cur = make(tmp_path, list(range(5)) * 6, seed=9)
    cur.begin_epoch(0)
    cur.next_prompts(4)
    state = json.loads(json.dumps(cur.state_dict()))
    rest = [p.id for p in cur.next_prompts(100)]
    again = make(tmp_path, list(range(5)) * 6, seed=9)
    again.load_state_dict(state)
    again.begin_epoch(0)
    assert [p.id for p in again.next_prompts(100)] == rest
    a, b = make(tmp_path, [1] * 30, seed=1), make(tmp_path, [1] * 30, seed=1)
    a.begin_epoch(3)
    b.begin_epoch(3)
    assert [p.id for p in a.next_prompts(30)] == [p.id for p in b.next_prompts(30)]
