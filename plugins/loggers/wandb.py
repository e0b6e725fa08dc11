"""Weights & Biases: the run file as the run's config, step metrics at their step, ``eval/*``
at the step they ran at, ``epoch/*`` against ``epoch``, and the ``srpo report`` plots as
images at the end (``plots/*``); the run's outcome in the summary (``run/*``).

``mode`` defaults to ``WANDB_MODE``, else ``offline``: srpo uploads nothing to a third party
unless asked (``mode: online``), never waits on a login prompt, and runs without network;
``wandb sync RUN_DIR/wandb/offline-run-*`` uploads an offline run later. A resumed srpo run
continues the same wandb run (its id is kept in ``RUN_DIR/wandb-resume.json``) and does not
log a step twice.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from srpo.api import events as ev

from ._tracker import Row, TrackerLogger, TrackerOptions, run_name, setting


class WandbOptions(TrackerOptions):
    project: str | None = Field(None, description="W&B project (default: WANDB_PROJECT, else srpo)")
    entity: str | None = Field(None, description="W&B team or user (default: yours)")
    name: str | None = Field(None, description="run name (default: run.name of the run file)")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="default: WANDB_MODE, else offline (upload later with `wandb sync`)"
    )
    tags: list[str] = Field(default_factory=list, description="W&B run tags")
    group: str | None = Field(None, description="W&B run group, e.g. one per sweep")
    dir: Path | None = Field(
        None, description="where wandb writes its files (default: the run directory)"
    )


class WandbLogger(TrackerLogger):
    Options = WandbOptions
    tracker = "wandb"
    options: WandbOptions
    run: Any = None  # the wandb run, from start() to end()

    def start(self, event: ev.RunStart, resume_id: str | None) -> str:
        import wandb

        o = self.options
        where = self.run_file_dir / o.dir if o.dir else self.context.run_dir
        where.mkdir(parents=True, exist_ok=True)
        config = dict(event.config)
        self.run = wandb.init(
            project=setting(o.project, "WANDB_PROJECT", "srpo"),
            entity=o.entity,
            name=run_name(config, o.name),
            group=o.group,
            tags=o.tags or None,
            mode=o.mode or (None if os.environ.get("WANDB_MODE") else "offline"),
            dir=str(where),
            id=resume_id,
            resume="allow" if resume_id else None,
            config=None if resume_id else config,
            reinit="create_new",  # never hand back a run the host program has open
        )
        if resume_id:  # --allow-config-change may have changed some keys
            self.run.config.update(config, allow_val_change=True)
        self.run.define_metric("epoch")
        self.run.define_metric("epoch/*", step_metric="epoch")
        return str(self.run.id)

    def log_row(self, row: Row) -> None:
        data: dict[str, Any] = row.named("/")
        if row.kind == "epoch":
            data["epoch"] = row.epoch
        self.run.log(data, step=self.at)  # never an earlier step: wandb would drop the data

    def log_plots(self, paths: list[Path]) -> None:
        import wandb

        self.run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in paths}, step=self.at)

    def end(self, status: str, summary: Mapping[str, float], error: str) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        run.summary.update({f"run/{k}": v for k, v in summary.items()})
        run.summary["run/status"] = status
        if error:
            run.summary["run/error"] = error
        if status == "interrupted":  # stopped by a signal: --resume continues it
            run.mark_preempting()
        run.finish(exit_code=0 if status == "completed" else 1)
