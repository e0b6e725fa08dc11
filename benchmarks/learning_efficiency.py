"""The learning-efficiency experiment: GRPO vs DAPO vs SRPO (+ ablations) on the tiny task.

    ./dev python benchmarks/learning_efficiency.py                 # 5 methods x 3 seeds
    ./dev python benchmarks/learning_efficiency.py --seeds 0 --steps 20 --methods grpo srpo
    ./dev python benchmarks/learning_efficiency.py --reuse --seeds 0 1 2 3   # add a seed
    ./dev python benchmarks/learning_efficiency.py --train-limit 128  # several epochs

Every method uses the same model, data, group size, batch, optimizer and budget; only the
curriculum differs (and DAPO's over-sampling, which it pays for in generated rollouts). Each
run evaluates held-out greedy accuracy (math + code) every ``--eval-every`` steps. Reported
per method (mean ± std over seeds): optimizer steps and generated rollouts to first reach the
target accuracy (also per domain), final accuracy per domain, and the effective-sample ratio
(share of groups with non-zero advantage). ``--reuse`` keeps completed runs made with the same
settings, so an interrupted experiment continues where it stopped. Writes ``OUT/results.md``,
``OUT/results.json`` and ``OUT/efficiency.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from srpo.report import load_run

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny"

#: method -> (run file, description, extra ``--set`` overrides)
METHODS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "grpo": ("grpo.yaml", "GRPO: uniform curriculum", ()),
    "dapo": ("dapo.yaml", "DAPO: dynamic sampling (over-sample, drop zero-variance groups)", ()),
    "srpo": ("plugins.yaml", "SRPO: two-stage + history resampling", ()),
    "hr_only": ("hr_only.yaml", "history resampling only", ()),
    "two_stage_only": ("two_stage_only.yaml", "two-stage only", ()),
    # not in the default set: the switch point, chosen after seeing the first results
    "srpo_switch8": (
        "plugins.yaml",
        "SRPO with the stage switch after 8 steps instead of one epoch (16 steps)",
        ("curriculum.options.switch={after_steps: 8}",),
    ),
    # not in the default set: HR with a floor, for budgets of several epochs, where plain HR
    # shrinks the pool to a handful of hard prompts and forgets the rest
    "hr_floor": (
        "hr_only.yaml",
        "history resampling with a floor of 64 prompts (dropped ones re-admitted, oldest first)",
        ("curriculum.options.min_dataset_size=64",),
    ),
    "srpo_floor": (
        "plugins.yaml",
        "SRPO with a floor of 64 prompts on history resampling",
        ("curriculum.options.hr={window: 1, min_dataset_size: 64}",),
    ),
}
DEFAULT_METHODS = ["grpo", "dapo", "srpo", "hr_only", "two_stage_only"]
DOMAINS = ("math", "code")


def completed(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a run that ended with status "completed"."""
    if not (run_dir / "metrics.jsonl").is_file():
        return False
    end = load_run(run_dir).end
    return end is not None and end.get("status") == "completed"


