"""The learning-efficiency experiment: GRPO vs DAPO vs SRPO (+ ablations) on the tiny task.

    ./dev python benchmarks/learning_efficiency.py                 # 5 methods x 3 seeds
    ./dev python benchmarks/learning_efficiency.py --seeds 0 --steps 20 --methods grpo srpo

Every method uses the same model, data, group size, batch, optimizer and budget; only the
curriculum differs (and DAPO's over-sampling, which it pays for in generated rollouts). Each
run evaluates held-out greedy accuracy (math + code) every ``--eval-every`` steps. Reported
per method (mean ± std over seeds): optimizer steps and generated rollouts to first reach the
target accuracy, final accuracy per domain, and the effective-sample ratio (share of groups
with non-zero advantage). Writes ``OUT/results.md``, ``OUT/results.json`` and
``OUT/efficiency.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny"

#: method -> (run file, description)
METHODS = {
    "grpo": ("grpo.yaml", "GRPO: uniform curriculum"),
    "dapo": ("dapo.yaml", "DAPO: dynamic sampling (over-sample, drop zero-variance groups)"),
    "srpo": ("plugins.yaml", "SRPO: two-stage + history resampling"),
    "hr_only": ("hr_only.yaml", "history resampling only"),
    "two_stage_only": ("two_stage_only.yaml", "two-stage only"),
}


def run_one(method: str, seed: int, args: argparse.Namespace) -> Path:
    out = args.out / f"{method}-seed{seed}"
    run_file = TINY / METHODS[method][0]
    cmd = [
        sys.executable,
        "-m",
        "srpo.cli",
        "run",
        str(run_file),
        "--overwrite",
        "--set",
        f"run.output_dir={out}",
        "--set",
        f"run.seed={seed}",
        "--set",
        f"run.max_steps={args.steps}",
        "--set",
        f"eval.every={args.eval_every}",
        "--set",
        "loggers=[{name: jsonl}]",
    ]
    if args.eval_prompts:
        cmd += ["--set", f"eval.max_prompts={args.eval_prompts}"]
    t = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{method} seed {seed} failed:\n{res.stderr[-3000:]}")
    print(f"  {method:15s} seed {seed}: {time.time() - t:.0f}s", flush=True)
    return out


def summarize(run_dir: Path, target: float) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if r["kind"] == "step"}
    evals = [r for r in rows if r["kind"] == "eval"]
    reached = next((e for e in evals if e["accuracy"] >= target), None)
    hit_step = None if reached is None else reached["step"]
    rollouts_at = None
    if hit_step is not None:
        rollouts_at = 0.0 if hit_step == 0 else steps[hit_step - 1]["rollouts_total"]
    last = evals[-1]
    return {
        "steps_to_target": hit_step,
        "rollouts_to_target": rollouts_at,
        "final": {k: v for k, v in last.items() if k.startswith("accuracy")},
        "effective_ratio": [steps[s]["effective_ratio"] for s in sorted(steps)],
        "eval_curve": [(e["step"], e["accuracy"]) for e in evals],
        "rollouts_curve": [steps[s]["rollouts_total"] for s in sorted(steps)],
    }


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
        f"{args.eval_every} steps; budget {args.steps} steps; seeds {args.seeds}.",
        "",
        "| method | steps to target | rollouts to target | final math | final code | "
        "mean effective ratio |",
        "|---|---|---|---|---|---|",
    ]
    for method, runs in results.items():
        fin = [r["final"] for r in runs]
        eff = [statistics.fmean(r["effective_ratio"]) for r in runs]
        lines.append(
            f"| {method} | {fmt([r['steps_to_target'] for r in runs])} | "
            f"{fmt([r['rollouts_to_target'] for r in runs])} | "
            f"{fmt([f.get('accuracy/math') for f in fin], 3)} | "
            f"{fmt([f.get('accuracy/code') for f in fin], 3)} | {fmt(eff, 2)} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for i, (method, runs) in enumerate(results.items()):
        color = f"C{i}"
        for j, r in enumerate(runs):
            xs, ys = zip(*r["eval_curve"], strict=True)
            label = method if j == 0 else None
            axes[0].plot(xs, ys, color=color, alpha=0.8, label=label)
            rollouts = [0.0] + r["rollouts_curve"]
            axes[1].plot([rollouts[x] for x in xs], ys, color=color, alpha=0.8, label=label)
            axes[2].plot(r["effective_ratio"], color=color, alpha=0.6, label=label)
    axes[0].set(xlabel="optimizer step", ylabel="held-out accuracy", title="accuracy vs steps")
    axes[1].set(
        xlabel="generated rollouts", ylabel="held-out accuracy", title="accuracy vs rollouts"
    )
    axes[2].set(
        xlabel="optimizer step",
        ylabel="share of groups with signal",
        title="effective-sample ratio",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--eval-prompts", type=int, default=0, help="cap held-out prompts (0: all)")
    ap.add_argument("--target", type=float, default=0.85)
    ap.add_argument("--out", type=Path, default=Path("runs/efficiency"))
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
    plot(results, args.out / "efficiency.png")
    print(f"wrote {args.out}/results.md, results.json, efficiency.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
