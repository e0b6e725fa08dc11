"""MLflow: the run file as params (flattened), step metrics at their step, ``eval.*`` at the
step they ran at, ``epoch.*`` at the epoch, the run's summary as ``run.*``, the ``srpo
report`` plots as artifacts under ``plots/``, and a final status: FINISHED, FAILED (the
reason in the ``srpo.error`` tag) or KILLED (stopped by a signal; ``--resume`` continues the
same MLflow run). Names use ``.`` where the other loggers use ``/`` (``eval.accuracy.math``):
see ``mlflow_key``.

Without ``tracking_uri`` (and ``MLFLOW_TRACKING_URI``) the run goes to a file store in
``RUN_DIR/mlruns``: no server, nothing beyond mlflow-skinny. MLflow 3 keeps its file store
in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which this logger sets (unless set)
for file stores; view one with
``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri RUN_DIR/mlruns``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import Field

from srpo.api import events as ev
from srpo.api import warn

from ._tracker import Row, TrackerLogger, TrackerOptions, run_name, setting

STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# MLflow's limits (mlflow.utils.validation): it refuses longer names and values, srpo cuts
MAX_KEY, MAX_PARAM, MAX_TAG = 250, 6000, 8000
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000


class MlflowOptions(TrackerOptions):
    tracking_uri: str | None = Field(
        None,
        description="a server URL, sqlite:///FILE or a directory (a file store); default: "
        "MLFLOW_TRACKING_URI, else RUN_DIR/mlruns",
    )
    experiment: str | None = Field(
        None, description="experiment name (default: MLFLOW_EXPERIMENT_NAME, else srpo)"
    )
    run_name: str | None = Field(None, description="default: run.name of the run file")
    tags: dict[str, str] = Field(default_factory=dict, description="MLflow run tags")


def mlflow_key(name: str) -> str:
    """A name MLflow accepts, with ``.`` for ``/``: its file store keeps a metric in a file
    named after it, where ``accuracy`` and ``accuracy/math`` (or ``epoch`` and
    ``epoch/dataset_size``) cannot both exist."""
    name = re.sub(r"[^\w.\- ]", "_", name.replace("/", "."))
    return (name if name.strip(".") else "_")[:MAX_KEY]


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """The run file as ``section.key`` params; lists of sections by index
    (``loggers.0.name``), lists of values as one JSON value."""
    if isinstance(tree, Mapping) and tree:
        items: Any = tree.items()
    elif isinstance(tree, list) and any(isinstance(x, Mapping) for x in tree):
        items = enumerate(tree)
    else:
        value = json.dumps(tree) if isinstance(tree, (list, Mapping)) else str(tree)
        return {mlflow_key(prefix): value[:MAX_PARAM]} if prefix else {}
    out: dict[str, str] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


class MlflowLogger(TrackerLogger):
    Options = MlflowOptions
    tracker = "mlflow"
    options: MlflowOptions
    client: Any = None  # the MlflowClient, from start()
    run_id = ""  # the open MLflow run, until end()

    def start(self, event: ev.RunStart, resume_id: str | None) -> str:
        from mlflow.tracking import MlflowClient

        uri = self._tracking_uri()
        if urlparse(uri).scheme == "file":
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        params = flatten(dict(event.config))
        if resume_id and self._alive(resume_id):
            self.run_id = resume_id
            self.client.update_run(resume_id, status="RUNNING")
            self._log_params(params, self.client.get_run(resume_id).data.params)
            return resume_id
        if resume_id:
            warn(f"mlflow: run {resume_id} is not active in {uri}; this resume starts a new one")
        tags = {"srpo.run_dir": str(self.context.run_dir.resolve()), **self.options.tags}
        run = self.client.create_run(
            self._experiment_id(),
            run_name=run_name(event.config, self.options.run_name),
            tags=tags,
        )
        self.run_id = run.info.run_id
        self._log_params(params, {})
        return self.run_id

    def _tracking_uri(self) -> str:
        """The option, else MLFLOW_TRACKING_URI, else RUN_DIR/mlruns. A plain path is a file
        store; a relative one is taken from the run file's directory (from the working
        directory when it comes from the environment)."""
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if self.options.tracking_uri:
            uri, base = self.options.tracking_uri, self.run_file_dir
        elif env:
            uri, base = env, Path.cwd()
        else:
            return (self.context.run_dir / "mlruns").resolve().as_uri()
        return uri if urlparse(uri).scheme else (base / uri).resolve().as_uri()

    def _alive(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return False

    def _experiment_id(self) -> str:
        name = setting(self.options.experiment, "MLFLOW_EXPERIMENT_NAME", "srpo")
        exp = self.client.get_experiment_by_name(name)
        return exp.experiment_id if exp is not None else self.client.create_experiment(name)

    def _log_params(self, params: dict[str, str], logged: Mapping[str, str]) -> None:
        """Params cannot change once logged: on resume, log the new keys and name the
        changed ones (kept as first logged)."""
        from mlflow.entities import Param

        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            warn(f"mlflow: params keep their first value (MLflow cannot change them): {changed}")
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + PARAMS_PER_BATCH])

    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(k), v, now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + METRICS_PER_BATCH])

    def log_row(self, row: Row) -> None:
        self._log_metrics(row.named("."), row.epoch if row.kind == "epoch" else row.step)

    def log_plots(self, paths: list[Path]) -> None:
        for p in paths:
            self.client.log_artifact(self.run_id, str(p), "plots")

    def end(self, status: str, summary: Mapping[str, float], error: str) -> None:
        if not self.run_id:
            return
        self._log_metrics({f"run.{k}": v for k, v in summary.items()}, self.at)
        if error:
            self.client.set_tag(self.run_id, "srpo.error", error[:MAX_TAG])
        self.client.set_terminated(self.run_id, STATUS.get(status, "FAILED"))
        self.run_id = ""
