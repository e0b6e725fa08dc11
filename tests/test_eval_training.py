"""Evaluation during training (``eval.n_samples``) and the behaviour metrics, end to end on
the shipped tiny model: a real ``srpo run`` writes avg@n, pass@k, maj@k and the behaviour
keys to metrics.jsonl, the numbers are ``srpo eval``'s on the same weights, and ``srpo
report`` draws them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from srpo_plugins.curricula.uniform import UniformCurriculum

from srpo import events as ev
from srpo.api import PluginContext
from srpo.cli import main
from srpo.eval.training import flatten
from srpo.kernel.loop import Kernel, KernelSettings
from srpo.kernel.roles import Roles
from tests.support.kernel import Collect, FakePolicy, FakeSampler, FakeVerifier, G, dataset


def _rows(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_flatten_names_srpo_evals_keys_for_a_run() -> None:
    got = flatten(
        {
            "math": {"prompts": 3, "samples": 12, "greedy": 0.5, "avg@4": 0.25,
                     "avg@4_stderr": 0.1, "pass@4": 0.5, "maj@4": 0.3,
                     "response_length": 7.0, "truncated": 0.0},
            "overall": {"prompts": 3, "greedy": None, "avg@4": 0.25, "pass@4": 0.5},
        }
    )  # fmt: skip
    assert got == {
        "avg@4/math": 0.25, "avg@4_stderr/math": 0.1, "pass@4/math": 0.5, "maj@4/math": 0.3,
        "sample_length/math": 7.0, "sample_truncated/math": 0.0, "avg@4": 0.25, "pass@4": 0.5,
    }  # fmt: skip


def _tiny_run(tmp_path: Path, write_config) -> Path:
    """One step of the tiny example, ``eval.n_samples: 4`` at temperature 0.8 on 8
    held-out prompts, an extra pattern; returns the run file."""
    path = write_config(
        **{
            "run.max_steps": 1,
            "run.prompts_per_step": 4,
            "algorithm.group_size": 4,
            "eval.max_prompts": 8,
            "eval.n_samples": 4,
            "eval.temperature": 0.8,
            "behaviour.extra_patterns": {"boxed": r"\\boxed\{"},
            "loggers": [{"name": "console"}, {"name": "jsonl"}],
        }
    )
    assert main(["run", str(path)]) == 0
    return path


def test_sampled_eval_and_behaviour_in_a_tiny_run_its_jsonl_and_report(
    tmp_path: Path, write_config, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real run: the before/after evaluations carry avg@4 ± se, pass@1/2/4 and maj@4
    (math normalizes answers) beside the unchanged greedy keys, in the console and in
    metrics.jsonl; avg@4 is pass@1 (two estimators, the same samples); the step row has
    the behaviour keys; ``srpo report`` draws the sampled-eval and behaviour figures."""
    _tiny_run(tmp_path, write_config)
    out = capsys.readouterr().out
    assert "avg@4" in out and "pass@4" in out and "maj@4" in out  # the console's eval lines
    run = tmp_path / "run"
    evals = {r["label"]: r for r in _rows(run, "eval")}
    assert set(evals) == {"before", "after"}
    for row in evals.values():
        for key in ("accuracy", "accuracy/math", "response_length/math", "avg@4", "avg@4/math",
                    "avg@4_stderr/math", "pass@1/math", "pass@2/math", "pass@4/math",
                    "maj@4/math", "maj@4", "sample_length/math", "sample_truncated/math"):  # fmt: skip
            assert isinstance(row.get(key), float), key
        assert row["avg@4/math"] == pytest.approx(row["pass@1/math"])
        assert row["pass@1/math"] <= row["pass@2/math"] <= row["pass@4/math"]
        assert 0 < row["avg@4_stderr/math"] < 0.5
    (step,) = _rows(run, "step")
    assert step["behaviour/responses"] == 16
    assert step["behaviour/length_p50"] <= step["behaviour/length_p90"]
    assert step["behaviour/length_p90"] <= step["behaviour/length_max"]
    assert step["behaviour/length_max"] == step["response_length/max"]
    assert "reflection/wait" in step and "behaviour/math/length_mean" in step
    assert step["reflection/boxed"] > 0  # the tiny model answers in \boxed{}

    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    pngs = {p.name for p in (run / "report").glob("*.png")}
    assert {"eval_sampled.png", "behaviour_length.png", "behaviour_length_domains.png",
            "behaviour_truncated.png", "reflection.png",
            "reflection_patterns.png"} <= pngs  # fmt: skip
    page = (run / "report" / "index.html").read_text()
    assert "avg@4 after" in page and "src='reflection.png'" in page


