"""Code verifier throughput: 256 small correct programs, sandboxed vs bare, same run.

``bare`` runs each program with its assertion tests in a plain ``python -I -c`` subprocess
(no sandbox, no judge), with the same concurrency; the ratio is the sandbox's overhead.
Run: ``pytest benchmarks/bench_code_verifier.py --benchmark-only -s``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def _bare_run(src: str, site: bool) -> bool:
    flags = ["-I"] if site else ["-I", "-S"]
    return subprocess.run([sys.executable, *flags, "-c", src], timeout=30).returncode == 0


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
