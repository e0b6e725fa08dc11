"""Bounded staleness (issue 26 item 2-4): ``run.max_staleness: k`` generates the next steps'
rollouts beside the update, on a schedule that does not depend on timing.

Proved here on the tiny model with the HF sampler (its own weight copy, refreshed by sync):
the staleness of every step is the schedule's (k after a bubble, 0 at each epoch start: an
epoch end is a barrier), a run reproduces itself bit for bit, a kill -9 while a generation is
in flight resumes exactly (the checkpoint holds the rollouts generated ahead), a resume under
a smaller bound regenerates what became too stale and counts it, and a sampler that cannot
generate beside the update is refused with one line. Two ranks = one process, with generation
ahead and across a resume: tests/test_distributed.py. ``max_staleness: 0`` being today's run
is what every other kernel test (resume, faults, curricula) keeps checking: that path is
unchanged, and no staleness metric appears in it.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from srpo.api import PluginContext, PluginError, RolloutBatch, Sampler
from srpo.cli import main
from srpo.kernel.checkpoint import CheckpointError, find_checkpoint, load_state
from tests.support import faults as harness

pytestmark = pytest.mark.skipif(
    not (harness.MODEL / "config.json").exists(), reason="tiny model not built"
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("staleness")


def config(workdir: Path, name: str, k: int, steps_per_epoch: int = 3, **extra: object) -> dict:
    return harness.small_config(
        workdir / name, steps_per_epoch=steps_per_epoch, **{"run.max_staleness": k, **extra}
    )


def train(workdir: Path, cfg: dict, name: str) -> list[dict]:
    path = harness.write(cfg, workdir / f"{name}.yaml")
    assert main(["run", str(path)]) == 0
    return harness.metrics(Path(cfg["run"]["output_dir"]))


def steps(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("kind") == "step"]


@pytest.fixture(scope="module")
def one_ahead(workdir) -> list[dict]:
    return train(workdir, config(workdir, "k1", 1), "k1")


def test_one_step_ahead_trains_on_the_previous_weights_rollouts(one_ahead):
    rows = steps(one_ahead)
    assert len(rows) == 6  # 2 epochs of 3 steps
    # each epoch starts on-policy (nothing crosses an epoch end), then one version behind
    assert [r["staleness/mean"] for r in rows] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert [r["staleness/max"] for r in rows] == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert all(r["staleness/dropped"] == 0.0 for r in rows)
    ahead = [r for r in rows if r["staleness/mean"] > 0]
    assert all(r["time/generate_ahead"] > 0 and r["time/generate"] == 0.0 for r in ahead)
    assert all(r["time/engine_idle"] >= 0 and r["time/wait_rollouts"] >= 0 for r in rows)


def test_the_schedule_is_the_same_on_every_run(workdir, one_ahead):
    """Generation runs on another thread, but what it samples with is fixed by the step it
    was submitted at: two runs agree bit for bit (timings aside)."""
    again = train(workdir, config(workdir, "k1-again", 1), "k1-again")
    a, b = harness.comparable(one_ahead), harness.comparable(again)
    assert harness.first_difference(a, b) is None


def test_two_ahead_and_an_epoch_barrier(workdir):
    rows = steps(train(workdir, config(workdir, "k2", 2, steps_per_epoch=4), "k2"))
    assert [r["staleness/max"] for r in rows] == [0.0, 1.0, 2.0, 2.0] * 2


def test_no_staleness_metrics_on_policy(workdir):
    rows = steps(train(workdir, config(workdir, "k0", 0, steps_per_epoch=2), "k0"))
    assert rows and not any(k.startswith("staleness/") for r in rows for k in r)
    assert not any("wait_rollouts" in k or "generate_ahead" in k for r in rows for k in r)


def test_kill_9_with_a_generation_in_flight_resumes_exactly(workdir):
    """SIGKILL on the generation thread right after it generated step 2's rollouts (the main
    thread is in step 1's update): the resumed run equals the uninterrupted one."""
    cfg = config(workdir, "unused", 1, **{"checkpoint.every": 1})
    info = harness.trial(workdir, cfg, fault="generate:3", name="kill-generate")
    assert info["resumed_step"] >= 1


def test_kill_9_at_a_random_moment_resumes_exactly(workdir):
    cfg = config(workdir, "unused", 2, steps_per_epoch=4, **{"checkpoint.every": 2})
    harness.trial(workdir, cfg, at=0.5, name="kill-random")


def test_resume_under_a_smaller_bound_regenerates_what_is_too_stale(workdir):
    """Killed with k = 2 after step 3's checkpoint (steps 4 and 5 generated ahead, by
    versions 2 and 3), resumed with k = 1: both batches are older than the new bound when
    their step comes, are regenerated from their prompts and seeds by the current weights,
    and counted as dropped; the next epoch runs one step ahead."""
    cfg = config(workdir, "shrink", 2, steps_per_epoch=6)
    path = harness.write(cfg, workdir / "shrink.yaml")
    code, _, err = harness.finish(harness.start(path, SRPO_FAULT_AT="step_start:5"))
    assert code == -signal.SIGKILL, err[-2000:]
    ckpt, _ = find_checkpoint(workdir / "shrink")
    assert ckpt is not None
    pending = load_state(ckpt)["kernel"]["pipeline"]["pending"]
    assert [(p["step"], p["version"]) for p in pending] == [(4, 2), (5, 3)]
    cfg["run"]["max_staleness"] = 1
    path = harness.write(cfg, workdir / "shrink.yaml")
    assert main(["run", str(path), "--resume", "--allow-config-change", "run.max_staleness"]) == 0
    by_step = {r["step"]: r for r in steps(harness.metrics(workdir / "shrink"))}
    assert [by_step[s]["staleness/dropped"] for s in (3, 4, 5, 6)] == [0.0, 32.0, 32.0, 0.0]
    assert [by_step[s]["staleness/max"] for s in (3, 4, 5, 6, 7)] == [2.0, 0.0, 0.0, 0.0, 1.0]


