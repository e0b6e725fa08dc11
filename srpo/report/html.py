"""The report page: a summary table, the figures, and each run's resolved config."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from srpo.report.plots import Plot
from srpo.report.runs import Run

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1600px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(640px, 1fr)); gap: 1em; }
figure { margin: 0; } figure img { width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8em; overflow: auto; font-size: 12px; }
.muted { color: #777; }
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "–" if v is None else str(v)


def _summary(r: Run) -> dict[str, Any]:
    last = r.steps[-1] if r.steps else {}
    evals = {e.get("label"): e for e in r.evals}
    return {
        "steps": len(r.steps),
        "epochs": len(r.epochs),
        "status": (r.end or {}).get("status", "no end record"),
        "final reward": last.get("reward/mean"),
        "eval before": (evals.get("before") or {}).get("accuracy"),
        "eval after": (evals.get("after") or {}).get("accuracy"),
        **_sampled(evals.get("after") or {}),
        "rollouts": (r.end or {}).get("rollouts", last.get("rollouts_total")),
    }


def _sampled(after: dict[str, Any]) -> dict[str, Any]:
    """The final evaluation's avg@n and largest pass@k, when it sampled (eval.n_samples)."""
    out: dict[str, Any] = {}
    for kind in ("avg", "pass"):
        ks = [int(k.split("@")[1]) for k in after if re.fullmatch(rf"{kind}@\d+", k)]
        if ks:
            key = f"{kind}@{max(ks)}"
            out[f"{key} after"] = after[key]
    return out


def write_html(runs: Sequence[Run], plots: Sequence[Plot], out: Path) -> Path:
    e = html.escape
    rows = [_summary(r) for r in runs]
    cols = list(dict.fromkeys(c for row in rows for c in row))  # sampled columns: some runs
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>srpo report: {e(', '.join(r.name for r in runs))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>srpo report — {e(', '.join(r.name for r in runs))}</h1>",
        "<h2>Runs</h2><table><tr><th>run</th>",
        *(f"<th>{e(c)}</th>" for c in cols),
        "</tr>",
    ]
    for r, s in zip(runs, rows, strict=True):
        parts.append(f"<tr><td title='{e(str(r.path))}'>{e(r.name)}</td>")
        parts += [f"<td>{e(_fmt(s.get(c)))}</td>" for c in cols]
        parts.append("</tr>")
    parts.append("</table>")
    for r in runs:
        if r.bad_lines:
            parts.append(
                f"<p class='muted'>{e(r.name)}: skipped {r.bad_lines} unreadable "
                "line(s) of metrics.jsonl (a run killed mid-write?)</p>"
            )
    parts.append("<h2>Curves</h2>")
    if not plots:
        parts.append("<p class='muted'>No step, eval or epoch records to plot yet.</p>")
    parts.append("<div class='grid'>")
    for p in plots:
        parts.append(
            f"<figure><img src='{e(p.file)}' alt='{e(p.title)}'>"
            f"<figcaption><b>{e(p.title)}.</b> {e(p.caption)}</figcaption></figure>"
        )
    parts.append("</div><h2>Configs</h2>")
    for r in runs:
        text = r.config_text or "(no config.yaml in the run directory)"
        parts.append(
            f"<details><summary>{e(r.name)} <span class='muted'>{e(str(r.path))}</span>"
            f"</summary><pre>{e(text)}</pre></details>"
        )
    parts.append("</body></html>\n")
    page = out / "index.html"
    page.write_text("".join(parts), encoding="utf-8")
    return page
