"""``srpo report``: plots and index.html from synthetic runs' metrics.jsonl."""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

import matplotlib.image as mpimg

from srpo.report import load_run
from srpo.report.cli import add_report_command


def fake_run(path: Path, seed: int, steps: int = 40, switch: int | None = None) -> Path:
    """A run directory as the jsonl logger and the kernel leave it."""
    rng = random.Random(seed)
    path.mkdir(parents=True)
    rows = [{"kind": "eval", "step": 0, "label": "before", "accuracy": 0.3,
             "accuracy/math": 0.4, "accuracy/code": 0.2}]  # fmt: skip
    for s in range(steps):
        r = 0.3 + 0.4 * (1 - math.exp(-s / 15)) + rng.gauss(0, 0.05)
        t = {"generate": 2 + rng.random(), "verify": 0.2, "update": 1.5, "history": 0.01,
             "other": 0.02}  # fmt: skip
        rows.append({
            "kind": "step", "step": s, "epoch": float(s // 10), "reward/mean": r,
            "accuracy/math": r, "accuracy/code": r / 2 if switch and s >= switch else None,
            "effective_ratio": 0.6 + rng.gauss(0, 0.05), "response_length/mean": 20 + s / 2,
            "response_length/max": 40.0, "clip_frac_low": 0.01, "clip_frac_high": 0.02,
            "kl": 0.001 * s, "approx_kl": 0.0005, "entropy": 0.5 - s / 100,
            "tokens_per_s": 1500 + rng.gauss(0, 50),
            "stage": float(bool(switch and s >= switch)),
            **{f"time/{k}": v for k, v in t.items()},
        })  # fmt: skip
        if s % 10 == 9:
            e = s // 10
            size = 100.0 - 10 * e  # this epoch's; 12 dropped, 2 re-admitted: next is -10
            rows.append({"kind": "epoch", "epoch": e, "dataset_size": size - 10,
                         "all_correct": 12.0, "mixed": 35.0, "all_wrong": 20.0,
                         "unseen": size - 67, "readmitted": 2.0})  # fmt: skip
        if s == 19:
            rows.append({"kind": "eval", "step": 20, "label": "during", "accuracy": 0.45,
                         "accuracy/math": 0.55, "accuracy/code": 0.3})  # fmt: skip
    rows.append({"kind": "eval", "step": steps, "label": "after", "accuracy": 0.5,
                 "accuracy/math": 0.6, "accuracy/code": 0.4})  # fmt: skip
    rows.append({"kind": "end", "step": steps, "status": "completed", "rollouts": 1e4})
    text = "\n".join(json.dumps(r) for r in rows) + "\n" + '{"kind": "step", "st'  # torn tail
    (path / "metrics.jsonl").write_text(text)
    (path / "config.yaml").write_text(f"run:\n  name: <{path.name}>\n  seed: {seed}\n")
    return path


def report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_report_command(parser.add_subparsers())
    args = parser.parse_args(["report", *argv])
    return args.func(args)


def test_report_on_two_runs(tmp_path: Path, capsys):
    a = fake_run(tmp_path / "grpo", 0)
    b = fake_run(tmp_path / "srpo", 1, switch=20)
    out = tmp_path / "out"
    assert report([str(a), str(b), "-o", str(out)]) == 0
    assert "index.html" in capsys.readouterr().out
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted([
        "reward.png", "accuracy.png", "eval_accuracy.png", "effective_ratio.png",
        "response_length.png", "clip_fraction.png", "kl.png", "entropy.png",
        "tokens_per_s.png", "time_split.png", "dataset.png",
    ])  # fmt: skip
    for name in pngs:
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400, name
    page = (out / "index.html").read_text()
    for name in pngs:
        assert f"src='{name}'" in page
    assert "&lt;grpo&gt;" in page and "&lt;srpo&gt;" in page  # configs shown, escaped
    assert "skipped 1 unreadable line" in page
    run = load_run(b)
    assert len(run.steps) == 40 and len(run.evals) == 3 and len(run.epochs) == 4


def test_report_default_output_and_missing_metrics(tmp_path: Path, capsys):
    a = fake_run(tmp_path / "only", 0, steps=5)
    assert report([str(a)]) == 0
    assert (a / "report" / "index.html").is_file()
    assert (a / "report" / "reward.png").is_file()
    assert not (a / "report" / "dataset.png").exists()  # no epoch rows: no empty figure
    capsys.readouterr()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report([str(a), str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no metrics.jsonl" in err and str(empty) in err
