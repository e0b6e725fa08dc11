""".ci/budget.py, the CI budget check: a tier over its budget fails CI with one line, a failing
tier stops CI before the next, and the load adjustment is the fair-share model it states."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def budget(monkeypatch):
    spec = importlib.util.spec_from_file_location("ci_budget", ROOT / ".ci" / "budget.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ci_budget", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_the_phases_are_the_readmes_two_test_commands(budget):
    readme = (ROOT / "README.md").read_text()
    for name, cmd, _ in budget.PHASES[1:]:
        assert " ".join(cmd) in readme, name
    assert budget.PHASES[1][2] == 900 and budget.TOTAL_BUDGET_S == 2700


def test_a_tier_over_its_budget_fails_with_one_line(budget, monkeypatch, capsys):
    busy = [sys.executable, "-c", "import time; t = time.time()\nwhile time.time() - t < 0.3: pass"]
    monkeypatch.setattr(
        budget, "PHASES", [("fast tier", busy, 0.05), ("slow tier", ["false"], None)]
    )
    assert budget.main() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ci budget: fast tier took"), err
    assert "over its 0-min budget" in err[0] and "load-adjusted" in err[0]


def test_a_failing_tier_stops_ci_with_its_exit_code(budget, monkeypatch, capsys):
    fail = [sys.executable, "-c", "raise SystemExit(3)"]
    later = [sys.executable, "-c", "open('ran', 'w')"]
    monkeypatch.setattr(budget, "PHASES", [("fast tier", fail, 900.0), ("slow tier", later, None)])
    monkeypatch.setattr(budget, "ROOT", ROOT / ".ci")  # `later` would write here: it must not run
    assert budget.main() == 3
    assert not (ROOT / ".ci" / "ran").exists()
    assert "fast tier failed (exit 3); later tiers not run" in capsys.readouterr().err


def test_the_total_budget_counts_every_phase(budget, monkeypatch, capsys):
    ok = [sys.executable, "-c", "pass"]
    monkeypatch.setattr(budget, "PHASES", [("set-up", ok, None), ("fast tier", ok, 900.0)])
    monkeypatch.setattr(budget, "TOTAL_BUDGET_S", 0.001)
    assert budget.main() == 1
    assert capsys.readouterr().err.startswith("ci budget: all of CI took")


def test_load_adjustment_is_a_fair_share(budget):
    quiet = budget.Timing("t", wall=600.0, others=0.0, steal=0.0, cores=2)
    assert quiet.adjusted == 600.0
    # others held one of two cores on average: a tier using both got 2/3 of the machine
    half = budget.Timing("t", wall=600.0, others=500.0, steal=100.0, cores=2)
    assert half.others_load == pytest.approx(1.0) and half.adjusted == pytest.approx(400.0)
    # others can hold at most every core: a quiet machine is credited with at most half
    full = budget.Timing("t", wall=600.0, others=1200.0, steal=0.0, cores=2)
    assert full.adjusted == pytest.approx(300.0)
