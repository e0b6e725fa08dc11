"""The wandb and MLflow loggers, read back with the trackers' own formats: wandb in offline
mode (its ``.wandb`` files), MLflow against a file store (``MlflowClient``). A tiny run and
its resume are recorded once each, in one tracker run; events fed directly check the
ordering, epoch reports, statuses and a resume after a failure; a missing package is one
line at validation time."""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from srpo.api import PluginContext
from srpo.api import events as ev
from srpo.cli import main
from tests.support.tiny import tiny_config

# before wandb and mlflow are imported: tests send no usage or error reports
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
pytest.importorskip("wandb")
pytest.importorskip("mlflow")
pytest.importorskip("matplotlib")  # the report plots

from mlflow.tracking import MlflowClient
from srpo_plugins.loggers.mlflow import MlflowLogger
from srpo_plugins.loggers.wandb import WandbLogger
from wandb.proto import wandb_internal_pb2

SMALL = {
    "run.prompts_per_step": 4,
    "algorithm.group_size": 4,
    "eval.max_prompts": 8,
    "sampler.options.max_new_tokens": 16,
}
PLOTS = {"reward", "accuracy", "eval_accuracy"}  # some of the report's figures


@pytest.fixture(autouse=True, scope="module")
def wandb_service():
    """Stop wandb's service process after this module: it outlives its runs otherwise."""
    yield
    import wandb

    wandb.teardown()


@pytest.fixture(autouse=True)
def tracker_env(tmp_path, monkeypatch):
    """No tracker settings from the environment, wandb's own files under tmp_path, and the
    environment restored afterwards (the mlflow logger sets MLFLOW_ALLOW_FILE_STORE)."""
    for var in ("WANDB_MODE", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # remembers it was unset, for teardown
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


# -- reading back what wandb wrote offline ----------------------------------------------------


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a ``.wandb`` file: a 7-byte ``:W&B`` header, then the LevelDB log
    format (32 KiB blocks of chunks, each with a crc32/length/type header) of protobuf
    ``Record`` messages."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def wandb_segments(run_dir: Path) -> list[dict[str, Any]]:
    """One dict per offline wandb run directory (a resume writes a new one), oldest first:
    the run record, config, history rows (``{key: value}``, nested keys joined by ``.``),
    exit code and the images written."""
    out = []
    for seg in sorted((run_dir / "wandb").glob("offline-run-*")):
        (file,) = seg.glob("*.wandb")
        got: dict[str, Any] = {"history": [], "dir": seg, "exit": None}
        for r in wandb_records(file):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                got["run"] = r.run
                got["config"] = {u.key: json.loads(u.value_json) for u in r.run.config.update}
            elif kind == "history":
                got["history"].append(
                    {
                        i.key or ".".join(i.nested_key): json.loads(i.value_json)
                        for i in r.history.item
                    }
                )
            elif kind == "exit":
                got["exit"] = r.exit.exit_code
        got["images"] = {
            p.name.rsplit("_", 2)[0] for p in seg.glob("files/media/images/plots/*.png")
        }
        out.append(got)
    return out


def at_steps(rows: list[dict[str, Any]], key: str) -> dict[int, float]:
    return {r["_step"]: r[key] for r in rows if key in r}


# -- reading back what MLflow wrote -----------------------------------------------------------


def mlflow_run(run_dir: Path, experiment: str) -> tuple[MlflowClient, Any]:
    client = MlflowClient((run_dir / "mlruns").as_uri())
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return client, run


def history(client: MlflowClient, run: Any, key: str) -> dict[int, float]:
    got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
    assert len(got) == len({s for s, _ in got}), f"{key} logged twice at a step: {got}"
    return dict(got)


# -- a tiny run and its resume ----------------------------------------------------------------


def read_jsonl(run_dir: Path, kind: str, key: str) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if r["kind"] == kind}


def test_a_run_and_its_resume_are_recorded_once_in_one_tracker_run(tmp_path, capsys):
    cfg = tiny_config(tmp_path, **SMALL, **{"run.max_steps": 2, "checkpoint.every": 1})
    cfg["loggers"] = [
        {"name": "jsonl"},
        {"name": "wandb", "options": {"tags": ["tiny"]}},  # default mode: offline
        {"name": "mlflow", "options": {"experiment": "tiny"}},
    ]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    run_dir = tmp_path / "run"
    loss, evals = read_jsonl(run_dir, "step", "loss"), read_jsonl(run_dir, "eval", "accuracy")
    assert sorted(loss) == [0, 1] and sorted(evals) == [0, 2]

    (wb,) = wandb_segments(run_dir)
    assert wb["run"].display_name == cfg["run"]["name"] and list(wb["run"].tags) == ["tiny"]
    assert wb["run"].project == "srpo"
    assert wb["config"]["algorithm"]["group_size"] == 4
    assert at_steps(wb["history"], "loss") == pytest.approx(loss)
    assert at_steps(wb["history"], "eval/accuracy") == pytest.approx(evals)
    assert wb["history"][-1]["plots/reward._type"] == "image-file"
    assert wb["images"] >= PLOTS and wb["exit"] == 0

    client, ml = mlflow_run(run_dir, "tiny")
    assert ml.info.status == "FINISHED" and ml.info.run_name == cfg["run"]["name"]
    assert ml.data.params["algorithm.group_size"] == "4"
    assert ml.data.params["loggers.2.options.experiment"] == "tiny"
    assert history(client, ml, "loss") == pytest.approx(loss)
    assert history(client, ml, "eval.accuracy") == pytest.approx(evals)
    assert history(client, ml, "accuracy.math")  # per-domain metrics next to their mean
    files = {Path(a.path).stem for a in client.list_artifacts(ml.info.run_id, "plots")}
    assert files >= PLOTS

    # resume from the checkpoint of step 1, one step further: step 1 is done again but not
    # logged again; step 2 and the evaluation after it are new. (metrics.jsonl drops the
    # first run's last evaluation on resume; the trackers keep it.)
    first_evals = evals
    older = run_dir / "checkpoints" / "step-000001"
    args = ["run", str(path), "--resume", str(older), "--set", "run.max_steps=3"]
    assert main([*args, "--allow-config-change", "run.max_steps"]) == 0, capsys.readouterr().err
    assert "params keep their first value" in capsys.readouterr().err  # run.max_steps: 2 → 3
    loss, evals = read_jsonl(run_dir, "step", "loss"), read_jsonl(run_dir, "eval", "accuracy")

    first, again = wandb_segments(run_dir)
    assert again["run"].run_id == first["run"].run_id and again["run"].resume
    assert at_steps(again["history"], "loss") == pytest.approx({2: loss[2]})
    assert at_steps(again["history"], "eval/accuracy") == pytest.approx({3: evals[3]})
    assert again["exit"] == 0

    client, ml = mlflow_run(run_dir, "tiny")  # still one MLflow run
    assert ml.info.status == "FINISHED"
    assert history(client, ml, "loss") == pytest.approx(loss)
    assert history(client, ml, "eval.accuracy") == pytest.approx({**first_evals, **evals})


