"""The learning-efficiency experiment, at a small size: every method runs through the real
CLI, and the table, the JSON and the overlay plot are produced."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from benchmarks import learning_efficiency as le


@pytest.mark.slow
def test_small_experiment_produces_table_and_plot(tmp_path, capsys):
    """The experiment runner end to end: three methods (GRPO, DAPO, SRPO with step-level
    selection) train through the real CLI on both domains, with held-out evaluations, and
    the runner's table, JSON, plot and --reuse logic work on what they wrote. The fast tier
    tests the runner's summaries on hand-made metrics; only this trains with each method's
    curriculum as the experiment configures it."""
    out = tmp_path / "eff"
    argv = [
        "--methods",
        "grpo",
        "dapo",
        "srpo_select",
        "--seeds",
        "0",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--eval-prompts",
        "16",
        "--target",
        "0.5",
        "--train-limit",
        "64",
        "--out",
        str(out),
    ]
    assert le.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"grpo", "dapo", "srpo_select"}
    for runs in results.values():
        (run,) = runs
        assert [s for s, _ in run["eval_curve"]] == [0, 2, 4]
        assert len(run["effective_ratio"]) == 4
        assert {"accuracy/math", "accuracy/code"} <= set(run["final"])
        assert set(run["steps_to_target_by_domain"]) == {"math", "code"}
    # DAPO over-samples: it generates at least as many rollouts per step as the others
    assert results["dapo"][0]["rollouts_curve"][-1] >= results["grpo"][0]["rollouts_curve"][-1]
    assert results["dapo"][0]["generated_per_trained"] >= 1.0
    # selection trains every group it generates; the signal share is a share
    assert results["srpo_select"][0]["generated_per_trained"] == 1.0
    assert 0.0 <= results["srpo_select"][0]["signal_share_of_generated"] <= 1.0
    import yaml

    used = yaml.safe_load((out / "srpo_select-seed0" / "config.yaml").read_text())
    assert {d: used["datasets"][d]["limit"] for d in ("math", "code")} == {"math": 64, "code": 64}
    assert used["curriculum"]["options"]["resampling"] == "selection"  # the method's curriculum
    table = (out / "results.md").read_text()
    assert "| srpo_select |" in table and "steps to target" in table
    assert (out / "efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --reuse keeps completed runs made with the same settings and retrains changed ones
    capsys.readouterr()
    assert le.main([*argv, "--reuse", "--methods", "grpo"]) == 0
    assert "grpo            seed 0: reused" in capsys.readouterr().out
    changed = [*argv, "--reuse", "--methods", "grpo", "--steps", "2"]
    assert le.main(changed) == 0
    assert "reused" not in capsys.readouterr().out


def test_a_step_that_trained_no_group_leaves_the_effective_ratio_undefined(tmp_path):
    """DAPO at the end of an epoch whose remaining prompts all have zero-variance groups
    generates rollouts but trains none; its step row has no effective ratio (seen in a
    multi-epoch run). The summary keeps the step, the means skip it, the plot shows a gap."""
    rows = [
        {"kind": "eval", "step": 0, "accuracy": 0.5, "accuracy/math": 0.5},
        {"kind": "step", "step": 0, "rollouts_total": 256.0, "effective_ratio": 0.5},
        {"kind": "step", "step": 1, "rollouts_total": 472.0, "rollouts": 0.0},
        {"kind": "eval", "step": 2, "accuracy": 0.9, "accuracy/math": 0.9},
        {"kind": "end", "step": 2, "status": "completed"},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = le.summarize(tmp_path, target=0.85)
    assert s["effective_ratio"] == [0.5, None]
    assert s["steps_to_target"] == 2 and s["rollouts_to_target"] == 472.0
    assert le._mean([[0.5, None], [0.7, None]])[0] == pytest.approx(0.6)
    assert math.isnan(le._mean([[0.5, None], [0.7, None]])[1])
    args = argparse.Namespace(
        task="tiny", target=0.85, eval_every=2, steps=2, seeds=[0], train_limit=0
    )
    table = le.report({"dapo": [s]}, args)
    assert "| dapo | 1 |" in table and "0.50" in table
