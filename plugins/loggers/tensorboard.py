"""Scalars for TensorBoard under ``run_dir/tensorboard``: step metrics, ``eval/*``, ``epoch/*``.

Step metrics are written at the training step; evaluations (before, during, after) at the
step they ran at, as one ``eval/<metric>`` curve each; epoch reports at the epoch index. The
run file goes in as text. On resume the writer purges events at or after the resumed step,
so curves never double back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from srpo.api import Logger, PluginContext, PluginOptions
from srpo.api import events as ev


class TensorboardOptions(PluginOptions):
    subdir: str = Field("tensorboard", description="directory inside the run directory")
    flush_secs: int = Field(30, ge=1, description="how often the writer flushes to disk")


class TensorboardLogger(Logger):
    Options = TensorboardOptions

    def __init__(self, options: TensorboardOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.writer: Any = None
        self._purge_step: int | None = None

    def _w(self) -> Any:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            path = self.context.run_dir / self.options.subdir
            path.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(
                log_dir=str(path), flush_secs=self.options.flush_secs, purge_step=self._purge_step
            )
        return self.writer

    def _scalars(self, prefix: str, metrics: Mapping[str, Any], step: int) -> None:
        w = self._w()
        for k, v in metrics.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if math.isfinite(float(v)):
                w.add_scalar(prefix + k, float(v), step)

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStart):
            if event.start_step > 0:
                self._purge_step = event.start_step
            text = json.dumps(dict(event.config), indent=2, default=str) if event.config else ""
            if text and event.start_step == 0:
                self._w().add_text("config", "```\n" + text + "\n```", 0)
        elif isinstance(event, ev.StepEnd):
            self._scalars("", event.metrics, event.step)
        elif isinstance(event, ev.Evaluation):
            self._scalars("eval/", event.metrics, event.step)
        elif isinstance(event, ev.EpochEnd):
            self._scalars("epoch/", event.metrics, event.epoch)
        elif isinstance(event, ev.RunEnd) and self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
