"""``srpo report``: plots and an HTML page from one or more runs' ``metrics.jsonl``.

``load_run`` reads a run directory; ``make_report`` writes the PNGs and ``index.html``.
Matplotlib is imported only here (the ``report`` extra), never by training.
"""

from __future__ import annotations

from pathlib import Path

from srpo.report.runs import ReportError, Run, load_run, run_names


def make_report(paths: list[str | Path], out_dir: str | Path) -> Path:
    """Write the plots and ``index.html`` for the runs into ``out_dir``; returns the page."""
    from srpo.report.html import write_html
    from srpo.report.plots import write_plots

    ps = [Path(p) for p in paths]
    runs = [load_run(p, n) for p, n in zip(ps, run_names(ps), strict=True)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(runs, out)
    return write_html(runs, plots, out)


__all__ = ["ReportError", "Run", "load_run", "make_report", "run_names"]
