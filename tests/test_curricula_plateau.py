"""two_stage's plateau switch: early stopping on stage 0's smoothed training accuracy, its cap
by ``after_steps`` / ``after_epochs``, and exact resume across the switch."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pydantic
import pytest
from srpo_plugins.curricula.two_stage import TwoStageCurriculum as TS

from srpo.api import PluginContext
from tests.support.curricula import prompts

RULE = {"metric": "accuracy", "window": 2, "patience": 5, "min_delta": 0.01, "min_steps": 0}


def make(tmp_path: Path, n_math: int = 400, n_code: int = 40, **opts: object) -> TS:
    data = {"math": prompts(n_math), "code": prompts(n_code, "code", start=1000)}
    opts.setdefault("resampling", "none")
    return TS(TS.Options(**opts), PluginContext(run_dir=tmp_path, seed=3, datasets=data))


def rising_then_flat(noise: float = 0.0, seed: int = 0) -> list[float]:
    """0.0, 0.1, ..., 0.7 (steps 1-8), then 0.7 (+ noise from step 10 on)."""
    rng = random.Random(seed)
    flat = [0.7] + [0.7 + rng.uniform(-noise, noise) for _ in range(60)]
    return [0.1 * i for i in range(8)] + flat


def fire_step(cur: TS, stream: list[float], key: str = "accuracy") -> int | None:
    """Feed one value per step; the stage-0 step count at which a rule fired (or None)."""
    cur.begin_epoch(0)
    for v in stream:
        assert cur.next_prompts(1)
        cur.observe({key: v, "reward/mean": 0.0})
        if cur.pending:
            return cur.stage0_steps
    return None


def test_fires_patience_steps_after_the_last_real_gain(tmp_path):
    # moving mean of 2 improves by 0.1 each step up to step 8 (0.65), then 0.7 at step 9
    # (+0.05, the last gain); steps 10-14 gain nothing: fires at step 14
    cur = make(tmp_path, switch={"plateau": RULE})
    assert fire_step(cur, rising_then_flat()) == 14
    assert cur.switch_rule == "plateau" and cur.best_step == 9
    assert cur.best == pytest.approx(0.7)
    assert cur.next_prompts(1) == []  # mid_epoch: the epoch ends at once
    rep = cur.end_epoch(0, None)
    assert cur.stage == 1 and cur.switch_epoch == 1
    assert rep["stage_switched"] == 1 and rep["switch_step"] == 14
    assert rep["switch/plateau"] == 1 and rep["stage0_steps"] == 14


@pytest.mark.parametrize("seed", range(5))
def test_noise_within_min_delta_is_no_gain(tmp_path, seed):
    cur = make(tmp_path, switch={"plateau": RULE})
    assert fire_step(cur, rising_then_flat(noise=0.009, seed=seed)) == 14


def test_a_gain_above_min_delta_resets_patience(tmp_path):
    for bump, fires in ((0.015, 14), (0.025, 17)):
        stream = rising_then_flat()
        stream[11] += bump  # step 12: moving mean of 2 gains bump / 2 over the best 0.7
        cur = make(tmp_path, switch={"plateau": RULE})
        assert fire_step(cur, stream) == fires, bump


def test_slow_steady_gains_add_up_against_the_best(tmp_path):
    # +0.004 a step: no single step beats min_delta 0.01, but every third step beats the best
    cur = make(tmp_path, switch={"plateau": RULE})
    assert fire_step(cur, [0.004 * i for i in range(100)]) is None
    assert cur.stage0_steps == 100 and cur.stale <= 2


def test_min_steps_holds_it_back(tmp_path):
    cur = make(tmp_path, switch={"plateau": {**RULE, "min_steps": 30}})
    assert fire_step(cur, rising_then_flat()) == 30
    # already stale before min_steps: it fires exactly at min_steps, not before
    flat = make(tmp_path, switch={"plateau": {**RULE, "min_steps": 11}})
    assert fire_step(flat, [0.5] * 40) == 11


def test_steps_without_the_metric_do_not_count(tmp_path):
    cur = make(tmp_path, switch={"plateau": {**RULE, "metric": "accuracy/math"}})
    cur.begin_epoch(0)
    stream = rising_then_flat()
    fired = None
    for i, v in enumerate(stream):
        for m in ({"accuracy/math": v}, {}, {"accuracy/math": float("nan")}):
            cur.next_prompts(1)
            cur.observe(m)
        if cur.pending:
            fired = i
            break
    assert fired == 13 and cur.stage0_steps == 42  # 14 observations, 3 steps each


def test_mode_min(tmp_path):
    rule = {**RULE, "metric": "loss", "mode": "min"}
    cur = make(tmp_path, switch={"plateau": rule})
    assert fire_step(cur, [1.0 - v for v in rising_then_flat()], key="loss") == 14
    up = make(tmp_path, switch={"plateau": rule})
    # never improves: the first moving mean (step 2) is the best, 5 steps later it fires
    assert fire_step(up, rising_then_flat(), key="loss") == 7


def test_after_steps_caps_the_plateau_rule(tmp_path):
    rising = [0.05 * i for i in range(100)]
    cur = make(tmp_path, switch={"plateau": RULE, "after_steps": 7})
    assert fire_step(cur, rising) == 7 and cur.switch_rule == "after_steps"
    cur.next_prompts(1)
    assert cur.end_epoch(0, None)["switch/after_steps"] == 1
    # the plateau comes first: it wins, and after_steps changes nothing later
    early = make(tmp_path, switch={"plateau": RULE, "after_steps": 20})
    assert fire_step(early, rising_then_flat()) == 14 and early.switch_rule == "plateau"
    early.observe({"accuracy": 0.7})
    assert early.switch_step == 14 and early.switch_rule == "plateau"


def test_after_epochs_caps_the_plateau_rule(tmp_path):
    cur = make(tmp_path, n_math=6, switch={"plateau": RULE, "after_epochs": 2})
    for e in range(2):
        cur.begin_epoch(e)
        while cur.next_prompts(2):
            cur.observe({"accuracy": 0.2 * (cur.stage0_steps + 1)})  # always improving
        rep = cur.end_epoch(e, None)
    assert cur.stage == 1 and cur.switch_rule == "after_epochs" and cur.switch_epoch == 2
    assert rep["switch/after_epochs"] == 1 and rep["switch_step"] == 6


def test_options_are_checked():
    with pytest.raises(pydantic.ValidationError):
        TS.Options(switch={"plateau": {"patience": 0}})
    with pytest.raises(pydantic.ValidationError):
        TS.Options(switch={"plateau": {"mode": "up"}})
    with pytest.raises(pydantic.ValidationError):
        TS.Options(switch={"plateau": {"min_delta": -1}})
    rule = TS.Options(switch={"plateau": {}}).switch.plateau
    assert rule is not None and rule.metric == "accuracy" and rule.patience == 20


# -- exact resume ---------------------------------------------------------------------------


def drive(cur: TS, stream: list[float], start: tuple[int, int] = (0, 0), stop: int = -1):
    """Kernel-like loop: epochs of ``next_prompts(3)`` steps, one metric per step, until the
    stream ends. Stops after step ``stop`` and returns (trace, (epoch, step), state) there."""
    trace: list[tuple] = []
    epoch, step = start
    while step < len(stream):
        cur.begin_epoch(epoch)  # a no-op for the epoch a resumed state is in
        while step < len(stream) and (got := cur.next_prompts(3)):
            cur.observe({"accuracy": stream[step]})
            step += 1
            trace.append((epoch, cur.stage, cur.pending, tuple(p.id for p in got)))
            if step == stop:
                return trace, (epoch, step), json.loads(json.dumps(cur.state_dict()))
        if step < len(stream) or not got:
            rep = cur.end_epoch(epoch, None)
            trace.append(("end", epoch, sorted(rep.items())))
            epoch += 1
    return trace, (epoch, step), None


def build(tmp_path: Path, **switch: object) -> TS:
    return make(tmp_path, n_math=30, n_code=12, switch={"plateau": RULE, **switch})


@pytest.mark.parametrize("mid_epoch", [True, False])
def test_resume_is_exact_across_the_switch(tmp_path, mid_epoch):
    stream = rising_then_flat(noise=0.02, seed=1)[:40]
    full, _, _ = drive(build(tmp_path, mid_epoch=mid_epoch), stream)
    steps = [t for t in full if t[0] != "end"]
    fired = 1 + next(i for i, t in enumerate(steps) if t[2])  # the step the rule fired at
    switched = [t for t in full if t[0] == "end" and ("stage_switched", 1.0) in t[2]]
    assert len(switched) == 1  # the stream does switch, so the stops below straddle it
    assert any(t[1] == 1 for t in steps)  # and stage 1 steps follow
    for stop in sorted({2, 9, 12, fired - 1, fired, fired + 1, fired + 2, len(steps) - 1}):
        a = build(tmp_path, mid_epoch=mid_epoch)
        head, at, state = drive(a, stream, stop=stop)
        b = build(tmp_path, mid_epoch=mid_epoch)  # a fresh process
        b.load_state_dict(state)
        tail, _, _ = drive(b, stream, start=at)
        assert head + tail == full, stop


def test_resume_keeps_the_patience_count(tmp_path):
    a = build(tmp_path)
    a.begin_epoch(0)
    for v in rising_then_flat()[:12]:
        a.next_prompts(1)
        a.observe({"accuracy": v})
    assert a.stale == 3 and a.pending is None
    b = build(tmp_path)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    b.begin_epoch(0)
    for v in (0.7, 0.7):
        b.next_prompts(1)
        b.observe({"accuracy": v})
    assert b.pending is not None and b.switch_step == 14  # 3 + 2 = patience 5
