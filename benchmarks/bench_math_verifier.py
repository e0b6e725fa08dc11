"""Math verifier speed on plain numeric answers: srpo's in-process fast path vs math-verify.

Most answers in math RL are numbers; the fast path decides those without sympy, and only
the rest go to the time-bounded math-verify workers. ``math_verify`` here is the same
answers parsed and compared by math-verify in this process (no workers, no time bound):
the ratio is what the fast path saves per batch.
Run: ``pytest benchmarks/bench_math_verifier.py --benchmark-only -s``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from srpo_plugins.verifiers.math import MathVerifier

from srpo.api import PluginContext
from srpo.types import Prompt

N = 2000
SECONDS: dict[str, float] = {}


def answers() -> tuple[list[Prompt], list[str]]:
    """Half right, half off by one, in the shapes models write (commas, decimals, signs)."""
    prompts, responses = [], []
    for k in range(N):
        gold = f"{(k * 7919) % 100000 - 5000}"
        pred = gold if k % 2 == 0 else str(int(gold) + 1)
        if k % 5 == 0 and abs(int(pred)) >= 1000:
            pred = f"{int(pred):,}"
        prompts.append(Prompt(k, "math", "q", gold))
        responses.append(f"so the answer is \\boxed{{{pred}}}.")
    return prompts, responses


def _expected() -> list[bool]:
    return [k % 2 == 0 for k in range(N)]


def test_math_verify_in_process(benchmark):
    from math_verify import parse, verify

    prompts, responses = answers()

    def run() -> list[bool]:
        return [
            bool(verify(parse("\\boxed{" + str(p.reference) + "}"), parse(r)))
            for p, r in zip(prompts, responses, strict=True)
        ]

    got = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert got == _expected()
    SECONDS["math_verify"] = benchmark.stats.stats.min
    benchmark.extra_info["answers_per_s"] = N / SECONDS["math_verify"]


def test_srpo_math_verifier(benchmark):
    prompts, responses = answers()
    v = MathVerifier(MathVerifier.Options(), PluginContext(run_dir=Path("."), seed=0))
    try:
        scores = benchmark.pedantic(
            v.score, args=(prompts, responses), rounds=5, iterations=1, warmup_rounds=1
        )
    finally:
        v.close()
    assert [s.correct for s in scores] == _expected()
    t = benchmark.stats.stats.min
    benchmark.extra_info["answers_per_s"] = N / t
    base = SECONDS.get("math_verify")
    if base is None:
        pytest.skip("run with the math_verify benchmark for the ratio")
    benchmark.extra_info["speedup_vs_math_verify"] = base / t
    print(f"\n{N / t:,.0f} answers/s; math-verify {N / base:,.0f}/s; fast path x{base / t:.1f}")
