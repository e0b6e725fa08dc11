"""The results of ``srpo eval``: a console table (rich, like the rest of the CLI) and JSON."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

Metrics = Mapping[str, Mapping[str, float | int | None]]


def _pct(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def table(metrics: Metrics, n: int, title: str) -> Table:
    """One row per dataset and one for all of them; accuracies in percent. Columns only
    for what was measured (no greedy column without greedy decodes, maj@k where defined)."""
    rows = list(metrics.items())
    cols = [c for c in next(iter(metrics.values())) if c not in ("prompts", "samples")]
    present = {c for _, m in rows for c in m if m.get(c) is not None}
    t = Table(title=title, show_edge=False)
    t.add_column("dataset", no_wrap=True)
    t.add_column("prompts", justify="right")
    if "greedy" in present:
        t.add_column("greedy", justify="right")
    t.add_column(f"avg@{n}", justify="right")
    t.add_column("± se", justify="right")
    ks = [c for c in cols if c.startswith(("pass@", "maj@")) and c in present]
    ks += [c for _, m in rows for c in m if c.startswith("maj@") and c not in ks]
    for c in ks:
        t.add_column(c, justify="right")
    t.add_column("mean len", justify="right")
    t.add_column("truncated", justify="right")
    for name, m in rows:
        cells = [name if name != "overall" else "[bold]overall[/bold]", str(m["prompts"])]
        if "greedy" in present:
            cells.append(_pct(m.get("greedy")))
        se = m.get(f"avg@{n}_stderr")
        cells += [_pct(m.get(f"avg@{n}")), _pct(se)]
        cells += [_pct(m.get(c)) for c in ks]
        length = m.get("response_length")
        cells.append("—" if length is None or math.isnan(float(length)) else f"{length:.1f}")
        cells.append(_pct(m.get("truncated")))
        t.add_row(*cells)
    return t


def print_table(metrics: Metrics, n: int, title: str, console: Console | None = None) -> None:
    """Printed whole: wrapped cells would be unreadable, so output that is not a terminal
    (a log, a pipe) gets a wide console instead of rich's 80 columns."""
    if console is None:
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    console.print(table(metrics, n, title))


def _clean(x: Any) -> Any:
    """NaN (an undefined statistic, e.g. the error of one prompt) as JSON null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, Mapping):
        return {k: _clean(v) for k, v in x.items()}
    return x


def write_json(path: Path, metrics: Metrics, settings: Mapping[str, Any]) -> None:
    """``{"settings": ..., "metrics": {dataset: {...}, "overall": {...}}}``, strict JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"settings": _clean(dict(settings)), "metrics": _clean(dict(metrics))}
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
