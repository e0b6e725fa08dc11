"""HR and two-stage through the real kernel loop and a real history store (fake rollouts)."""

from __future__ import annotations

from pathlib import Path

from srpo_plugins.curricula.history_resampling import HistoryResamplingCurriculum as HR
from srpo_plugins.curricula.two_stage import TwoStageCurriculum as TS

from srpo import events as ev
from srpo.api import PluginContext
from tests.support.kernel import G, dataset, run_kernel


def test_hr_in_the_kernel_drops_solved_prompts_each_epoch(tmp_path: Path):
    ks = [G, 2, 0, G, 1, G, 3, 0, G, G]  # 5 always solved, 3 mixed, 2 never
    ctx = PluginContext(run_dir=tmp_path, seed=0, datasets={"math": dataset(ks)})
    cur = HR(HR.Options(), ctx)
    _, log = run_kernel(tmp_path, cur, per_step=4, epochs=3, history=True)
    starts = log.of(ev.EpochStart)
    assert [e.dataset_size for e in starts] == [10, 5, 5]
    reps = [e.metrics for e in log.of(ev.EpochEnd)]
    assert (reps[0]["all_correct"], reps[0]["mixed"], reps[0]["all_wrong"]) == (5, 3, 2)
    assert reps[1]["all_correct"] == 0 and reps[1]["dataset_size"] == 5
    served = [p.id for e in log.of(ev.RolloutsScored) for p in e.batch.prompts]
    assert len(served) == 10 + 5 + 5
    assert not set(served[10:]) & {0, 3, 5, 8, 9}


def test_two_stage_with_hr_in_the_kernel(tmp_path: Path):
    data = {"math": dataset([G, 2] * 6), "code": dataset([0, 1] * 4, "code", start=100)}
    ctx = PluginContext(run_dir=tmp_path, seed=1, datasets=data)
    cur = TS(TS.Options(switch={"after_steps": 2}, stage2_mix={"math": 1, "code": 1}), ctx)
    _, log = run_kernel(tmp_path, cur, per_step=4, epochs=3, history=True)
    assert [e.stage for e in log.of(ev.EpochStart)] == [0, 1, 1]
    steps = log.of(ev.StepEnd)
    stages = [s.metrics["stage"] for s in steps]
    assert stages[:2] == [0.0, 0.0] and set(stages[2:]) == {1.0}
    first = [p for e in log.of(ev.RolloutsScored)[:2] for p in e.batch.prompts]
    assert {p.domain for p in first} == {"math"} and len(first) == 8  # epoch 0 ended early
    reps = [e.metrics for e in log.of(ev.EpochEnd)]
    assert reps[0]["stage_switched"] == 1 and reps[0]["math/unseen"] == 4
    # solved math prompts seen in stage 0 are not served in stage 1
    solved = {p.id for p in first if p.meta["k"] == G}
    later = [p for e in log.of(ev.RolloutsScored)[2:] for p in e.batch.prompts]
    assert solved and not solved & {p.id for p in later}
    for e in log.of(ev.RolloutsScored)[2:]:
        doms = [p.domain for p in e.batch.prompts]
        assert abs(doms.count("math") - doms.count("code")) <= 1
