"""A run directory as the report reads it: ``load_run`` turns ``metrics.jsonl`` into a
``Run``. Its own module so the figures and the page (``plots``, ``html``) can take ``Run``
without importing the package that imports them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srpo.errors import SrpoError


class ReportError(SrpoError):
    """A run directory that cannot be reported on (the message is one line). Exit code 2."""


@dataclass
class Run:
    """One run's records, split by kind (rows as written by the jsonl logger)."""

    name: str
    path: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    config_text: str = ""
    bad_lines: int = 0


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read ``path/metrics.jsonl`` (and ``config.yaml`` when present). A torn or garbled
    line (a run killed mid-write) is skipped and counted, not fatal."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise ReportError(f"{path}: no metrics.jsonl (not a run directory, or no jsonl logger)")
    run = Run(name or path.resolve().name, path)
    with metrics.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                run.bad_lines += 1
                continue
            if not isinstance(row, dict):
                run.bad_lines += 1
                continue
            kind = row.get("kind")
            if kind == "step":
                run.steps.append(row)
            elif kind == "eval":
                run.evals.append(row)
            elif kind == "epoch":
                run.epochs.append(row)
            elif kind == "end":
                run.end = row
    _dedupe_resumed(run)
    cfg = path / "config.yaml"
    if cfg.is_file():
        run.config_text = cfg.read_text(encoding="utf-8", errors="replace")
    return run


def _dedupe_resumed(run: Run) -> None:
    """A resumed run may rewrite steps it had logged before a crash: keep the last one."""
    by_step: dict[Any, dict[str, Any]] = {}
    for row in run.steps:
        by_step[row.get("step")] = row
    run.steps = sorted(by_step.values(), key=lambda r: float(r.get("step") or 0))
    by_epoch: dict[Any, dict[str, Any]] = {}
    for row in run.epochs:
        by_epoch[row.get("epoch")] = row
    run.epochs = sorted(by_epoch.values(), key=lambda r: float(r.get("epoch") or 0))


def run_names(paths: list[Path]) -> list[str]:
    """Legend labels: the directory names, with parents added where two would collide."""
    names = [p.resolve().name for p in paths]
    if len(set(names)) < len(names):
        names = ["/".join(p.resolve().parts[-2:]) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{n} ({i})" for i, n in enumerate(names)]
    return names
