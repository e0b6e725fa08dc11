"""``srpo report RUN_DIR [RUN_DIR...] [-o OUT_DIR]``: plots + index.html from runs' metrics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def cmd_report(args: argparse.Namespace) -> int:
    """Exit 0 with the page written; 2 with a one-line error (e.g. no metrics.jsonl)."""
    try:
        from srpo.report import ReportError, make_report
    except ImportError as e:  # matplotlib missing: the `report` extra
        print(
            f"srpo: error: report needs matplotlib (pip install srpo[report]): {e}", file=sys.stderr
        )
        return 2
    runs = [Path(p) for p in args.run_dirs]
    for p in runs:
        if not (p / "metrics.jsonl").is_file():
            print(
                f"srpo: error: {p}: no metrics.jsonl (not a run directory, or no jsonl logger)",
                file=sys.stderr,
            )
            return 2
    out = (
        Path(args.output)
        if args.output
        else (runs[0] / "report" if len(runs) == 1 else Path("report"))
    )
    try:
        page = make_report(runs, out)
    except ReportError as e:
        print(f"srpo: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {page}")
    return 0


def add_report_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report`` on the ``srpo`` CLI's subparsers."""
    p = subparsers.add_parser(
        "report",
        help="plots and an HTML page from one or more runs",
        description="Read RUN_DIR/metrics.jsonl (and config.yaml) of each run and write PNG "
        "plots (runs overlaid) and index.html. Default output: RUN_DIR/report for one run, "
        "./report for several.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("-o", "--output", metavar="OUT_DIR", help="where to write the report")
    p.set_defaults(func=cmd_report)
    return p
