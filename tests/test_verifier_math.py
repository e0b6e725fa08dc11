"""MathVerifier: extraction, equivalence, format reward, hard time bound, fuzzing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from srpo_plugins.verifiers import math as mv
from srpo_plugins.verifiers.math import MathVerifier, extract_boxed, fast_compare, pool

from srpo.api import PluginContext, PluginError
from srpo.types import Prompt

TIMEOUT = 1.0


def make(**opts) -> MathVerifier:
    ctx = PluginContext(run_dir=Path("."), seed=0, num_workers=2)
    return MathVerifier(MathVerifier.Options(**opts), ctx)


@pytest.fixture(scope="module")
def verifier():
    v = make(timeout_s=TIMEOUT, format_reward=0.1)
    v.warmup()
    yield v
    v.close()


def P(ref: str) -> Prompt:
    return Prompt(id=0, domain="math", text="q", reference=ref)


def test_extract_boxed():
    assert extract_boxed("so \\boxed{1} then \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert extract_boxed("\\boxed 7 done") == "7"
    assert extract_boxed("\\fbox{x}") == "x"
    assert extract_boxed("\\boxed{unbalanced") is None
    assert extract_boxed("nothing") is None


def test_fast_path():
    assert fast_compare("579", " 579 ") is True
    assert fast_compare("1000", "1,000") is True
    assert fast_compare("0.5", "\\frac{1}{2}") is True
    assert fast_compare("3", "4") is False
    assert fast_compare("x^2", "x**2") is None  # sympy decides


def test_plain_answers_never_reach_the_sympy_workers(verifier, monkeypatch):
    """The common case (a number, equal or not) is decided in-process; its speed against
    math-verify is measured in benchmarks/bench_math_verifier.py, not here."""

    def no_slow_path(gold: str, pred: str) -> dict:
        raise AssertionError(f"slow path for {gold!r} vs {pred!r}")

    monkeypatch.setattr(verifier, "_slow", no_slow_path)
    golds = ["579", "1000", "-3", "0.5"]
    preds = ["thus \\boxed{579}", "\\boxed{1,000}", "\\boxed{-4}", "\\boxed{0.50}"]
    s = verifier.score([P(g) for g in golds], preds)
    assert [x.correct for x in s] == [True, True, False, True]
    assert all(x.error is None for x in s)


@pytest.mark.parametrize(
    ("gold", "pred", "ok"),
    [
        ("579", "579", True),
        ("\\frac{1}{2}", "0.5", True),
        ("\\frac{1}{2}", "\\dfrac12", True),
        ("50\\%", "50", True),
        ("0.25", "25\\%", True),
        ("10", "10\\text{ cm}", True),
        ("1000", "1{,}000", True),
        ("[1,2]", "[1, 2]", True),
        ("(1,2]", "(1, 2]", True),
        ("\\{1,2\\}", "\\{2,1\\}", True),
        (
            "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
            "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
            True,
        ),
        ("\\text{(A)}", "A", True),
        ("(x+1)^2", "x^2+2x+1", True),
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", True),
        ("90^\\circ", "90", True),
        ("5", "6", False),
        ("[1,2]", "[1,3]", False),
        ("\\frac{1}{3}", "0.5", False),
    ],
)
def test_equivalence(verifier, gold, pred, ok):
    (s,) = verifier.score([P(gold)], [f"The answer is $\\boxed{{{pred}}}$."])
    assert s.correct is ok, s
    assert s.breakdown["accuracy"] == float(ok)
    assert s.breakdown["format"] == pytest.approx(0.1)
    assert s.reward == pytest.approx(float(ok) + 0.1)


def test_no_answer_and_pattern():
    v = make(answer_pattern=r"Answer:\s*(\S+)", format_reward=0.5)
    try:
        s = v.score([P("7"), P("7"), P("7")], ["Answer: 7", "Answer: 8", "\\boxed{7}"])
        assert [x.reward for x in s] == [1.5, 0.5, 0.0]
        assert s[2].breakdown["no_answer"] == 1.0 and s[2].error is None
    finally:
        v.close()


def test_hang_is_bounded(verifier):
    t = time.monotonic()
    (s,) = verifier.score([P("2")], ["\\boxed{9^{9^{9^{9}}}}"])
    assert time.monotonic() - t < TIMEOUT + 1.5  # bounded; the slack is CI load
    assert s.reward == pytest.approx(0.1) and not s.correct and s.error


def test_hard_kill_when_signals_do_not_reach(monkeypatch):
    # a worker whose soft alarm never fires, as when sympy sits in one long C call
    src = pool.WORKER_SRC.replace(
        "signal.signal(signal.SIGALRM, _alarm)",
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})",
    )
    assert src != pool.WORKER_SRC
    monkeypatch.setattr(pool.Worker, "src", src)
    v = make(timeout_s=0.5, num_workers=1)
    try:
        v.warmup()
        v.score([P("1")], ["\\boxed{x^2}"])  # warm the import caches of sympy
        t = time.monotonic()
        (s,) = v.score([P("2")], ["\\boxed{9^{9^{9}}}"])
        assert time.monotonic() - t < 0.5 + 1.5  # bounded (unbounded: never returns)
        assert s.error and "timeout" in s.error
        slots = v._workers._slots
        assert slots is not None
        slots.put(slots.get())  # the killed worker's slot went back to the pool
        (s,) = v.score([P("x^2+2x+1")], ["\\boxed{(x+1)^2}"])  # the spare took over
        assert s.correct
    finally:
        v.close()


def test_verifier_crash_is_a_score(monkeypatch):
    v = make()
    monkeypatch.setattr(mv, "fast_compare", lambda g, p: 1 / 0)
    (s,) = v.score([P("1")], ["\\boxed{1}"])
    assert s.reward == 0 and "ZeroDivisionError" in (s.error or "")
    v.close()
    v = make(fail_fast=True)
    with pytest.raises(PluginError, match="ZeroDivisionError") as info:
        v.score([P("1")], ["\\boxed{1}"])
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    v.close()


def test_options_forbid_unknown():
    with pytest.raises(ValueError):
        MathVerifier.Options(timeout=3)


_latexish = st.lists(
    st.sampled_from(
        [
            *"0123456789+-*/^_{}()[],.=x y\\",
            *["\\frac", "\\sqrt", "\\boxed{", "\\left(", "\\right)", "\\pi", "\\infty"],
            *["^{9^{9}}", "\\begin{pmatrix}", "\\end{pmatrix}", "&", "\\\\", "\\text{", "%"],
            "\\cdot",
        ]
    ),
    max_size=30,
).map("".join)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(gold=_latexish, body=_latexish)
def test_fuzz_never_raises_and_is_bounded(verifier, gold, body):
    t = time.monotonic()
    (s,) = verifier.score([P(gold)], ["\\boxed{" + body + "}"])
    # the bound: the budget, plus a little for a kill and a spare taking over
    assert time.monotonic() - t < TIMEOUT + 1.0
    assert s.reward in (0.0, 0.1, 1.1) or s.reward == pytest.approx(1.1)
