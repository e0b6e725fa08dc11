"""Code verifier throughput: 256 small correct programs, sandboxed vs bare, same run.

``bare`` runs each program with its assertion tests in a plain ``python -I -c`` subprocess
(no sandbox, no judge), with the same concurrency; the ratio is the sandbox's overhead.
The dataset formats (``formats``: HumanEval ``check(candidate)`` with 23 calls, MBPP
assertion lists, stdin/stdout with 3 cases) are measured the same way; their bare run is
one subprocess running program and test together (HumanEval, MBPP) or one per case
(stdin/stdout, as those benchmarks' own runners do).
Run: ``pytest benchmarks/bench_code_verifier.py --benchmark-only -s``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from srpo_plugins.verifiers.code import CodeVerifier

from srpo.api import PluginContext
from srpo.types import Prompt

N = 256
WORKERS = os.cpu_count() or 1
RESULTS: dict[str, float] = {}


def programs() -> tuple[list[Prompt], list[str], list[str]]:
    prompts, responses, bare = [], [], []
    for k in range(N):
        code = f"def f(x):\n    return x * {k % 7 + 2} + {k}\n"
        tests = [f"assert f({x}) == {x * (k % 7 + 2) + k}" for x in (0, 1, 5)]
        prompts.append(Prompt(k, "code", "q", {"fn_name": "f", "tests": tests}))
        responses.append(f"```python\n{code}```")
        bare.append(code + "\n".join(tests) + "\n")
    return prompts, responses, bare


def _bare_run(src: str, site: bool, stdin: str | None = None, want: str | None = None) -> bool:
    flags = ["-I"] if site else ["-I", "-S"]
    res = subprocess.run(
        [sys.executable, *flags, "-c", src],
        input=stdin,
        capture_output=stdin is not None,
        text=True,
        timeout=30,
    )
    if want is not None:
        return res.returncode == 0 and res.stdout.split() == want.split()
    return res.returncode == 0


HE_TEST = """
METADATA = {{'author': 'bench'}}
import random


def check(candidate):
    assert candidate(0) == {b}
    assert candidate(1) == {a} + {b}
    assert candidate(5) == 5 * {a} + {b}
    for _ in range(20):
        x = random.randint(-1000, 1000)
        assert candidate(x) == x * {a} + {b}
"""


def format_programs(fmt: str) -> tuple[list[Prompt], list[str], list[Any]]:
    """(prompts, responses, bare jobs) for one dataset format; bare jobs: (src, [cases])."""
    prompts, responses, bare = [], [], []
    for k in range(N):
        a, b = k % 7 + 2, k
        if fmt == "stdio":
            code = f"x = int(input())\nprint(x * {a} + {b})\n"
            ins = [f"{x}\n" for x in (0, 1, 5)]
            outs = [f"{x * a + b}\n" for x in (0, 1, 5)]
            ref: Any = {"inputs": ins, "outputs": outs}
            bare.append((code, list(zip(ins, outs, strict=True))))
        else:
            code = f"def f(x):\n    return x * {a} + {b}\n"
            if fmt == "humaneval":
                test = HE_TEST.format(a=a, b=b)
                ref = {"prompt": 'def f(x):\n    """ax + b"""\n', "test": test, "entry_point": "f"}
                bare.append((code + test + "\ncheck(f)\n", []))
            else:
                tests = [f"assert f({x}) == {x * a + b}" for x in (0, 1, 5)]
                ref = {"test_list": tests, "test_setup_code": "", "test_imports": []}
                bare.append((code + "\n".join(tests) + "\n", []))
        prompts.append(Prompt(k, "code", "q", ref))
        responses.append(f"```python\n{code}```")
    return prompts, responses, bare


FORMATS = ["humaneval", "mbpp", "stdio"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_bare_subprocess_formats(benchmark, fmt):
    _, _, bare = format_programs(fmt)

    def one(job: tuple[str, list[tuple[str, str]]]) -> bool:
        src, cases = job
        if not cases:
            return _bare_run(src, True)
        return all(_bare_run(src, True, inp, want) for inp, want in cases)

    def run() -> list[bool]:
        with ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(one, bare))

    ok = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    assert all(ok)
    RESULTS[f"bare-{fmt}"] = N / benchmark.stats.stats.min
    benchmark.extra_info["programs_per_s"] = RESULTS[f"bare-{fmt}"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_code_verifier_formats(benchmark, fmt):
    prompts, responses, _ = format_programs(fmt)
    ctx = PluginContext(run_dir=Path("."), seed=0, num_workers=WORKERS)
    v = CodeVerifier(CodeVerifier.Options(), ctx)
    starts = 0
    run_job = v.backend.run

    def counting(job: Any) -> Any:
        nonlocal starts
        starts += 1
        return run_job(job)

    v.backend.run = counting  # type: ignore[method-assign]
    try:
        scores = benchmark.pedantic(
            v.score, args=(prompts, responses), rounds=2, iterations=1, warmup_rounds=0
        )
    finally:
        v.close()
    assert all(s.correct for s in scores), v.last_details[:3]
    assert starts == 2 * N  # one sandbox per program per round
    rate = N / benchmark.stats.stats.min
    benchmark.extra_info["programs_per_s"] = rate
    base = RESULTS.get(f"bare-{fmt}")
    print(
        f"\n[{v.backend.name}, {fmt}, workers={WORKERS}, load={os.getloadavg()[0]:.2f}] "
        f"{rate:.1f} programs/s"
        + (f"; bare {base:.1f}/s; overhead x{base / rate:.2f}" if base else "")
    )


@pytest.mark.parametrize("site", [True, False], ids=["site", "no-site"])
def test_bare_subprocess(benchmark, site):
    _, _, bare = programs()

    def run() -> list[bool]:
        with ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(lambda s: _bare_run(s, site), bare))

    ok = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    assert all(ok)
    RESULTS[f"bare-{site}"] = N / benchmark.stats.stats.min
    benchmark.extra_info["programs_per_s"] = RESULTS[f"bare-{site}"]


@pytest.mark.parametrize("site", [True, False], ids=["site", "no-site"])
def test_code_verifier(benchmark, site):
    prompts, responses, _ = programs()
    ctx = PluginContext(run_dir=Path("."), seed=0, num_workers=WORKERS)
    v = CodeVerifier(CodeVerifier.Options(site_packages=site), ctx)
    try:
        scores = benchmark.pedantic(
            v.score, args=(prompts, responses), rounds=2, iterations=1, warmup_rounds=0
        )
    finally:
        v.close()
    assert all(s.correct for s in scores)
    rate = N / benchmark.stats.stats.min
    benchmark.extra_info["programs_per_s"] = rate
    benchmark.extra_info["backend"] = v.backend.name
    base = RESULTS.get(f"bare-{site}")
    if base:
        benchmark.extra_info["overhead_vs_bare"] = base / rate
    print(
        f"\n[{v.backend.name}, site={site}, workers={WORKERS}] {rate:.1f} programs/s"
        + (f"; bare {base:.1f}/s; sandbox overhead x{base / rate:.2f}" if base else "")
    )


def test_single_program_latency(benchmark):
    """Wall time of one sandboxed program (start-up dominated), for the record."""
    prompts, responses, _ = programs()
    ctx = PluginContext(run_dir=Path("."), seed=0, num_workers=1)
    v = CodeVerifier(CodeVerifier.Options(), ctx)
    try:
        t = time.perf_counter()
        benchmark.pedantic(v.score, args=(prompts[:1], responses[:1]), rounds=10, iterations=1)
        benchmark.extra_info["ms"] = (time.perf_counter() - t) / 10 * 1000
    finally:
        v.close()
