"""Console logger: a rich progress bar while training, evaluations as they happen, and a
summary table at the end."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from pydantic import Field
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from srpo.api import Logger, PluginContext, PluginOptions
from srpo.api import events as ev


class ConsoleOptions(PluginOptions):
    every: int = Field(1, ge=1, description="refresh the status line every N steps")
    print_steps: bool = Field(False, description="also print one line per step")


def _sampled(metrics: Mapping[str, float]) -> str:
    """`` · avg@8 41.2% ± 3.1 · pass@8 70.0% · maj@8 45.0%`` when the evaluation sampled
    (eval.n_samples), else nothing: the overall keys only, the largest k of each."""
    best: dict[str, int] = {}
    for key in metrics:
        kind, _, k = key.partition("@")
        if kind in ("avg", "pass", "maj") and k.isdigit():
            best[kind] = max(best.get(kind, 0), int(k))
    parts = []
    for kind in ("avg", "pass", "maj"):
        if kind in best:
            key = f"{kind}@{best[kind]}"
            se = metrics.get(f"{key}_stderr")
            err = (
                f" ± {100 * se:.1f}" if kind == "avg" and isinstance(se, float) and se == se else ""
            )
            parts.append(f"{key} {metrics[key]:.1%}{err}")
    return "".join(f" · {p}" for p in parts)


class ConsoleLogger(Logger):
    Options = ConsoleOptions

    def __init__(self, options: ConsoleOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.console = Console(file=sys.stdout, highlight=False)
        self.progress: Progress | None = None
        self.task = None
        self.evals: dict[str, dict[str, float]] = {}

    def _start(self, event: ev.RunStart) -> None:
        self.console.print(f"[bold]srpo[/bold] run → {event.run_dir}")
        self.progress = Progress(
            TextColumn("[bold]step"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=event.total_steps, completed=event.start_step, status=""
        )

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStart):
            self._start(event)
        elif isinstance(event, ev.StepEnd) and self.progress is not None:
            m = event.metrics
            status = (
                f"ep {event.epoch} · reward {m.get('reward/mean', 0):.3f} · "
                f"acc {m.get('accuracy', 0):.1%} · eff {m.get('effective_ratio', 0):.0%} · "
                f"{m.get('tokens_per_s', 0):,.0f} tok/s"
            )
            self.progress.update(self.task, advance=1, status=status)
            if self.options.print_steps:
                self.progress.console.print(f"step {event.step}: {status}")
        elif isinstance(event, ev.Evaluation):
            self.evals.setdefault(event.label, {}).update(event.metrics)
            accs = " ".join(
                f"{k.split('/', 1)[1]} {v:.1%}"
                for k, v in event.metrics.items()
                if k.startswith("accuracy/")
            )
            line = escape(
                f"eval ({event.label}, step {event.step}): held-out accuracy "
                f"{event.metrics.get('accuracy', 0):.1%}  [{accs}]{_sampled(event.metrics)}"
            )
            (self.progress.console if self.progress else self.console).print(line)
        elif isinstance(event, ev.EpochEnd) and event.metrics:
            parts = escape(" ".join(f"{k}={v:g}" for k, v in event.metrics.items()))
            (self.progress.console if self.progress else self.console).print(
                f"epoch {event.epoch} done: {parts}"
            )
        elif isinstance(event, ev.RunEnd):
            self._finish(event)

    def _finish(self, event: ev.RunEnd) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        table = Table(title=f"run {event.status} after {event.step} steps", show_edge=False)
        table.add_column("held-out")
        table.add_column("before", justify="right")
        table.add_column("after", justify="right")
        before, after = self.evals.get("before", {}), self.evals.get("after", {})
        for key in sorted(set(before) | set(after)):
            if key.startswith(("accuracy", "avg@", "pass@", "maj@")) and "_stderr" not in key:
                b, a = before.get(key), after.get(key)
                table.add_row(
                    key, "-" if b is None else f"{b:.1%}", "-" if a is None else f"{a:.1%}"
                )
        if before or after:
            self.console.print(table)
            if "accuracy" in before and "accuracy" in after:
                gain = after["accuracy"] - before["accuracy"]
                self.console.print(
                    f"held-out accuracy {before['accuracy']:.1%} → "
                    f"{after['accuracy']:.1%} ({gain * 100:+.1f} points)"
                )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
