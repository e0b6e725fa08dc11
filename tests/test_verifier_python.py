"""The ``python`` verifier: a reward function from the user's file. Every return form of the
contract is scored; every way the function can fail — raising, NaN/inf, a wrong type, a
hang, a crash — costs that response its reward as a counted error, never the run; and a
file that cannot be used is one located line from ``srpo validate``."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import pytest
from srpo_plugins.verifiers.python import PythonVerifier

from srpo.api import PluginContext, Prompt, Scores, SrpoWarning
from srpo.cli import main
from tests.support.reward_files import REWARDS, python_run_config, write_rewards

ISOLATIONS = ["process", "none"]


def line_of_text(source: str, text: str) -> int:
    return next(i for i, x in enumerate(source.splitlines(), 1) if text in x)


def prompt(reference: str = "42", level: int = 3) -> Prompt:
    return Prompt(
        id=7, domain="math", text="What is 6*7?", reference=reference, meta={"level": level}
    )


@pytest.fixture
def make(tmp_path):
    """A verifier on ``tmp_path/rewards.py``, constructed the way a run does (preflight
    first), closed after the test."""
    write_rewards(tmp_path)
    made: list[PythonVerifier] = []

    def build(**options: object) -> PythonVerifier:
        opts = PythonVerifier.Options.model_validate({"path": "rewards.py", **options})
        PythonVerifier.preflight(opts, tmp_path)
        v = PythonVerifier(opts, PluginContext(run_dir=tmp_path / "run", seed=0, base_dir=tmp_path))
        made.append(v)
        return v

    yield build
    for v in made:
        v.close()


def score(v: PythonVerifier, *responses: str, reference: str = "42") -> list:
    p = prompt(reference)
    return v.score([p] * len(responses), list(responses))


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_every_return_form(make, isolation):
    s = score(make(function="exact", isolation=isolation), "42", " 42 ", "41")
    assert [(x.reward, x.correct, x.error) for x in s] == [
        (1.0, True, None),
        (1.0, True, None),
        (0.0, False, None),
    ]
    s = score(make(function="as_bool", isolation=isolation), "42", "41")
    assert [(x.reward, x.correct) for x in s] == [(1.0, True), (0.0, False)]
    s = score(make(function="as_tuple", isolation=isolation), "42", "41")
    assert [(x.reward, x.correct) for x in s] == [(0.25, True), (0.25, False)]
    s = score(make(function="as_dict", isolation=isolation), "42", "x")
    assert [(x.reward, x.correct, x.breakdown) for x in s] == [
        (1.1, True, {"format": 0.1, "length": 2.0}),
        (0.1, False, {"format": 0.1, "length": 1.0}),
    ]
    # a dict without "correct": decided by the threshold like a bare number
    (x,) = score(make(function="dict_without_correct", isolation=isolation), "42")
    assert (x.reward, x.correct, x.breakdown) == (-1.0, False, {"style": 0.5})
    (x,) = score(make(function="dict_without_correct", correct_above=-2.0), "42")
    assert x.correct


def test_meta_reaches_a_function_that_asks_for_it(make):
    (x,) = make(function="with_meta").score([prompt(level=5)], ["r"])
    assert (x.reward, x.correct, x.error) == (5.0, True, None)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_batched_form(make, isolation):
    v = make(function="batched", batched=True, isolation=isolation)
    s = v.score([prompt("1"), prompt("2"), prompt("3")], ["1", "0", "3"])
    assert [(x.reward, x.correct, x.error) for x in s] == [
        (1.0, True, None),
        (0.0, False, None),
        (1.0, True, None),
    ]
    with pytest.warns(SrpoWarning, match="returned 1 results for 2 responses"):
        s = make(function="batched_short", batched=True, isolation=isolation).score(
            [prompt()] * 2, ["a", "b"]
        )
    assert all(x.reward == 0 and x.error for x in s)


RAISE_LINE = line_of_text(REWARDS, 'return {}["missing"]')
BAD = {
    "raise": f"rewards.py:{RAISE_LINE}: KeyError: 'missing'",
    "nan": "misbehaves(): reward is nan",
    "inf": "misbehaves(): reward is inf",
    "str": "misbehaves(): returned str, not a number, (reward, correct) or dict",
    "none": "misbehaves(): returned NoneType, not a number, (reward, correct) or dict",
    "triple": "misbehaves(): returned a tuple of 3 values, not (reward, correct)",
    "no-reward": "misbehaves(): returned a dict without 'reward' (keys: ['correct'])",
    "bad-part": "misbehaves(): reward part 'note' is str, not a number",
    "bad-correct": "misbehaves(): correct is 'yes', not a bool",
}


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_failures_score_zero_as_counted_errors_with_one_warning(make, isolation, capfd):
    v = make(function="misbehaves", isolation=isolation)
    responses = ["ok", *BAD, "print", "ok"]
    with pytest.warns(SrpoWarning) as caught:
        s = score(v, *responses)
    assert len(caught) == 1 and "9 of 12 responses could not be scored" in str(caught[0].message)
    assert f"first: rewards.py:{RAISE_LINE}: KeyError: 'missing'" in str(caught[0].message)
    got = dict(zip(responses[1:-2], s[1:-2], strict=True))
    assert {r: x.error for r, x in got.items()} == BAD
    assert all(x.reward == 0.0 and not x.correct for x in got.values())
    assert [(x.reward, x.error) for x in (s[0], s[-2], s[-1])] == [(1.0, None)] * 3
    assert Scores.from_list(s).num_errors == 9  # what the step reports as verifier_errors
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning was given once: later failures count only
        assert score(v, "raise")[0].error
    if isolation == "process":  # the function's prints never corrupt the worker protocol
        assert "noise on stdout" in capfd.readouterr().err


def test_a_hang_is_cut_off_and_the_next_call_works(make):
    v = make(function="misbehaves", timeout_s=0.5)
    score(v, "ok")  # the worker is up
    for response, how in (("hang", "timed out after 0.5s"), ("stubborn", "(worker killed)")):
        t0 = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SrpoWarning)
            s = score(v, response, "ok")
        took = time.monotonic() - t0
        assert s[0].reward == 0 and how in (s[0].error or "")
        assert (s[1].reward, s[1].error) == (1.0, None)  # answered after the hang
        assert took < 0.5 + 1.0 + 2.0, took  # limit + kill grace + restart slack


def test_a_crashing_worker_is_replaced(make):
    v = make(function="misbehaves")
    with pytest.warns(SrpoWarning):
        s = score(v, "ok", "crash", "ok")
    assert [x.reward for x in s] == [1.0, 0.0, 1.0]
    assert s[1].error == "the reward worker died (exit code 3)"


def test_workers_split_the_calls_and_close_ends_them(make):
    v = make(function="pid", num_workers=2)
    pids = {int(x.reward) for x in score(v, *["r"] * 6)}
    assert len(pids) == 2 and os.getpid() not in pids
    v.close()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_in_process_runs_in_the_trainer(make):
    (x,) = score(make(function="pid", isolation="none"), "r")
    assert int(x.reward) == os.getpid()


# --- srpo validate: each unusable file is one line, exit 2 ---------------------------------


def line_of(path: Path, text: str) -> int:
    return line_of_text(path.read_text(), text)


def validate(path: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_validate_accepts_a_good_file(write_config, tmp_path, capsys):
    write_rewards(tmp_path)
    path = write_config(python_run_config(tmp_path, function="exact"))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("source", "where", "message"),
    [
        ("def score(prompt, response, reference)\n    return 1\n", 1, "SyntaxError: expected ':'"),
        ("import json\nx = 1 / 0\n", 2, "importing it raised ZeroDivisionError: division by zero"),
        ("import no_such_module_here\n", 1, "ModuleNotFoundError: No module named"),
        (
            "\n\ndef score(prompt, response):\n    return 1\n",
            3,
            "score(prompt, response) cannot be called as score(prompt, response, reference)",
        ),
    ],
    ids=["syntax", "import-raises", "import-missing", "signature"],
)
def test_validate_points_into_the_reward_file(
    write_config, tmp_path, capsys, source, where, message
):
    rewards = write_rewards(tmp_path, source)
    err = validate(write_config(python_run_config(tmp_path)), capsys)
    assert err.startswith(f"srpo: error: {rewards}:{where}: ") and message in err, err


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        ({"rewards": "nope.py"}, "path", "no such file: "),
        ({"function": "scor"}, "function", "defines no 'scor' (its functions: exact)"),
        ({"function": "REWARDS"}, "function", "is int, not a function"),
        ({"isolation": "none", "num_workers": 2}, "num_workers", "needs isolation: process"),
        ({"batched": True, "num_workers": 2}, "num_workers", "gets the whole batch"),
    ],
    ids=["no-file", "no-function", "not-callable", "workers-in-process", "workers-batched"],
)
def test_validate_points_at_the_option(write_config, tmp_path, capsys, options, key, message):
    write_rewards(tmp_path, "REWARDS = 1\n" + "def exact(p, r, ref):\n    return 1\n")
    path = write_config(python_run_config(tmp_path, **options))
    err = validate(path, capsys)
    line = line_of(path, f"{key}:") if key != "path" else line_of(path, "path: nope.py")
    assert err.startswith(f"srpo: error: {path}:{line}: verifiers.math.options.{key}: "), err
    assert message in err, err


# --- end to end ------------------------------------------------------------------------


E2E_REWARDS = r"""
import re