@pytest.mark.slow
def test_srpo_eval_on_the_final_checkpoint_reprints_the_runs_numbers(
    tmp_path: Path, write_config
) -> None:
    """What no fast test shows: the training run's sampled numbers and ``srpo eval --run
    --checkpoint latest`` on the same seed are the same numbers — one runner and one set
    of estimators, the same per-prompt seeds, the same sampler options."""
    path = _tiny_run(tmp_path, write_config)
    after = {r["label"]: r for r in _rows(tmp_path / "run", "eval")}["after"]
    doc = tmp_path / "eval.json"
    argv = ["eval", "--run", str(path), "--checkpoint", "latest", "--n", "4"]
    assert main([*argv, "--temperature", "0.8", "--out", str(doc)]) == 0
    m = json.loads(doc.read_text())["metrics"]["math"]
    for key in ("avg@4", "pass@2", "pass@4", "maj@4"):
        assert after[f"{key}/math"] == pytest.approx(m[key]), key
    assert after["accuracy/math"] == pytest.approx(m["greedy"])


def _kernel(tmp_path: Path, config: dict) -> tuple[Kernel, Collect]:
    """The real kernel over fake roles: prompt i's samples are right for the first
    ``ks[i]`` of them (``tests.support.kernel``), so every estimator has a closed form."""
    train = dataset([1, 2, 3, 4])
    held_out = dataset([0, 1, 2, 4], start=100)
    ctx = PluginContext(run_dir=tmp_path, seed=0, datasets={"math": train})
    log = Collect()
    roles = Roles(
        sampler=FakeSampler(None, ctx),
        verifiers={"math": MathOfFakes(None, ctx)},
        curriculum=UniformCurriculum(UniformCurriculum.Options(), ctx),
        loggers=[log],
        fatal_loggers={0},
    )
    settings = KernelSettings(G, 2, 1, 1, 0, 0, ["math"])
    kernel = Kernel(roles, FakePolicy(), settings, tmp_path, config, {"math": held_out})
    return kernel, log


class MathOfFakes(FakeVerifier):
    """The fakes' verifier with answers to vote on: "right" and "wrong" (maj@k defined)."""

    def normalize(self, response: str) -> str | None:
        return response


def test_the_kernel_reports_the_estimators_closed_forms_and_greedy_by_default(tmp_path):
    """Held-out prompts with 0, 1, 2 and 4 of G=4 samples right: avg@4, pass@k and maj@k
    are the closed forms; without eval.n_samples the rows hold today's greedy keys only;
    every step row has the behaviour keys."""
    kernel, log = _kernel(tmp_path / "a", {"eval": {"n_samples": 4, "pass_k": [2, 4, 1]}})
    assert kernel.run() == "completed"
    before, after = (e.metrics for e in log.of(ev.Evaluation))
    ks = [0, 1, 2, 4]
    assert before["accuracy"] == 0.75  # greedy = the first sample: right iff k > 0
    assert before["avg@4"] == before["avg@4/math"] == pytest.approx(sum(ks) / 16)
    assert before["avg@4_stderr/math"] == pytest.approx(np.std([k / 4 for k in ks], ddof=1) / 2)
    for k in (1, 2, 4):
        want = np.mean([1 - math.comb(4 - c, k) / math.comb(4, k) for c in ks])
        assert before[f"pass@{k}/math"] == pytest.approx(want)
    # maj@4 (one vote of all 4; ties go to the first seen, "right"): k = 2, 4 win
    # maj@2 (blocks of 2): k=1 → (r,w) tie → right, (w,w); k=2 → (r,r), (w,w); k=4 → both
    assert before["maj@4/math"] == pytest.approx(2 / 4)
    assert before["maj@2/math"] == pytest.approx((0 + 0.5 + 0.5 + 1) / 4)
    assert before["sample_length/math"] == 3 and before["sample_truncated/math"] == 0
    assert after == before  # the fakes do not learn
    (step,) = log.of(ev.StepEnd)
    assert step.metrics["behaviour/responses"] == 8 and step.metrics["behaviour/length_max"] == 3

    kernel, log = _kernel(tmp_path / "b", {})
    kernel.run()
    for e in log.of(ev.Evaluation):
        assert set(e.metrics) == {"accuracy", "accuracy/math", "response_length/math"}