def settings(method: str, seed: int, out: Path, args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides that make one run of the experiment."""
    sets = [
        f"run.output_dir={out}",
        f"run.seed={seed}",
        f"run.max_steps={args.steps}",
        f"run.epochs={args.steps}",  # an epoch has >= 1 step: the step budget binds, not epochs
        f"eval.every={args.eval_every}",
        "loggers=[{name: jsonl}]",
    ]
    if args.eval_prompts:
        sets.append(f"eval.max_prompts={args.eval_prompts}")
    if args.train_limit:
        sets += [f"datasets.{d}.limit={args.train_limit}" for d in DOMAINS]
    return sets + list(METHODS[method][2])


def reusable(out: Path, run_file: Path, sets: list[str]) -> bool:
    """A completed run in ``out`` made from exactly this run file and these settings (the
    output directory aside: runs may be moved)."""
    if not completed(out) or not (out / "config.yaml").exists():
        return False
    from srpo.config import load_config

    want = load_config(run_file, sets).config.model_dump(mode="json")
    have = yaml.safe_load((out / "config.yaml").read_text())
    for cfg in (want, have):
        cfg["run"].pop("output_dir", None)
    return want == have


def run_one(method: str, seed: int, args: argparse.Namespace) -> Path:
    out = args.out / f"{method}-seed{seed}"
    run_file = TINY / METHODS[method][0]
    sets = settings(method, seed, out, args)
    if args.reuse and reusable(out, run_file, sets):
        print(f"  {method:15s} seed {seed}: reused {out}", flush=True)
        return out
    cmd = [sys.executable, "-m", "srpo.cli", "run", str(run_file), "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    t = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{method} seed {seed} failed:\n{res.stderr[-3000:]}")
    print(f"  {method:15s} seed {seed}: {time.time() - t:.0f}s", flush=True)
    return out


def summarize(run_dir: Path, target: float) -> dict:
    run = load_run(run_dir)  # the report's reader: resumed steps deduplicated, torn lines skipped
    steps = {r["step"]: r for r in run.steps}
    evals = run.evals
    hit_step = first_reach(evals, "accuracy", target)
    rollouts_at = None
    if hit_step is not None:
        rollouts_at = 0.0 if hit_step == 0 else steps[hit_step - 1]["rollouts_total"]
    last = evals[-1]
    return {
        "steps_to_target": hit_step,
        "steps_to_target_by_domain": {
            d: first_reach(evals, f"accuracy/{d}", target) for d in DOMAINS
        },
        "rollouts_to_target": rollouts_at,
        "final": {k: v for k, v in last.items() if k.startswith("accuracy")},
        # None for a step that trained no group (DAPO when the rest of an epoch is all
        # zero-variance): the ratio of trained groups is undefined there, not 0
        "effective_ratio": [steps[s].get("effective_ratio") for s in sorted(steps)],
        "eval_curve": [(e["step"], e["accuracy"]) for e in evals],
        "eval_curve_by_domain": {
            d: [(e["step"], e[f"accuracy/{d}"]) for e in evals if f"accuracy/{d}" in e]
            for d in DOMAINS
        },
        "rollouts_curve": [steps[s]["rollouts_total"] for s in sorted(steps)],
    }


def first_reach(evals: list[dict], key: str, target: float) -> int | None:
    """The step of the first evaluation whose ``key`` is at least ``target`` (None: never)."""
    return next((e["step"] for e in evals if e.get(key, -1.0) >= target), None)


def fmt(values: list[float | None], digits: int = 0) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "not reached"
    miss = len(values) - len(got)
    mean = statistics.fmean(got)
    sd = statistics.stdev(got) if len(got) > 1 else 0.0
    s = f"{mean:.{digits}f} ± {sd:.{digits}f}"
    return s + (f" ({miss} of {len(values)} not reached)" if miss else "")


def report(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"Target: held-out greedy accuracy ≥ {args.target:.0%} (math + code), evaluated every "
        f"{args.eval_every} steps; budget {args.steps} steps; seeds {args.seeds}; "
        f"training prompts per domain: {args.train_limit or 'as in the run files'}. "
        "Mean ± std over seeds; the math and code columns apply the same target to each "
        "domain alone.",
        "",
        "| method | runs | steps to target | rollouts to target | steps: math | steps: code | "
        "final math | final code | mean effective ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, runs in results.items():
        fin = [r["final"] for r in runs]
        eff = [statistics.fmean(_defined(r["effective_ratio"])) for r in runs]
        lines.append(
            f"| {method} | {len(runs)} | {fmt([r['steps_to_target'] for r in runs])} | "
            f"{fmt([r['rollouts_to_target'] for r in runs])} | "
            + "".join(
                f"{fmt([r['steps_to_target_by_domain'][d] for r in runs])} | " for d in DOMAINS
            )
            + f"{fmt([f.get('accuracy/math') for f in fin], 3)} | "
            f"{fmt([f.get('accuracy/code') for f in fin], 3)} | {fmt(eff, 2)} |"
        )
    return "\n".join(lines) + "\n"


def _defined(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def _mean(rows: list[list[float | None]]) -> list[float]:
    """Element-wise mean of equally long curves (truncated to the shortest); a point no
    run defines is NaN, which the plot leaves as a gap."""
    defined = [_defined(list(col)) for col in zip(*rows, strict=False)]
    return [statistics.fmean(col) if col else float("nan") for col in defined]


def plot(results: dict, path: Path, target: float) -> None:
    """Top: held-out accuracy (math + code) vs steps and vs generated rollouts, and the
    effective-sample ratio; bottom: each domain's accuracy vs steps. Thick lines are the
    mean over seeds, thin ones each seed (a mean alone would hide the spread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    (acc_steps, acc_rollouts, eff), (math_ax, code_ax, spare) = axes
    spare.axis("off")
    domain_axes = {"math": math_ax, "code": code_ax}
    for i, (method, runs) in enumerate(results.items()):
        color = f"C{i}"
        seed_style = {"color": color, "alpha": 0.25, "linewidth": 0.8}
        mean_style = {"color": color, "linewidth": 2.0, "label": method}
        for r in runs:  # thin: each seed
            xs, ys = zip(*r["eval_curve"], strict=True)
            acc_steps.plot(xs, ys, **seed_style)
            rollouts = [0.0] + r["rollouts_curve"]
            acc_rollouts.plot([rollouts[x] for x in xs], ys, **seed_style)
            for d, ax in domain_axes.items():
                if r["eval_curve_by_domain"].get(d):
                    ax.plot(*zip(*r["eval_curve_by_domain"][d], strict=True), **seed_style)
        # thick: the mean over seeds (runs share the evaluation steps)
        xs = [x for x, _ in runs[0]["eval_curve"]]
        mean_acc = _mean([[y for _, y in r["eval_curve"]] for r in runs])
        acc_steps.plot(xs, mean_acc, **mean_style)
        mean_rollouts = _mean([[([0.0] + r["rollouts_curve"])[x] for x in xs] for r in runs])
        acc_rollouts.plot(mean_rollouts, mean_acc, **mean_style)
        eff.plot(_mean([r["effective_ratio"] for r in runs]), **mean_style)
        for d, ax in domain_axes.items():
            curves = [[y for _, y in r["eval_curve_by_domain"].get(d, [])] for r in runs]
            if all(curves):
                ax.plot(xs, _mean(curves), **mean_style)
    acc_steps.set(xlabel="optimizer step", ylabel="held-out accuracy", title="accuracy vs steps")
    acc_rollouts.set(
        xlabel="generated rollouts", ylabel="held-out accuracy", title="accuracy vs rollouts"
    )
    eff.set(
        xlabel="optimizer step",
        ylabel="share of groups with signal",
        title="effective-sample ratio",
    )
    for d, ax in domain_axes.items():
        ax.set(xlabel="optimizer step", ylabel=f"held-out {d} accuracy", title=f"{d} only")
    for ax in (acc_steps, acc_rollouts, math_ax, code_ax):
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    for ax in (acc_steps, acc_rollouts, eff, math_ax, code_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--eval-prompts", type=int, default=0, help="cap held-out prompts (0: all)")
    ap.add_argument(
        "--train-limit",
        type=int,
        default=0,
        help="training prompts per domain (0: the run files' 512). Fewer prompts mean more "
        "epochs in the same budget, so epoch-level curricula (history resampling) act more",
    )
    ap.add_argument("--target", type=float, default=0.85)
    ap.add_argument("--out", type=Path, default=Path("runs/efficiency"))
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep runs in OUT that completed with the same settings (resume an interrupted "
        "experiment, or add seeds or methods to one) instead of training them again",
    )
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for method in args.methods:
        print(f"{method}: {METHODS[method][1]}", flush=True)
        results[method] = [summarize(run_one(method, s, args), args.target) for s in args.seeds]
    table = report(results, args)
    print(table)
    (args.out / "results.md").write_text(table)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "efficiency.png", args.target)
    print(f"wrote {args.out}/results.md, results.json, efficiency.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