def score(prompt, response, reference):
    boxed = re.findall(r"\\boxed\{([^}]*)\}", response)
    ok = bool(boxed) and boxed[-1].strip() == str(reference).strip()
    return {"reward": float(ok), "correct": ok, "boxed": float(bool(boxed))}
"""


def test_run_scores_the_tiny_math_task(write_config, tmp_path, capsys):
    write_rewards(tmp_path, E2E_REWARDS)
    path = write_config(python_run_config(tmp_path))  # function defaults to "score"
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (step,) = [r for r in rows if r["kind"] == "step"]
    assert step["verifier_errors"] == 0 and step["rollouts"] == 8
    assert 0 <= step["reward/mean"] <= 1 and step["reward_parts/boxed"] > 0
    assert rows[-1]["status"] == "completed"


def test_the_readme_example_runs_as_written(tmp_path):
    """README's "Bring your own ... reward" file and options, scored as a run would."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("# rewards.py (beside the run file)\n", 1)[1].split("```", 1)[0]
    (tmp_path / "rewards.py").write_text(code)
    opts = PythonVerifier.Options.model_validate(
        {"path": "rewards.py", "function": "score", "timeout_s": 5}
    )
    PythonVerifier.preflight(opts, tmp_path)
    v = PythonVerifier(opts, PluginContext(run_dir=tmp_path / "run", seed=0, base_dir=tmp_path))
    try:
        got = score(v, "6*7 = \\boxed{42}", "\\boxed{41}", "42", reference="42")
    finally:
        v.close()
    assert [(s.reward, s.correct, s.breakdown.get("format")) for s in got] == [
        (1.0, True, 1.0),
        (0.0, False, 1.0),
        (0.0, False, 0.0),
    ]
