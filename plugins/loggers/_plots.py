"""The ``srpo report`` figures of a run, rendered at its end for a tracker to upload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from srpo.api import render_report_plots, warn


def render_plots(run_dir: Path, rows: list[dict[str, Any]], out: Path, tracker: str) -> list[Path]:
    """PNG files under ``out``: drawn from the run's metrics.jsonl (the whole run, across
    resumes) when the jsonl logger wrote one, else from ``rows``, what the tracker's logger
    saw (this process only). Without matplotlib: one warning and no plots."""
    source = run_dir
    if not (run_dir / "metrics.jsonl").is_file():
        source = out / "rows"
        source.mkdir(parents=True)
        text = "".join(json.dumps(r, default=str) + "\n" for r in rows)
        (source / "metrics.jsonl").write_text(text, encoding="utf-8")
    try:
        return list(render_report_plots(source, out / "plots"))
    except ImportError as e:
        warn(f"{tracker}: the report plots need matplotlib (pip install 'srpo[report]'): {e}")
        return []
