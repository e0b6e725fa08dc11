"""What the wandb and mlflow loggers share: the event stream turned into rows a tracker can
take, the resume bookkeeping, the one-line check that the tracker is installed, and how a
tracker run's name, project and paths default (option, else environment, else srpo's).

Trackers want a run's rows once each and (wandb) in increasing step order, while the kernel
emits a mid-run evaluation *before* the previous step's metrics, and a resumed run redoes the
steps after its checkpoint that the crashed run may already have logged. So evaluations wait
until their step's metrics arrive, and a small file in the run directory keeps the tracker's
run id, how far each kind of row was logged and the evaluations still waiting: a resume
continues the same tracker run, skips what it already holds and logs what was waiting (a
resume from the newest checkpoint does not redo the evaluation that ran just before it). Not
the checkpoint: rows logged after the last checkpoint are the ones a resume would repeat.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from srpo.api import Logger, PluginContext, PluginOptions, SrpoError
from srpo.api import events as ev

from ._plots import render_plots

KINDS = ("step", "eval", "epoch")


def require(tracker: str) -> None:
    """One line naming the extra to install when the tracker's package (and extra, both named
    like the tracker) is missing, at validation time rather than after the model loaded.
    Only looks, does not import."""
    if importlib.util.find_spec(tracker) is None:
        raise SrpoError(
            f"logger {tracker!r} needs the {tracker} package, which is not installed: "
            f"pip install 'srpo[{tracker}]'"
        )


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics``: trackers reject or misplot NaN, inf and non-numbers."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def run_name(config: Mapping[str, Any], chosen: str | None) -> str:
    """The tracker run's name: the logger's option when set, else ``run.name`` of the run
    file, so runs read the same in the tracker as in the run directory."""
    if chosen:
        return chosen
    run = config.get("run")
    return str(run.get("name") or "srpo-run") if isinstance(run, Mapping) else "srpo-run"


def setting(option: str | None, env: str, default: str) -> str:
    """A tracker setting the way each logger resolves it: the option, else the environment
    variable the tracker's own tools read (so an existing setup carries over), else srpo's
    default."""
    return option or os.environ.get(env) or default


class TrackerOptions(PluginOptions):
    plots: bool = Field(True, description="upload the `srpo report` plots at the run's end")


@dataclass(frozen=True)
class Row:
    """One thing to log: a step's metrics, an evaluation, or an epoch report. ``step`` is
    the training step it belongs to (for an epoch report: the epoch's last step)."""

    kind: str
    step: int
    metrics: dict[str, float]
    epoch: int = 0

    def named(self, sep: str) -> dict[str, float]:
        """The metrics under the names a tracker shows: ``eval<sep>`` or ``epoch<sep>`` in
        front for an evaluation or an epoch report, a step's as they are. ``sep`` is the
        tracker's separator (``/``; MLflow's file store needs ``.``)."""
        prefix = "" if self.kind == "step" else self.kind + sep
        return {prefix + k: v for k, v in self.metrics.items()}


@dataclass
class TrackerState:
    """The tracker run id, per kind the last step (epoch for epoch reports) logged, and the
    evaluations waiting for their step."""

    path: Path
    run_id: str | None = None
    logged: dict[str, int] = field(default_factory=dict)
    pending: list[Row] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> TrackerState:
        """The saved state; a fresh one when the file is missing or unreadable (then the
        resume starts a new tracker run)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            logged = {k: int(v) for k, v in data["logged"].items() if k in KINDS}
            pending = [Row(**r) for r in data["pending"]]
            return cls(path, data["run_id"] or None, logged, pending)
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return cls(path)

    def save(self) -> None:
        """Write-then-rename, so a kill mid-write leaves the previous state, never half."""
        data = {
            "run_id": self.run_id,
            "logged": self.logged,
            "pending": [asdict(r) for r in self.pending],
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, self.path)

    def holds(self, row: Row) -> bool:
        at = row.epoch if row.kind == "epoch" else row.step
        return at <= self.logged.get(row.kind, -1)

    def mark(self, row: Row) -> None:
        self.logged[row.kind] = row.epoch if row.kind == "epoch" else row.step


class TrackerLogger(Logger):
    """Base of loggers that mirror a run into an experiment tracker. Subclasses implement
    the four hooks below; rows reach ``log_row`` once each, in step order."""

    #: names the resume file (``RUN_DIR/<tracker>-resume.json``) and messages
    tracker: ClassVar[str] = ""

    options: TrackerOptions

    @classmethod
    def preflight(cls, options: Any, base_dir: Path) -> None:
        require(cls.tracker)

    def __init__(self, options: TrackerOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.state: TrackerState | None = None
        self.last_step = -1  # of the latest StepEnd (an epoch report belongs to it)
        self.at = 0  # the latest step a row was logged at: where plots and the summary go
        self.rows: list[dict[str, Any]] = []  # as the jsonl logger writes them (for plots)
        self.ended = False

    # -- hooks ------------------------------------------------------------------------------

    @abstractmethod
    def start(self, event: ev.RunStart, resume_id: str | None) -> str:
        """Open the tracker run (continue ``resume_id`` when given); returns its id."""

    @abstractmethod
    def log_row(self, row: Row) -> None:
        """Log one row (numbers only, not yet prefixed: ``Row.named``); ``self.at`` already
        counts its step."""

    @abstractmethod
    def log_plots(self, paths: list[Path]) -> None:
        """Upload the report's PNG files."""

    @abstractmethod
    def end(self, status: str, summary: Mapping[str, float], error: str) -> None:
        """Close the tracker run with ``status`` (completed, failed, interrupted)."""

    # -- events -----------------------------------------------------------------------------

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStart):
            self._start(event)
        elif self.state is None or self.ended:
            return
        elif isinstance(event, ev.StepEnd):
            self._keep({"kind": "step", "step": event.step, "epoch": event.epoch}, event.metrics)
            self.last_step = event.step
            self._flush(event.step)
            self._write(Row("step", event.step, numbers(event.metrics), event.epoch))
        elif isinstance(event, ev.Evaluation):
            self._keep({"kind": "eval", "step": event.step, "label": event.label}, event.metrics)
            self.state.pending.append(Row("eval", event.step, numbers(event.metrics)))
            self.state.save()
        elif isinstance(event, ev.EpochEnd):
            self._keep({"kind": "epoch", "epoch": event.epoch}, event.metrics)
            self._flush(self.last_step)
            step = max(self.last_step, 0)
            self._write(Row("epoch", step, numbers(event.metrics), event.epoch))
        elif isinstance(event, ev.RunEnd):
            # an unfinished run keeps waiting evaluations for its resume
            self._flush(None if event.status == "completed" else self.last_step)
            if self.options.plots:
                self._plots()
            self.ended = True
            self.end(event.status, numbers(event.summary), event.error)

    @property
    def run_file_dir(self) -> Path:
        """What a relative path in the options is taken from: the run file's directory (the
        working directory for a run built without one)."""
        return self.context.base_dir or Path.cwd()

    def _start(self, event: ev.RunStart) -> None:
        path = self.context.run_dir / f"{self.tracker}-resume.json"
        resumed = event.start_step > 0
        self.state = TrackerState.load(path) if resumed else TrackerState(path)
        self.last_step = event.start_step - 1
        self.state.run_id = self.start(event, self.state.run_id if resumed else None)
        self.state.save()

    def _keep(self, row: dict[str, Any], metrics: Mapping[str, Any]) -> None:
        """Keep a row for the plots, in case there is no metrics.jsonl to draw them from."""
        if self.options.plots:
            self.rows.append({**row, **metrics})

    def _flush(self, upto: int | None) -> None:
        """Log the waiting evaluations at or before step ``upto`` (all: None)."""
        assert self.state is not None
        waiting = self.state.pending
        ready = sorted(
            (r for r in waiting if upto is None or r.step <= upto), key=attrgetter("step")
        )
        if not ready:
            return
        self.state.pending = [r for r in waiting if upto is not None and r.step > upto]
        for row in ready:  # a repeat (the resume redid it) is skipped by _write
            self._write(row)
        self.state.save()

    def _write(self, row: Row) -> None:
        assert self.state is not None
        if self.state.holds(row):  # logged before a crash; the resume redid it
            return
        self.at = max(self.at, row.step)
        self.log_row(row)
        self.state.mark(row)
        self.state.save()

    def _plots(self) -> None:
        with tempfile.TemporaryDirectory(prefix=f"srpo-{self.tracker}-") as tmp:
            paths = render_plots(self.context.run_dir, self.rows, Path(tmp), self.tracker)
            if paths:
                self.log_plots(paths)

    def close(self) -> None:
        """A run that ended without ``RunEnd`` (the kernel itself failed) ends as failed."""
        if self.state is not None and not self.ended:
            self.ended = True
            self.end("failed", {}, "the run ended without a RunEnd event")
