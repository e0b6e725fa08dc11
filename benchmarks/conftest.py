"""Collects timings of benchmarks/bench_loss.py and prints the ratios the issue targets."""

from __future__ import annotations

from typing import Any

import pytest

RESULTS: dict[str, dict[str, float]] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Benchmarks run in one process: the project's addopts turn pytest-xdist on for the test
    tiers, but workers would share the cores being timed (and pytest-benchmark refuses
    ``--benchmark-only`` under xdist). Only this directory's runs are affected."""
    if getattr(config.option, "numprocesses", None):
        config.option.numprocesses = 0


@pytest.fixture
def record():
    """``record(name, benchmark, bytes=...)`` after a benchmark ran: keeps min/median seconds."""

    def _record(name: str, benchmark: Any, **extra: float) -> None:
        st = benchmark.stats.stats
        RESULTS[name] = {"min": st.min, "median": st.median, **extra}

    return _record


def _ratio(a: str, b: str, key: str) -> float | None:
    if a in RESULTS and b in RESULTS:
        return RESULTS[a][key] / RESULTS[b][key]
    return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("srpo loss benchmark ratios")
    for name, r in RESULTS.items():
        line = f"{name:<28} min {r['min'] * 1e3:9.2f} ms   median {r['median'] * 1e3:9.2f} ms"
        if "bytes" in r:
            line += f"   {r['bytes'] / r['median'] / 1e9:7.2f} GB/s (median)"
        if "peak_gbs" in r:
            line += f"   {100 * r['bytes'] / r['median'] / 1e9 / r['peak_gbs']:5.1f}% of HBM peak"
        tr.write_line(line)
    checks = [
        ("eager / fused", "eager_framework", "fused", ">= 15x"),
        ("reference / fused", "reference", "fused", ">= 5x"),
        ("fused / bandwidth floor", "fused", "bandwidth_floor", "<= 2x"),
    ]
    for label, a, b, target in checks:
        med, mn = _ratio(a, b, "median"), _ratio(a, b, "min")
        if med is not None and mn is not None:
            tr.write_line(f"{label:<28} {med:6.2f}x (median)  {mn:6.2f}x (min)   target {target}")
