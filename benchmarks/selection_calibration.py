"""How well does step-level selection's posterior predict which groups will have a signal?

    ./dev python benchmarks/selection_calibration.py runs/eff/grpo-seed0 runs/eff/grpo-seed1
    ./dev python benchmarks/selection_calibration.py RUN... --half-life 2 4 8 --from-step 12

Replays each run's history store step by step: before a step, the pass-rate posterior
(``plugins/curricula/_selection.py``) built from all earlier steps predicts, for every group
the step trained, the chance that it is informative (neither all correct nor all wrong);
then the step's groups are added. Nothing is trained or generated, so any completed run can
be scored under any prior / half-life, in seconds. Best read on a uniformly sampled run
(GRPO): a selecting run's groups are the ones its own posterior chose.

Reported per posterior variant, over groups of prompts seen before, from ``--from-step`` on:
the realized informative share (base), the mean prediction (overconfident when above base),
the Brier score, and the realized share among the 20% of groups predicted most informative
(what a sharp selection could at best get) and among the 50% predicted least.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from srpo_plugins.curricula._selection import PassRatePosterior, SelectionRules

from srpo.history.reader import HistoryReader

#: one group of one step: (prompt id, domain code, rollouts, correct)
Group = tuple[int, str, int, int]


def step_groups(run_dir: Path) -> list[list[Group]]:
    """The run's groups, one list per step in step order, from its history store."""
    counts: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    with HistoryReader(run_dir / "history") as h:
        for epoch in h.epochs():
            for cols in h.iter_epoch(epoch, ["prompt_id", "step", "correct", "domain"]):
                for pid, step, ok, dom in zip(
                    cols["prompt_id"].tolist(),
                    cols["step"].tolist(),
                    cols["correct"].tolist(),
                    cols["domain"].tolist(),
                    strict=True,
                ):
                    c = counts[(step, pid)]
                    c[0], c[1], c[2] = c[0] + 1, c[1] + int(ok), dom
    by_step: dict[int, list[Group]] = defaultdict(list)
    for (step, pid), (n, ok, dom) in counts.items():
        by_step[step].append((pid, str(dom), n, ok))
    return [by_step[s] for s in sorted(by_step)]


def group_size(run_dir: Path) -> int:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return int(cfg.get("algorithm", {}).get("group_size", 8))


def replay(steps: list[list[Group]], rules: SelectionRules, g: int) -> np.ndarray:
    """Rows (step index, predicted, realized, seen before) for every group of every step."""
    post = PassRatePosterior(rules, g)
    seen: set[int] = set()
    rows: list[tuple[int, float, float, float]] = []
    for i, groups in enumerate(steps):
        for pid, dom, _, _ in groups:
            post.domain_of.setdefault(pid, dom)  # its domain's prior, also before it is seen
        pred = post.informative_prob([pid for pid, *_ in groups])
        for (pid, _, n, ok), p in zip(groups, pred.tolist(), strict=True):
            rows.append((i, p, float(0 < ok < n), float(pid in seen)))
        post.observe_counts([(pid, dom, n, ok) for pid, dom, n, ok in groups])
        seen.update(pid for pid, *_ in groups)
    return np.array(rows, np.float64).reshape(-1, 4)


def scores(rows: np.ndarray, from_step: int) -> dict[str, float]:
    keep = (rows[:, 0] >= from_step) & (rows[:, 3] == 1.0)
    pred, real = rows[keep, 1], rows[keep, 2]
    if pred.size == 0:
        return {"groups": 0.0}
    top = pred >= np.quantile(pred, 0.8)
    low = pred <= np.quantile(pred, 0.5)
    return {
        "groups": float(pred.size),
        "base": float(real.mean()),
        "mean_pred": float(pred.mean()),
        "brier": float(np.mean((pred - real) ** 2)),
        "top20_real": float(real[top].mean()),
        "low50_real": float(real[low].mean()),
    }


def variants(half_lives: list[float]) -> dict[str, SelectionRules]:
    out = {"fixed": SelectionRules(), "empirical": SelectionRules(prior="empirical")}
    for h in half_lives:
        out[f"empirical, half_life {h:g}"] = SelectionRules(prior="empirical", half_life=h)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (with history/)")
    ap.add_argument("--half-life", nargs="*", type=float, default=[2.0, 4.0, 8.0])
    ap.add_argument(
        "--from-step", type=int, default=-1, help="score steps from here (-1: a third in)"
    )
    args = ap.parse_args(argv)
    for run in args.runs:
        if not (run / "history").is_dir() or not (run / "config.yaml").is_file():
            raise SystemExit(f"selection_calibration: {run}: not a run directory with history/")
    runs = [(step_groups(r), group_size(r)) for r in args.runs]
    lines = [
        "| posterior | groups | realized (base) | mean predicted | Brier | realized, top 20% "
        "predicted | realized, bottom 50% |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rules in variants(args.half_life).items():
        rows = []
        for steps, g in runs:
            start = args.from_step if args.from_step >= 0 else len(steps) // 3
            rows.append(scores(replay(steps, rules, g), start))
        got = [r for r in rows if r["groups"]]
        if not got:
            raise SystemExit("selection_calibration: no group of a seen prompt to score")
        total = sum(r["groups"] for r in got)

        def pooled(key: str, got: list[dict[str, float]] = got, total: float = total) -> float:
            return sum(r[key] * r["groups"] for r in got) / total

        lines.append(
            f"| {name} | {total:.0f} | {pooled('base'):.2f} | {pooled('mean_pred'):.2f} | "
            f"{pooled('brier'):.3f} | {pooled('top20_real'):.2f} | {pooled('low50_real'):.2f} |"
        )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
