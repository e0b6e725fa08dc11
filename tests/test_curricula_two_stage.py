"""Two-stage curriculum: stage contents, mix ratios, switch rules, HR inside stages, state."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pydantic
import pytest
from srpo_plugins.curricula.two_stage import TwoStageCurriculum as TS

from srpo.api import PluginContext
from tests.support.curricula import G, Store, drain, prompts


def make(tmp_path: Path, n_math: int = 8, n_code: int = 8, seed: int = 0, **opts: object) -> TS:
    data = {"math": prompts(n_math), "code": prompts(n_code, "code", start=1000)}
    return TS(TS.Options(**opts), PluginContext(run_dir=tmp_path, seed=seed, datasets=data))


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "history")
    yield s
    s.store.close()


def domains(ps) -> list[str]:
    return [p.domain for p in ps]


def test_stage0_is_math_only_then_stage1_mixes(tmp_path):
    cur = make(tmp_path, switch={"after_epochs": 1}, resampling="none")
    assert cur.stage == 0
    cur.begin_epoch(0)
    served = []
    while got := cur.next_prompts(3):
        served += got
    assert set(domains(served)) == {"math"} and len(served) == 8
    assert cur.epoch_size() == 8
    rep = cur.end_epoch(0, None)
    assert rep["stage_switched"] == 1 and cur.stage == 1
    cur.begin_epoch(1)
    for _ in range(4):
        assert Counter(domains(cur.next_prompts(4))) == {"math": 2, "code": 2}


def test_mix_ratios_hold_over_steps_and_epoch_ends_when_a_domain_runs_out(tmp_path):
    cur = make(
        tmp_path, n_math=30, n_code=10, switch={"after_epochs": 1},
        stage2_mix={"math": 0.75, "code": 0.25}, resampling="none",
    )  # fmt: skip
    cur.end_epoch(0, None)
    cur.begin_epoch(1)
    assert cur.epoch_size() == 40  # math: 30 / 0.75, code: 10 / 0.25
    steps = []
    while got := cur.next_prompts(2):  # tiny batches: ratios hold across steps
        steps.append(domains(got))
    c = Counter(d for s in steps for d in s)
    assert c == {"math": 30, "code": 10}
    assert len({p for s in steps for p in s}) == 2

    cur2 = make(tmp_path, n_math=6, n_code=2, switch={"after_epochs": 1}, resampling="none")
    cur2.end_epoch(0, None)
    cur2.begin_epoch(1)
    got = drain(cur2, 2)
    assert len(got) == len(set(got)) == 4  # code ran out after 2: each prompt at most once


def test_switch_after_steps_ends_the_epoch_at_a_step_boundary(tmp_path):
    cur = make(tmp_path, n_math=20, switch={"after_steps": 2}, resampling="none")
    cur.begin_epoch(0)
    for _ in range(2):
        assert cur.next_prompts(3)
        cur.observe({"reward/mean": 0.5})
    assert cur.next_prompts(3) == []  # the epoch ends here
    rep = cur.end_epoch(0, None)
    assert cur.stage == 1 and rep["stage_switched"] == 1 and cur.switch_epoch == 1
    assert cur.pending == "after_steps=2"

    late = make(tmp_path, n_math=9, switch={"after_steps": 1, "mid_epoch": False})
    late.begin_epoch(0)
    late.next_prompts(3)
    late.observe({})
    assert len(drain(late)) == 6 and late.stage == 0  # waits for the epoch's end
    late.end_epoch(0, None)
    assert late.stage == 1


def test_switch_after_epochs(tmp_path):
    cur = make(tmp_path, switch={"after_epochs": 2}, resampling="none")
    for e in range(2):
        assert cur.stage == 0
        cur.begin_epoch(e)
        drain(cur)
        cur.end_epoch(e, None)
    assert cur.stage == 1 and cur.switch_epoch == 2


def test_switch_on_plateau(tmp_path):
    plateau = {
        "metric": "response_length/mean", "window": 3, "patience": 2, "min_delta": 1.0,
        "min_steps": 8,
    }  # fmt: skip
    cur = make(tmp_path, n_math=100, switch={"plateau": plateau}, resampling="none")
    cur.begin_epoch(0)
    values = [10, 12, 14, 16, 18, 20, 22, 24, 25, 25, 25, 25, 25, 25]
    fired_at = None
    for i, v in enumerate(values):
        assert cur.next_prompts(1)
        cur.observe({"response_length/mean": float(v), "reward/mean": 0.0})
        if cur.pending:
            fired_at = i
            break
    # moving mean of 3: ... 23.67, 24.67 (+1.0: not > min_delta), 25 (+1.33: best), then
    # 25, 25: two steps without a gain > 1 -> fires at step index 12
    assert fired_at == 12
    assert "plateau" in cur.pending and cur.switch_rule == "plateau" and cur.switch_step == 13
    assert cur.next_prompts(1) == []
    rep = cur.end_epoch(0, None)
    assert cur.stage == 1 and rep["switch_step"] == 13 and rep["switch/plateau"] == 1

    # min_steps holds the rule back even when the metric is flat from the start
    slow = make(tmp_path, n_math=100, switch={"plateau": {**plateau, "min_steps": 12}})
    slow.begin_epoch(0)
    for i in range(12):
        slow.next_prompts(1)
        slow.observe({"response_length/mean": 5.0})
        assert (slow.pending is not None) == (i == 11)


def test_hr_runs_inside_each_stage(tmp_path, store):
    cur = make(tmp_path, n_math=6, n_code=4, switch={"after_epochs": 1})
    cur.begin_epoch(0)
    assert sorted(drain(cur)) == list(range(6))
    store.write(0, {0: G, 1: G, 2: 1, 3: 0})
    rep = cur.end_epoch(0, store.reader())
    assert rep["math/all_correct"] == 2 and rep["all_correct"] == 2 and rep["mixed"] == 1
    assert cur.stage == 1
    # stage 1: the math pool keeps its HR state (0 and 1 stay out); code starts full
    cur.begin_epoch(1)
    served = drain(cur, 2)
    assert {p for p in served if p < 1000} <= {2, 3, 4, 5}
    assert sorted(p for p in served if p >= 1000) == [1000, 1001, 1002, 1003]
    store.write(1, dict.fromkeys(served, G))  # everything solved
    rep = cur.end_epoch(1, store.reader())
    assert rep["code/all_correct"] == 4 and rep["math/all_correct"] == 4
    assert cur.pools["math"].size() == 0 and cur.pools["code"].size() == 0
    with pytest.warns(UserWarning, match="no prompts left"):
        cur.begin_epoch(2)
    assert cur.next_prompts(4) == []


def test_state_round_trip_mid_stage1_epoch(tmp_path, store):
    def build():
        return make(
            tmp_path, n_math=12, n_code=9, seed=5, switch={"after_steps": 1},
            stage2_mix={"math": 2, "code": 1},
        )  # fmt: skip

    cur = build()
    cur.begin_epoch(0)
    cur.next_prompts(4)
    cur.observe({})
    assert cur.next_prompts(4) == []
    store.write(0, {0: G})
    cur.end_epoch(0, store.reader())
    cur.begin_epoch(1)
    cur.next_prompts(4)
    cur.next_prompts(1)  # leaves the round-robin credit mid-cycle
    state = json.loads(json.dumps(cur.state_dict()))
    rest = [p.id for s in iter(lambda: cur.next_prompts(4), []) for p in s]

    again = build()
    again.load_state_dict(state)
    again.begin_epoch(1)
    assert [p.id for s in iter(lambda: again.next_prompts(4), []) for p in s] == rest
    assert again.stage == 1 and 0 not in rest

    a, b = build(), build()
    a.begin_epoch(0)
    b.begin_epoch(0)
    assert drain(a) == drain(b)


def test_overrides_and_option_checks(tmp_path):
    cur = make(
        tmp_path, switch={"after_epochs": 1}, resampling="none",
        stage_overrides={0: {"sampler": {"max_new_tokens": 32}}, 1: {"algorithm": {"lr": 1}}},
    )  # fmt: skip
    assert cur.overrides() == {"sampler": {"max_new_tokens": 32}}
    cur.end_epoch(0, None)
    assert cur.overrides() == {"algorithm": {"lr": 1}}
    assert make(tmp_path).overrides() == {}
    with pytest.raises(pydantic.ValidationError, match="stages are 0 and 1"):
        TS.Options(stage_overrides={2: {}})
    with pytest.raises(pydantic.ValidationError, match="switch needs"):
        TS.Options(switch={})
    with pytest.raises(ValueError, match="unknown domain 'proof'"):
        make(tmp_path, stage2_mix={"math": 1, "proof": 1})


def test_default_hr_floor_keeps_a_step_of_each_domain(tmp_path, store):
    def build(**hr: object) -> TS:
        data = {"math": prompts(12), "code": prompts(12, "code", start=1000)}
        ctx = PluginContext(
            run_dir=tmp_path, seed=0, datasets=data, config={"run": {"prompts_per_step": 4}}
        )
        mix = {"math": 1, "code": 3}  # code: 3 of every 4 prompts in stage 1
        return TS(TS.Options(switch={"after_epochs": 1}, stage2_mix=mix, hr=hr), ctx)

    for hr, math_left, code_left in (({}, 4, 3), ({"min_dataset_steps": 0}, 0, 0)):
        s = Store(tmp_path / f"h{math_left}")
        cur = build(**hr)
        cur.begin_epoch(0)
        served = drain(cur, 4)
        s.write(0, dict.fromkeys(served, G))  # stage 0: every math prompt solved
        cur.end_epoch(0, s.reader())
        assert cur.pools["math"].size() == math_left  # stage-0 domain: a whole step
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cur.begin_epoch(1)
        assert bool(caught) == (math_left == 0)  # "no prompts left" only without a floor
        served = drain(cur, 4)
        s.write(1, dict.fromkeys(served, G))
        cur.end_epoch(1, s.reader())
        assert cur.pools["code"].size() == code_left  # its share of a step: 3
        s.store.close()
