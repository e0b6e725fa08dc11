"""Metrics as JSON lines in the run directory: one object per step, evaluation and epoch."""

from __future__ import annotations

import json
import math
from typing import IO, Any

from pydantic import Field

from srpo.api import Logger, PluginContext, PluginOptions
from srpo.api import events as ev


class JsonlOptions(PluginOptions):
    filename: str = Field("metrics.jsonl", description="file name inside the run directory")


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN/inf: write them as null rather than produce an unreadable file."""
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in metrics.items()
    }


class JsonlLogger(Logger):
    Options = JsonlOptions

    def __init__(self, options: JsonlOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.file: IO[str] | None = None

    def _write(self, record: dict[str, Any]) -> None:
        if self.file is None:
            path = self.context.run_dir / self.options.filename
            self.file = path.open("a", encoding="utf-8")
        self.file.write(json.dumps(_clean(record)) + "\n")
        self.file.flush()

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.StepEnd):
            self._write({"kind": "step", "step": event.step, "epoch": event.epoch, **event.metrics})
        elif isinstance(event, ev.Evaluation):
            self._write({"kind": "eval", "step": event.step, "label": event.label, **event.metrics})
        elif isinstance(event, ev.EpochEnd):
            self._write({"kind": "epoch", "epoch": event.epoch, **event.metrics})
        elif isinstance(event, ev.RunEnd):
            row = {"kind": "end", "step": event.step, "status": event.status, **event.summary}
            if event.error:
                row["error"] = event.error
            self._write(row)

    def state_dict(self) -> dict[str, Any]:
        """The file's length: a resume cuts what was written after the checkpoint, so the
        file never holds a step twice."""
        path = self.context.run_dir / self.options.filename
        if self.file is not None:
            self.file.flush()
        return {"size": path.stat().st_size if path.exists() else 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        path = self.context.run_dir / self.options.filename
        size = state.get("size")
        if size is not None and path.exists() and path.stat().st_size > size:
            with path.open("r+b") as f:
                f.truncate(size)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