class NoOverlapSampler(Sampler):
    def generate(self, prompts, n, *, greedy=False, seeds=None) -> RolloutBatch:
        raise AssertionError("not called")


def test_a_sampler_that_cannot_generate_beside_the_update_says_so():
    sampler = NoOverlapSampler(NoOverlapSampler.Options(), PluginContext(Path("."), 0))
    with pytest.raises(PluginError, match="cannot generate beside the update"):
        sampler.prepare_overlap()


def test_report_plots_staleness_and_idle_time(workdir, one_ahead):
    """``srpo report`` of a run with generation ahead draws its staleness and idle curves."""
    out = workdir / "report"
    assert main(["report", str(workdir / "k1"), "-o", str(out)]) == 0
    assert (out / "staleness.png").is_file() and (out / "overlap_idle.png").is_file()
    page = (out / "index.html").read_text()
    assert "staleness.png" in page and "overlap_idle.png" in page


def test_a_checkpoint_from_before_a_new_run_file_field_resumes(workdir, one_ahead):
    """A run file saved before ``run.max_staleness`` (or any field added since) existed is
    read with today's defaults: the new field is not a change to refuse."""
    from srpo.kernel.build import _with_defaults
    from srpo.kernel.checkpoint import check_config

    ckpt, _ = find_checkpoint(workdir / "k1")
    assert ckpt is not None
    saved = load_state(ckpt)["config"]
    now = json.loads(json.dumps(saved))
    saved["run"]["max_staleness"] = 0  # today's run file: the default...
    old = json.loads(json.dumps(saved))
    del old["run"]["max_staleness"]  # ...and one written before the field existed
    assert check_config(_with_defaults(old), saved, [], ckpt) == []
    with pytest.raises(CheckpointError, match=r"run\.max_staleness: 0 → 1"):
        check_config(_with_defaults(old), now, [], ckpt)  # a real change is still refused


def test_refill_rounds_of_dynamic_sampling_generate_with_the_current_weights(workdir):
    """Dynamic sampling refills a step's rejected groups now, with the current weights: a
    step that refilled trains on a mix (its ahead batch one version behind, the refills on
    policy); nothing is older than the bound."""
    more = {"run.max_steps": 4, "sampler.options.max_new_tokens": 40}  # answers: mixed groups
    cfg = config(workdir, "ds", 1, steps_per_epoch=8, **more)
    cfg["curriculum"] = {"name": "dynamic_sampling", "options": {"max_generation_rounds": 3}}
    rows = steps(train(workdir, cfg, "ds"))
    assert len(rows) == 4 and all(r.get("staleness/max", 0.0) <= 1.0 for r in rows)
    refilled = [r for r in rows if r["generation_rounds"] > 1 and r.get("staleness/max") == 1.0]
    assert refilled, [(r["generation_rounds"], r.get("staleness/max")) for r in rows]
    assert all(r["staleness/mean"] < 1.0 for r in refilled)


def test_history_resampling_sees_every_rollout_of_the_epoch(workdir):
    """History resampling rebuilds the next epoch from the history store at the epoch end:
    with generation ahead, the epoch end is a barrier, so every prompt the epoch served has
    its outcome in the store by then, as in a synchronous run (none is left "unseen"), and
    the next epoch is built from all of them."""
    reports = {}
    for k in (0, 1):
        cfg = config(workdir, f"hr{k}", k, steps_per_epoch=3)
        cfg["curriculum"] = {"name": "history_resampling", "options": {}}
        rows = train(workdir, cfg, f"hr{k}")
        reports[k] = [r for r in rows if r.get("kind") == "epoch"]
    for k, epochs in reports.items():
        first = epochs[0]
        served = first["all_correct"] + first["mixed"] + first["all_wrong"]
        assert served == 24 and first.get("unseen", 0) == 0, (k, first)
        assert first["dataset_size"] == 24 - first["dropped"], (k, first)


def test_a_step_count_switch_keeps_its_step_at_any_staleness(workdir):
    """``switch: after_steps`` fires in ``observe``, after a step's update; generating ahead,
    the next step's prompts are drawn before that. The two-stage curriculum counts the
    batches it hands out, so stage 0 has exactly ``after_steps`` steps at staleness 1 too
    (it had one more, so stage 1 one fewer, before draws were counted), and the step rows
    of stage 0 and 1 are the synchronous run's."""
    layout = {}
    for k in (0, 1):
        cfg = config(workdir, f"ts{k}", k, steps_per_epoch=6, **{"run.max_steps": 5})
        cfg["curriculum"] = {
            "name": "two_stage",
            "options": {
                "stage1_domains": ["math"],
                "stage2_mix": {"math": 1.0},
                "switch": {"after_steps": 2},
            },
        }
        rows = train(workdir, cfg, f"ts{k}")
        first = next(r for r in rows if r.get("kind") == "epoch")
        assert first["stage_switched"] == 1.0 and first["stage0_steps"] == 2.0, (k, first)
        layout[k] = [r["epoch"] for r in steps(rows)]
    assert layout[0] == layout[1] == [0.0, 0.0, 1.0, 1.0, 1.0], layout
