"""The offline calibration replay of step-level selection's posterior, on real history stores
written with known pass rates: calibrated when rates stay put, overconfident when training
moves them (the measured failure), and a half-life helps there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks import selection_calibration as sc
from srpo.history.writer import HistoryStore

G = 8


def write_run(root: Path, rates: np.ndarray, steps: int, per_step: int, gain: float) -> Path:
    """A uniformly sampled run: each step draws ``per_step`` prompts, G rollouts each at the
    prompt's current pass rate; a drawn prompt's rate then rises by ``gain`` (training)."""
    rng = np.random.default_rng(0)
    rates = rates.copy()
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump({"algorithm": {"group_size": G}}))
    with HistoryStore(root / "history", durable=False) as store:
        for step in range(steps):
            drawn = rng.choice(rates.size, size=per_step, replace=False)
            correct = rng.random((per_step, G)) < rates[drawn, None]
            n = per_step * G
            store.append(
                prompt_id=np.repeat(drawn, G).astype(np.int64) + 1000,
                epoch=np.zeros(n, np.uint32),
                step=np.full(n, step, np.uint32),
                sample=np.tile(np.arange(G, dtype=np.uint16), per_step),
                domain=np.repeat(drawn % 2, G).astype(np.uint8),
                reward=correct.reshape(-1).astype(np.float32),
                correct=correct.reshape(-1).astype(np.uint8),
                length=np.full(n, 10, np.uint32),
            )
            store.commit(step)
            rates[drawn] = np.minimum(1.0, rates[drawn] + gain)
    return root


def table(runs: list[Path], capsys: pytest.CaptureFixture[str]) -> dict[str, list[float]]:
    assert sc.main([*map(str, runs), "--half-life", "2", "--from-step", "10"]) == 0
    rows = [
        r for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "---" not in r
    ]
    return {r.split("|")[1].strip(): [float(x) for x in r.split("|")[2:-1]] for r in rows[1:]}


def test_calibrated_when_pass_rates_stay_put_and_overconfident_when_training_moves_them(
    tmp_path, capsys
):
    rates = np.random.default_rng(1).beta(0.4, 0.4, size=64)
    still = write_run(tmp_path / "still", rates, steps=40, per_step=16, gain=0.0)
    moving = write_run(tmp_path / "moving", rates, steps=40, per_step=16, gain=0.25)
    s, m = table([still], capsys), table([moving], capsys)
    # columns: groups, base, mean predicted, Brier, top-20% realized, bottom-50% realized
    groups, base, pred, _, top, low = s["empirical"]
    assert groups > 300 and abs(pred - base) < 0.08  # calibrated
    assert top > base + 0.2 and low < base  # and it ranks: what selection relies on
    _, base, pred, brier, _, _ = m["empirical"]
    assert pred > base + 0.15  # it believes mixed prompts stay mixed; training solved them
    assert m["empirical, half_life 2"][3] < brier  # forgetting old outcomes predicts better


def test_a_directory_without_history_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="not a run directory with history"):
        sc.main([str(tmp_path)])
