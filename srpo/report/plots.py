"""The report's figures: one PNG per quantity, runs overlaid (color = run).

Noisy step curves are drawn raw but faint, with a debiased EMA on top (as TensorBoard does),
so trends read at a glance without hiding the noise. Stage switches (two-stage curriculum)
are marked with a dotted vertical line in the run's color. A figure whose metrics no run
has is skipped, not drawn empty.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from srpo.report.runs import Run

COLORS = plt.get_cmap("tab10").colors
STYLES = ("-", "--", ":", "-.")
TIME_PARTS = ("generate", "wait_rollouts", "verify", "update", "sync", "history", "other")
KEPT = (("mixed", "#4c72b0"), ("all_wrong", "#c44e52"), ("unseen", "#8c8c8c"))
READMITTED = ("readmitted", "#55a868")
DROPPED = ("all_correct", "#dd8452")


@dataclass
class Plot:
    """A written figure: file name (relative to the report directory) and caption."""

    file: str
    title: str
    caption: str


def series(rows: Sequence[dict[str, Any]], key: str, x: str = "step") -> tuple[Any, Any]:
    """(x, y) float arrays of the rows that have a finite ``key``."""
    xs, ys = [], []
    for r in rows:
        v, s = r.get(key), r.get(x)
        if isinstance(v, (int, float)) and isinstance(s, (int, float)) and math.isfinite(v):
            xs.append(float(s))
            ys.append(float(v))
    return np.asarray(xs), np.asarray(ys)


def ema(y: np.ndarray, weight: float | None = None) -> np.ndarray:
    """Debiased exponential moving average, light (little lag); heavier on long series."""
    if weight is None:
        weight = 0.0 if y.size < 8 else 0.5 if y.size < 50 else 0.7 if y.size < 200 else 0.85
    out = np.empty_like(y)
    acc, norm = 0.0, 0.0
    for i, v in enumerate(y):
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = acc / norm
    return out


def _keys(runs: Sequence[Run], prefix: str, rows: str = "steps") -> list[str]:
    """Metric keys ``prefix<name>`` (one path level) present in any run, sorted."""
    found = {
        k
        for r in runs
        for row in getattr(r, rows)
        for k in row
        if k.startswith(prefix) and "/" not in k[len(prefix) :]
    }
    return sorted(found)


def _has(runs: Sequence[Run], keys: Sequence[str], rows: str = "steps") -> bool:
    x = "epoch" if rows == "epochs" else "step"
    return any(series(getattr(r, rows), k, x)[0].size for r in runs for k in keys)


def _new(title: str, ylabel: str, xlabel: str = "step") -> tuple[Figure, Axes]:
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _stage_marks(ax: Axes, runs: Sequence[Run]) -> None:
    labelled = False
    for i, r in enumerate(runs):
        x, st = series(r.steps, "stage")
        for j in np.flatnonzero(np.diff(st) != 0):
            ax.axvline(
                x[j + 1],
                color=COLORS[i % len(COLORS)],
                linestyle=":",
                linewidth=1.2,
                label=None if labelled else "stage switch",
            )
            labelled = True


def _lines(
    ax: Axes,
    runs: Sequence[Run],
    keys: Sequence[str],
    labels: Sequence[str] | None = None,
    rows: str = "steps",
    smooth: bool = True,
    marker: str | None = None,
) -> None:
    """Color = run and line style = key when several runs; color = key for one run."""
    labels = list(labels or keys)
    for i, r in enumerate(runs):
        for j, (k, lab) in enumerate(zip(keys, labels, strict=True)):
            x, y = series(getattr(r, rows), k)
            if not x.size:
                continue
            if len(runs) == 1:
                color, style, name = COLORS[j % len(COLORS)], "-", lab
            else:
                color, style = COLORS[i % len(COLORS)], STYLES[j % len(STYLES)]
                name = r.name if len(keys) == 1 else f"{r.name} · {lab}"
            if smooth and y.size >= 8:
                ax.plot(x, y, color=color, linestyle=style, linewidth=0.8, alpha=0.25)
                ax.plot(x, ema(y), color=color, linestyle=style, linewidth=1.8, label=name)
            else:
                ax.plot(
                    x,
                    y,
                    color=color,
                    linestyle=style,
                    linewidth=1.6,
                    label=name,
                    marker=marker or ("o" if y.size < 8 else None),
                    markersize=4,
                )


def _finish(fig: Figure, ax: Axes, out: Path, name: str) -> str:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8, frameon=False, loc="best")
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


def _simple(
    title: str,
    ylabel: str,
    keys: Sequence[str],
    labels: Sequence[str] | None = None,
    ylim: tuple[float, float] | None = None,
) -> Callable[[Sequence[Run], Path, str], str | None]:
    def draw(runs: Sequence[Run], out: Path, name: str) -> str | None:
        if not _has(runs, keys):
            return None
        fig, ax = _new(title, ylabel)
        _lines(ax, runs, keys, labels)
        _stage_marks(ax, runs)
        if ylim is not None:
            ax.set_ylim(*ylim)
        return _finish(fig, ax, out, name)

    return draw


def plot_accuracy(runs: Sequence[Run], out: Path, name: str) -> str | None:
    doms = [k for k in _keys(runs, "accuracy/")]
    keys = doms or ["accuracy"]
    if not _has(runs, keys):
        return None
    fig, ax = _new("Training accuracy per domain (share of correct rollouts)", "accuracy")
    _lines(ax, runs, keys, [k.split("/", 1)[-1] for k in keys])
    _stage_marks(ax, runs)
    ax.set_ylim(-0.02, 1.02)
    return _finish(fig, ax, out, name)


def plot_eval(runs: Sequence[Run], out: Path, name: str) -> str | None:
    keys = ["accuracy", *_keys(runs, "accuracy/", rows="evals")]
    if not _has(runs, keys, rows="evals"):
        return None
    fig, ax = _new("Held-out accuracy (greedy)", "accuracy")
    labels = ["all" if k == "accuracy" else k.split("/", 1)[1] for k in keys]
    _lines(ax, runs, keys, labels, rows="evals", smooth=False, marker="o")
    ax.set_ylim(-0.02, 1.02)
    return _finish(fig, ax, out, name)


def plot_time_split(runs: Sequence[Run], out: Path, name: str) -> str | None:
    have = [r for r in runs if _has([r], [f"time/{p}" for p in TIME_PARTS])]
    if not have:
        return None
    fig, axes = plt.subplots(
        len(have), 1, figsize=(7.5, 2.2 + 2.0 * len(have)), dpi=110, squeeze=False, sharex=True
    )
    for ax, r in zip(axes[:, 0], have, strict=True):
        xs = np.asarray([float(row["step"]) for row in r.steps])
        parts = [
            np.asarray([float(row.get(f"time/{p}") or 0.0) for row in r.steps]) for p in TIME_PARTS
        ]
        smoothed = [ema(p) for p in parts]
        ax.stackplot(xs, smoothed, labels=TIME_PARTS, colors=COLORS[: len(TIME_PARTS)], alpha=0.85)
        ax.set_title(f"{r.name}: seconds per step by phase (smoothed)", fontsize=10, loc="left")
        ax.set_ylabel("s / step")
        ax.grid(True, alpha=0.3, linewidth=0.6)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(fontsize=8, frameon=False, loc="upper left", ncol=len(TIME_PARTS))
        ax.set_ylim(0, max(1e-9, float(np.sum(smoothed, axis=0).max())) * 1.25)
    axes[-1, 0].set_xlabel("step")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


def plot_dataset(runs: Sequence[Run], out: Path, name: str) -> str | None:
    cats = [c for c, _ in KEPT] + [READMITTED[0], DROPPED[0]]
    have = [r for r in runs if _has([r], ["dataset_size", *cats], rows="epochs")]
    if not have:
        return None
    fig, axes = plt.subplots(
        len(have), 1, figsize=(7.5, 2.4 + 2.3 * len(have)), dpi=110, squeeze=False
    )
    for ax, r in zip(axes[:, 0], have, strict=True):
        ep = np.asarray([float(row.get("epoch", i)) for i, row in enumerate(r.epochs)])

        def col(key: str, rows: list[dict[str, Any]] = r.epochs) -> np.ndarray:
            return np.asarray([float(row.get(key) or 0.0) for row in rows])

        resampled = any(col(c).any() for c in cats)  # else a curriculum without HR
        bottom = np.zeros(ep.size)
        for key, color in (*KEPT, READMITTED):
            v = col(key)
            if v.any():
                ax.bar(ep, v, bottom=bottom, color=color, width=0.7, label=f"kept: {key}")
                bottom += v
        dropped = col(DROPPED[0])
        if dropped.any():
            ax.bar(ep, -dropped, color=DROPPED[1], width=0.7, label="dropped: all_correct")
        size = col("dataset_size")
        if size.any():
            ax.plot(ep, size, color="black", marker="o", linewidth=1.4, label="next epoch size")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.margins(y=0.08)
        what = "dataset per epoch" + (" (history resampling)" if resampled else "")
        ax.set_title(f"{r.name}: {what}", fontsize=10, loc="left")
        ax.set_ylabel("prompts")
        ax.set_xticks(ep)
        ax.grid(True, axis="y", alpha=0.3, linewidth=0.6)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    axes[-1, 0].set_xlabel("epoch (bars: this epoch's prompts by outcome; dropped below 0)")
    fig.tight_layout()
    fig.savefig(out / name)
    plt.close(fig)
    return name


#: (file, title, caption, drawer) in page order.
FIGURES: list[tuple[str, str, str, Callable[[Sequence[Run], Path, str], str | None]]] = [
    (
        "reward.png",
        "Reward",
        "Mean reward of the step's rollouts.",
        _simple("Mean reward per step", "reward", ["reward/mean"]),
    ),
    ("accuracy.png", "Training accuracy", "Share of correct rollouts per domain.", plot_accuracy),
    ("eval_accuracy.png", "Held-out accuracy", "Greedy accuracy on the held-out split.", plot_eval),
    (
        "effective_ratio.png",
        "Effective ratio",
        "Share of groups whose rewards differ (non-zero advantage): what GRPO learns from.",
        _simple(
            "Effective ratio (groups with non-zero advantage)",
            "share",
            ["effective_ratio"],
            ylim=(-0.02, 1.02),
        ),
    ),
    (
        "response_length.png",
        "Response length",
        "Mean and max response length in tokens.",
        _simple(
            "Response length",
            "tokens",
            ["response_length/mean", "response_length/max"],
            ["mean", "max"],
        ),
    ),
    (
        "clip_fraction.png",
        "Clip fractions",
        "Share of tokens whose ratio was clipped.",
        _simple(
            "Clip fractions",
            "share of tokens",
            ["clip_frac_low", "clip_frac_high", "dual_clip_frac"],
            ["low", "high", "dual"],
        ),
    ),
    (
        "kl.png",
        "KL",
        "KL to the reference policy and approximate KL to the behaviour policy.",
        _simple("KL", "nats / token", ["kl", "approx_kl"]),
    ),
    (
        "entropy.png",
        "Entropy",
        "Mean token entropy of the policy on its rollouts.",
        _simple("Policy entropy", "nats / token", ["entropy"]),
    ),
    (
        "tokens_per_s.png",
        "Throughput",
        "Generated tokens per second of generation time.",
        _simple("Generation throughput", "tokens / s", ["tokens_per_s"]),
    ),
    ("time_split.png", "Time split", "Seconds per step by phase, stacked.", plot_time_split),
    (
        "staleness.png",
        "Staleness",
        "Generation ahead of the update (run.max_staleness): how many updates behind the "
        "trainer the weights that sampled the step's rollouts were (rollouts dropped as too "
        "stale: staleness/dropped in the metrics).",
        _simple(
            "Staleness of the trained rollouts",
            "updates behind",
            ["staleness/mean", "staleness/max"],
            ["mean", "max"],
        ),
    ),
    (
        "overlap_idle.png",
        "Idle time",
        "Generation ahead of the update: seconds the trainer waited for rollouts and the "
        "generation thread waited for the trainer (weights or prompts), per step.",
        _simple(
            "Idle time per step",
            "seconds",
            ["time/wait_rollouts", "time/engine_idle"],
            ["trainer waiting for rollouts", "engine waiting for the trainer"],
        ),
    ),
    (
        "dataset.png",
        "Dataset per epoch",
        "Prompts per epoch by outcome (history resampling): kept mixed / all-wrong / unseen / "
        "re-admitted above zero, dropped all-correct below; the line is the next epoch's size.",
        plot_dataset,
    ),
]


def write_plots(runs: Sequence[Run], out: Path) -> list[Plot]:
    """Draw every figure some run has data for; returns them in page order: these, then
    the reasoning-behaviour and sampled-evaluation figures of ``curves`` (imported here:
    it draws with this module's helpers)."""
    from srpo.report.curves import FIGURES as CURVES

    done = []
    for file, title, caption, draw in [*FIGURES, *CURVES]:
        if draw(runs, out, file):
            done.append(Plot(file, title, caption))
    return done
