"""The benchmark regression gate (benchmarks/gate.py, floors in benchmarks/gates.toml).

``pytest -m gate`` runs only these; ``-m 'not gate'`` skips them. Each ``test_gate[NAME]``
measures its ratio in this process (small sizes, best of a few alternating repetitions) and
fails with one line, e.g. ``fused_vs_eager: 9.8× < 15× floor``. The measurements are written
to benchmarks/results/gates.json (not committed) for CI to keep.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import gate, gate_measurements, gate_rules

pytestmark = pytest.mark.gate

GATES = gate_rules.load_gates()
_MEASURED: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def results():
    out: dict[str, Any] = {"conditions_before": gate.conditions(), "measurements": _MEASURED}
    yield out
    if _MEASURED:
        out["conditions_after"] = gate.conditions()
        measured = {k: v for r in _MEASURED.values() for k, v in r.items() if k != "details"}
        out["failures"] = gate_rules.evaluate(
            {k: g for k, g in GATES.items() if k in measured}, measured
        )
        gate.write_results(out)


def _measure(source: str) -> dict[str, Any]:
    if source not in _MEASURED:  # one measurement serves all the gates it produces
        t = time.perf_counter()
        r = gate_measurements.MEASUREMENTS[source]()
        r["details"]["seconds"] = time.perf_counter() - t
        _MEASURED[source] = r
    return _MEASURED[source]


@pytest.mark.parametrize("name", list(GATES))
def test_gate(name: str, results) -> None:
    g = GATES[name]
    value = _measure(gate_measurements.GATE_SOURCES[name])[name]
    line = g.check(value)
    if line is not None:
        pytest.fail(line, pytrace=False)


# --- the gate logic itself ------------------------------------------------------------------


def test_every_gate_has_a_measurement_and_a_why() -> None:
    assert set(GATES) == set(gate_measurements.GATE_SOURCES)
    for g in GATES.values():
        assert len(g.why) > 40, g.name  # says what was measured, where, and the margin


def test_evaluate_fails_below_floor_and_above_ceiling() -> None:
    """The real floors file: a ratio just past each limit breaks exactly that gate, with one
    line naming it; a ratio at the limit holds."""
    at_limit = {g.name: g.floor if g.floor is not None else g.ceiling for g in GATES.values()}
    assert gate_rules.evaluate(GATES, at_limit) == []
    for g in GATES.values():
        bad = dict(at_limit)
        bad[g.name] = g.floor * 0.99 if g.floor is not None else g.ceiling * 1.01
        lines = gate_rules.evaluate(GATES, bad)
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"{g.name}: ")
        assert lines[0].endswith(" floor" if g.floor is not None else " ceiling")
    assert gate_rules.evaluate(GATES, {}) == [f"{n}: not measured" for n in GATES]


def test_line_format() -> None:
    g = gate_rules.Gate("fused_vs_eager", "eager ÷ fused", "why", floor=15.0)
    assert g.check(9.8) == "fused_vs_eager: 9.8× < 15× floor"
    assert g.check(float("nan")) is not None  # a broken measurement never passes
    c = gate_rules.Gate("kernel_overhead", "other ÷ step", "why", ceiling=0.05, unit="%")
    assert c.check(0.071) == "kernel_overhead: 7.1% > 5% ceiling"
    assert c.check(0.01) is None
    assert gate_rules.Gate("x", "r", "w", floor=1000.0).check(12.34) == "x: 12.3× < 1000× floor"


def test_impossible_floor_fails_a_real_measurement(tmp_path: Path) -> None:
    """A floors file with an impossible floor, and a real (small) measurement: the gate
    fails with its one line; with a reachable floor it holds."""
    r = gate_measurements.measure_math(answers=40, reps=1)
    path = tmp_path / "gates.toml"
    body = 'name = "math_fast_path"\nratio = "math-verify ÷ fast path"\nwhy = "test"\n'
    path.write_text(f"[[gate]]\n{body}floor = 1e9\n")
    lines = gate_rules.evaluate(gate_rules.load_gates(path), r)
    assert len(lines) == 1 and lines[0].startswith("math_fast_path: ")
    assert lines[0].endswith(" < 1000000000× floor")
    path.write_text(f"[[gate]]\n{body}floor = 1.0\n")
    assert gate_rules.evaluate(gate_rules.load_gates(path), r) == []


@pytest.mark.parametrize(
    "body, error",
    [
        ('name = "a"\nratio = "r"\nfloor = 1\n', "missing why"),
        ('name = "a"\nratio = "r"\nwhy = "w"\n', "exactly one of floor, ceiling"),
        ('name = "a"\nratio = "r"\nwhy = "w"\nfloor = 1\nceiling = 2\n', "exactly one"),
        ('name = "a"\nratio = "r"\nwhy = "w"\nflor = 1\n', "unknown keys"),
    ],
)
def test_bad_gates_file(tmp_path: Path, body: str, error: str) -> None:
    path = tmp_path / "gates.toml"
    path.write_text("[[gate]]\n" + body)
    with pytest.raises(ValueError, match=error):
        gate_rules.load_gates(path)
