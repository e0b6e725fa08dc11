"""The tensorboard logger writes step, eval/ and epoch/ scalars that TensorBoard reads back."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from srpo_plugins.loggers.tensorboard import TensorboardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from srpo import events as ev
from srpo.api import PluginContext


def scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(path))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_writes_scalars_read_back_by_tensorboard(tmp_path: Path):
    run = tmp_path / "run"  # does not exist yet: the kernel creates it after the plugins
    lg = TensorboardLogger(TensorboardLogger.Options(), PluginContext(run_dir=run, seed=0))
    lg.on_event(ev.RunStart(run, {"run": {"seed": 0}}, 3))
    lg.on_event(ev.Evaluation(0, "before", {"accuracy": 0.25, "accuracy/math": 0.5}))
    for step in range(3):
        metrics = {"reward/mean": 0.1 * step, "loss": 1.0 - step, "nan": float("nan")}
        lg.on_event(ev.StepEnd(step, 0, metrics))
    lg.on_event(ev.EpochEnd(0, {"dataset_size": 80.0, "all_correct": 20.0}))
    lg.on_event(ev.Evaluation(3, "after", {"accuracy": 0.75}))
    lg.on_event(ev.RunEnd(3, "completed", {}))
    lg.close()
    got = scalars(run / "tensorboard")
    assert [s for s, _ in got["reward/mean"]] == [0, 1, 2]
    assert [v for _, v in got["reward/mean"]] == pytest.approx([0.0, 0.1, 0.2])
    assert got["loss"] == [(0, 1.0), (1, 0.0), (2, -1.0)]
    assert got["eval/accuracy"] == [(0, 0.25), (3, 0.75)]
    assert got["eval/accuracy/math"] == [(0, 0.5)]
    assert got["epoch/dataset_size"] == [(0, 80.0)]
    assert got["epoch/all_correct"] == [(0, 20.0)]
    assert "nan" not in got