# -- events fed directly ----------------------------------------------------------------------


def feed(loggers: list[Any], events: list[ev.Event]) -> None:
    for e in events:
        for lg in loggers:
            lg.on_event(e)
    for lg in loggers:
        lg.close()


def make(run_dir: Path, plots: bool) -> list[Any]:
    """Both loggers writing under ``trackers/``, relative to the run file's directory."""
    ctx = PluginContext(run_dir=run_dir, seed=0, base_dir=run_dir.parent)
    return [
        WandbLogger(WandbLogger.Options(plots=plots, dir="trackers"), ctx),
        MlflowLogger(MlflowLogger.Options(plots=plots, tracking_uri="trackers/mlruns"), ctx),
    ]


def test_events_become_rows_in_step_order_and_a_failed_run_resumes(tmp_path):
    """An evaluation arrives before the metrics of the step before it, an epoch report after
    its last step; a failed run keeps its waiting evaluation for the resume; no jsonl logger,
    so the plots come from the rows the logger saw."""
    run_dir, trackers = tmp_path / "run", tmp_path / "trackers"
    run_dir.mkdir()
    config = {"run": {"name": "fed"}, "algorithm": {"group_size": 2}}

    def step(i: int) -> ev.StepEnd:
        return ev.StepEnd(i, 0, {"reward/mean": i / 10, "loss": float(i), "bad": math.nan})

    def evaluation(i: int, label: str = "during") -> ev.Evaluation:
        return ev.Evaluation(i, label, {"accuracy": i / 4})

    first = [
        ev.RunStart(run_dir, config, total_steps=4),
        evaluation(0, "before"),
        step(0),
        evaluation(1),
        step(1),
        ev.EpochEnd(0, {"dataset_size": 5.0}),
        evaluation(2),  # its step's metrics never come: the run fails
        ev.RunEnd(2, "failed", {"steps": 2.0}, "RuntimeError: boom"),
    ]
    feed(make(run_dir, plots=True), first)
    (wb,) = wandb_segments(trackers)
    keys = [sorted(k for k in r if k[0] != "_" and "plots/" not in k) for r in wb["history"]]
    assert keys == [
        ["eval/accuracy", "loss", "reward/mean"],
        ["epoch", "epoch/dataset_size", "eval/accuracy", "loss", "reward/mean"],
    ]
    assert wb["exit"] == 1 and wb["images"] == {"reward", "eval_accuracy", "dataset"}
    client, ml = mlflow_run(trackers, "srpo")
    assert ml.info.status == "FAILED" and ml.data.tags["srpo.error"] == "RuntimeError: boom"
    assert ml.info.run_name == "fed" and ml.data.params["algorithm.group_size"] == "2"
    assert history(client, ml, "eval.accuracy") == {0: 0.0, 1: 0.25}
    assert history(client, ml, "epoch.dataset_size") == {0: 5.0}
    assert "bad" not in ml.data.metrics and ml.data.metrics["run.steps"] == 2.0
    assert {Path(a.path).stem for a in client.list_artifacts(ml.info.run_id, "plots")}

    # resumed from the checkpoint of step 2, then stopped by a signal
    resumed = [ev.RunStart(run_dir, config, 4, start_step=2), step(2), ev.RunEnd(3, "interrupted")]
    feed(make(run_dir, plots=False), resumed)
    _, wb = wandb_segments(trackers)
    assert at_steps(wb["history"], "eval/accuracy") == {2: 0.5} and wb["exit"] == 1
    client, ml = mlflow_run(trackers, "srpo")
    assert ml.info.status == "KILLED"
    assert history(client, ml, "eval.accuracy") == {0: 0.0, 1: 0.25, 2: 0.5}
    assert history(client, ml, "loss") == {0: 0.0, 1: 1.0, 2: 2.0}


# -- a missing package ------------------------------------------------------------------------


@pytest.mark.parametrize("package", ["wandb", "mlflow"])
def test_a_missing_tracker_is_one_line_at_validation(package, write_config, monkeypatch, capsys):
    path = write_config(loggers=[{"name": "console"}, {"name": package}])
    monkeypatch.setitem(sys.modules, package, None)  # what `import` sees when not installed
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"srpo: error: logger {package!r} needs the {package} package, which is not "
        f"installed: pip install 'srpo[{package}]'"
    ]
