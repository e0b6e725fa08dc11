"""``srpo report``'s reasoning-behaviour and sampled-evaluation figures, from a synthetic
two-stage run's metrics.jsonl (as the kernel and the jsonl logger write them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

import matplotlib.image as mpimg

from srpo.report import make_report
from srpo.report.curves import _domains, _pattern_keys
from srpo.report.runs import load_run

PATTERNS = ("wait", "recheck", "however", "verify", "never_seen")


def behaviour_run(path: Path, steps: int = 12, switch: int = 6) -> Path:
    """Lengths grow in stage 0 and reflections in stage 1; sampled evals at 0, 6, 12."""
    path.mkdir(parents=True)
    rows = []
    for s in range(steps):
        stage = int(s >= switch)
        row: dict = {"kind": "step", "step": s, "epoch": 0.0, "stage": float(stage),
                     "reward/mean": 0.5}  # fmt: skip
        for scope, doms in (("", ("math", "code")), ("correct/", ()), ("incorrect/", ())):
            for d in ("", *(f"{x}/" for x in doms)):
                k = f"behaviour/{d}{scope}"
                row |= {f"{k}responses": 8.0, f"{k}length_mean": 20.0 + 3 * s,
                        f"{k}length_p50": 18.0 + 3 * s, f"{k}length_p90": 30.0 + 4 * s,
                        f"{k}length_max": 48.0, f"{k}truncated": 0.1,
                        f"{k}reflection": 0.1 * stage + 0.01 * s,
                        f"{k}reflections": 0.2 * stage}  # fmt: skip
        for i, name in enumerate(PATTERNS):
            row[f"reflection/{name}"] = 0.0 if name == "never_seen" else 0.05 * i * (1 + stage)
        rows.append(row)
        if s % switch == 0:
            rows.append(_eval(s, 0.3 + 0.02 * s))
    rows.append(_eval(steps, 0.6, "after"))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _eval(step: int, p: float, label: str = "during") -> dict:
    return {"kind": "eval", "step": step, "label": label, "accuracy": p, "avg@8": p,
            "avg@8_stderr": 0.04, "pass@1": p, "pass@8": min(1.0, 1.6 * p), "maj@8": p + 0.02,
            "avg@8/math": p}  # fmt: skip


def test_behaviour_and_sampled_eval_figures(tmp_path: Path) -> None:
    run = behaviour_run(tmp_path / "srpo")
    page = make_report([run], tmp_path / "out")
    drawn = {p.name for p in (tmp_path / "out").glob("*.png")}
    want = {"eval_sampled.png", "behaviour_length.png", "behaviour_length_domains.png",
            "behaviour_truncated.png", "reflection.png", "reflection_patterns.png",
            "reflection_stages.png"}  # fmt: skip
    assert want <= drawn
    for name in want:
        img = mpimg.imread(tmp_path / "out" / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400, name
    html = page.read_text()
    assert all(f"src='{n}'" in html for n in want)
    assert "avg@8 after" in html and "pass@8 after" in html
    loaded = load_run(run)
    assert _domains([loaded]) == ["code", "math"]  # not the correct/incorrect splits
    keys, labels = _pattern_keys([loaded])
    assert keys == [f"reflection/{n}" for n in labels]
    assert labels == ["verify", "however", "recheck"]  # by frequency; zero ones left out


def test_one_stage_run_has_no_stage_bars_and_old_runs_no_new_figures(tmp_path: Path) -> None:
    run = behaviour_run(tmp_path / "one", steps=4, switch=99)
    make_report([run], tmp_path / "out1")
    drawn = {p.name for p in (tmp_path / "out1").glob("*.png")}
    assert "reflection_patterns.png" in drawn and "reflection_stages.png" not in drawn
    old = tmp_path / "old"
    old.mkdir()
    rows = [{"kind": "step", "step": s, "reward/mean": 0.1 * s, "stage": 0.0} for s in range(3)]
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    make_report([old, run], tmp_path / "out2")  # two runs, one without the new keys
    drawn = {p.name for p in (tmp_path / "out2").glob("*.png")}
    assert "behaviour_length.png" in drawn and "eval_sampled.png" in drawn
    make_report([old], tmp_path / "out3")
    assert {p.name for p in (tmp_path / "out3").glob("*.png")} == {"reward.png"}
