"""A logger that writes each step's metrics as one CSV row (columns fixed by the first step)."""

from __future__ import annotations

import csv
from typing import IO

from srpo.api import Event, Logger, PluginContext, PluginOptions, events


class CsvOptions(PluginOptions):
    filename: str = "metrics.csv"


class CsvLogger(Logger):
    Options = CsvOptions

    def __init__(self, options: CsvOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.file: IO[str] | None = None
        self.writer: csv.DictWriter | None = None

    def on_event(self, event: Event) -> None:
        if not isinstance(event, events.StepEnd):
            return
        row = {"step": event.step, **event.metrics}
        if self.writer is None:
            self.file = (self.context.run_dir / self.options.filename).open("w", newline="")
            self.writer = csv.DictWriter(self.file, fieldnames=list(row), extrasaction="ignore")
            self.writer.writeheader()
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
