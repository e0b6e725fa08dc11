"""The report's figures of reasoning behaviour and of sampled held-out evaluation.

The SRPO paper reads its training through two kinds of curves beside the reward: response
length across steps, with the stage switch marked (length grows in the math-first stage),
and how often reflective words appear. These draw them from the step rows' ``behaviour/*``
and ``reflection/*`` keys (``srpo.kernel.behaviour``) and the eval rows' ``avg@n``,
``pass@k`` and ``maj@k`` (``srpo.eval.training``); like every figure of the report, one
whose keys no run has is skipped. Kept apart from ``plots`` (the training-mechanics
figures) so each module stays one job; ``plots.write_plots`` draws both lists.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from srpo.report.plots import COLORS, _finish, _has, _lines, _new, _stage_marks, series
from srpo.report.runs import Run

#: Splits of a behaviour statistic that are not domains.
_SPLITS = ("correct", "incorrect")
#: At most this many reflection patterns drawn (the most frequent): more are unreadable.
MAX_PATTERNS = 10


def _domains(runs: Sequence[Run]) -> list[str]:
    """Domains with behaviour rows: the ``d`` of ``behaviour/d/length_mean``."""
    rx = re.compile(r"^behaviour/([^/]+)/length_mean$")
    found = {
        m.group(1) for r in runs for row in r.steps for k in row if (m := rx.match(k)) is not None
    }
    return sorted(found - set(_SPLITS))


def _split_keys(runs: Sequence[Run], stat: str) -> tuple[list[str], list[str]]:
    """``behaviour/<stat>`` for all, correct, incorrect, then each domain: keys, labels."""
    keys = [f"behaviour/{stat}", *(f"behaviour/{s}/{stat}" for s in _SPLITS)]
    labels = ["all", *_SPLITS]
    for d in _domains(runs):
        keys.append(f"behaviour/{d}/{stat}")
        labels.append(d)
    return keys, labels


def _drawer(
    title: str, ylabel: str, keys_of: Callable[[Sequence[Run]], tuple[list[str], list[str]]]
) -> Callable[[Sequence[Run], Path, str], str | None]:
    """A step figure of the keys ``keys_of(runs)`` finds, stage switches marked."""

    def draw(runs: Sequence[Run], out: Path, name: str) -> str | None:
        keys, labels = keys_of(runs)
        if not _has(runs, keys):
            return None
        fig, ax = _new(title, ylabel)
        _lines(ax, runs, keys, labels)
        _stage_marks(ax, runs)
        return _finish(fig, ax, out, name)

    return draw


def _length_keys(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    keys = ["behaviour/length_mean", "behaviour/length_p50", "behaviour/length_p90"]
    keys += [f"behaviour/{s}/length_mean" for s in _SPLITS]
    return keys, ["mean", "median", "p90", "mean, correct", "mean, incorrect"]


def _domain_length_keys(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    keys, labels = [], []
    for d in _domains(runs):
        for stat, what in (("length_mean", "mean"), ("length_p90", "p90")):
            keys.append(f"behaviour/{d}/{stat}")
            labels.append(f"{d} {what}")
    return keys, labels


def _pattern_keys(runs: Sequence[Run]) -> tuple[list[str], list[str]]:
    """The most frequent patterns over the runs' steps; never-seen ones are not drawn."""
    totals: dict[str, float] = {}
    for r in runs:
        for row in r.steps:
            for k, v in row.items():
                if k.startswith("reflection/") and isinstance(v, (int, float)):
                    totals[k] = totals.get(k, 0.0) + float(v)
    keys = sorted((k for k, t in totals.items() if t > 0), key=lambda k: -totals[k])
    keys = keys[:MAX_PATTERNS]
    return keys, [k.split("/", 1)[1] for k in keys]


def plot_eval_sampled(runs: Sequence[Run], out: Path, name: str) -> str | None:
    """avg@n with its ± 1 standard-error band, pass@k and maj@k at each evaluation, with
    greedy accuracy for reference: the numbers papers report, across training."""
    rx = re.compile(r"^(avg|pass|maj)@(\d+)$")
    found = {k for r in runs for row in r.evals for k in row if rx.match(k)}
    order = {"avg": 0, "pass": 1, "maj": 2}
    keys = sorted(found, key=lambda k: (order[k.split("@")[0]], int(k.split("@")[1])))
    if not _has(runs, keys, rows="evals"):
        return None
    keys.append("accuracy")
    fig, ax = _new("Held-out accuracy, sampled (avg@n ± se, pass@k, maj@k) and greedy", "share")
    labels = [("greedy" if k == "accuracy" else k) for k in keys]
    _lines(ax, runs, keys, labels, rows="evals", smooth=False, marker="o")
    for i, r in enumerate(runs):
        for j, k in enumerate(keys):
            if not k.startswith("avg@"):
                continue
            x, y = series(r.evals, k)
            xe, se = series(r.evals, f"{k}_stderr")
            if not x.size or xe.size != x.size:
                continue
            color = COLORS[(j if len(runs) == 1 else i) % len(COLORS)]
            ax.fill_between(x, y - se, y + se, color=color, alpha=0.15, linewidth=0)
    _stage_marks(ax, runs)
    ax.set_ylim(-0.02, 1.02)
    return _finish(fig, ax, out, name)


def plot_patterns_by_stage(runs: Sequence[Run], out: Path, name: str) -> str | None:
    """Each pattern's share of responses, averaged per curriculum stage: the bar chart
    that says which reflections grew when the stage changed (one bar group per run and
    stage)."""
    keys, labels = _pattern_keys(runs)
    stages = sorted({int(s) for r in runs for s in series(r.steps, "stage")[1]})
    if not keys or len(stages) < 2:
        return None
    fig, ax = _new("Reflection patterns by curriculum stage", "share of responses", "pattern")
    groups = [(r, s) for r in runs for s in stages]
    width = 0.8 / len(groups)
    xs = np.arange(len(keys))
    for g, (r, s) in enumerate(groups):
        rows = [row for row in r.steps if isinstance(row.get("stage"), (int, float))]
        rows = [row for row in rows if int(row["stage"]) == s]
        heights = []
        for k in keys:
            vals = [float(row[k]) for row in rows if isinstance(row.get(k), (int, float))]
            heights.append(float(np.mean(vals)) if vals else 0.0)
        label = f"stage {s}" if len(runs) == 1 else f"{r.name} · stage {s}"
        offset = (g - (len(groups) - 1) / 2) * width
        ax.bar(xs + offset, heights, width=width, color=COLORS[g % len(COLORS)], label=label)
    ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=8)
    return _finish(fig, ax, out, name)


#: (file, title, caption, drawer) in page order, after ``plots.FIGURES``.
FIGURES: list[tuple[str, str, str, Callable[[Sequence[Run], Path, str], str | None]]] = [
    (
        "eval_sampled.png",
        "Held-out accuracy, sampled",
        "avg@n (Pass@1 over n samples, band: ± 1 standard error across prompts), unbiased "
        "pass@k and maj@k at each evaluation (eval.n_samples), greedy for reference.",
        plot_eval_sampled,
    ),
    (
        "behaviour_length.png",
        "Response length (reasoning behaviour)",
        "Tokens per response: mean, median and 90th percentile of the step's rollouts, and "
        "the mean of the correct and of the incorrect ones; dotted: stage switches.",
        _drawer("Response length", "tokens", _length_keys),
    ),
    (
        "behaviour_length_domains.png",
        "Response length per domain",
        "Mean and 90th-percentile tokens per response, per domain.",
        _drawer("Response length per domain", "tokens", _domain_length_keys),
    ),
    (
        "behaviour_truncated.png",
        "Truncation",
        "Share of responses cut at max_new_tokens: all, correct, incorrect, per domain.",
        _drawer("Truncated responses", "share", lambda runs: _split_keys(runs, "truncated")),
    ),
    (
        "reflection.png",
        "Reflection",
        "Share of responses with at least one reflection pattern (behaviour.patterns): all, "
        "correct, incorrect, per domain.",
        _drawer(
            "Responses with a reflection pattern",
            "share",
            lambda runs: _split_keys(runs, "reflection"),
        ),
    ),
    (
        "reflection_patterns.png",
        "Reflection patterns",
        f"Share of responses in which each pattern occurs (the {MAX_PATTERNS} most frequent).",
        _drawer("Reflection patterns", "share of responses", _pattern_keys),
    ),
    (
        "reflection_stages.png",
        "Reflection patterns by stage",
        "Each pattern's share of responses, averaged over the steps of each curriculum stage.",
        plot_patterns_by_stage,
    ),
]
