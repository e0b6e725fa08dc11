"""The learning-efficiency experiment: GRPO vs DAPO vs SRPO (+ selection, ablations).

    ./dev python benchmarks/learning_efficiency.py                 # 7 methods x 3 seeds
    ./dev python benchmarks/learning_efficiency.py --seeds 0 --steps 20 --methods grpo srpo
    ./dev python benchmarks/learning_efficiency.py --reuse --seeds 0 1 2 3   # add a seed
    ./dev python benchmarks/learning_efficiency.py --task transfer --train-limit 128 \
        --threads 1 --jobs 2                                       # the other task, 2 at once

Every method runs the task's ``plugins.yaml`` (``--task tiny``: examples/tiny; ``transfer``:
examples/tiny_transfer, where code needs the math skill) with only the curriculum replaced
(``METHODS``), so model, data, group size, batch, optimizer and budget are identical; DAPO
pays for its over-sampling in generated rollouts. Each run evaluates held-out greedy accuracy
every ``--eval-every`` steps; the target metric is the mean of math and code accuracy.
Reported per method (mean ± std over seeds): optimizer steps and generated rollouts to first
reach the target (also per domain), final accuracy per domain, the effective-sample ratio
(share of trained groups with non-zero advantage) over the run and over its second half,
generated rollouts per trained rollout (DAPO's discarded groups; 1 for the others), and the
share of generated rollouts that carried a learning signal. ``--reuse`` keeps completed runs
made with the same settings, so an interrupted experiment continues where it stopped.
Writes ``OUT/results.md``, ``OUT/results.json`` and ``OUT/efficiency.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from srpo.report import load_run

ROOT = Path(__file__).resolve().parents[1]
#: task -> its example directory; every method runs that directory's ``plugins.yaml`` with
#: the curriculum replaced, so the methods differ in nothing else
TASKS: dict[str, Path] = {
    "tiny": ROOT / "examples" / "tiny",
    "transfer": ROOT / "examples" / "tiny_transfer",
}
#: the paper's HR rule: one epoch's window, no floor, no re-admission
PAPER_HR = {"window": 1, "min_dataset_steps": 0}
#: the step-wise selection measured here: an empirical-Bayes prior per domain, rollouts
#: fading with a half-life of 4 steps (the policy moves: a prompt trained on is soon solved),
#: and a sharpened draw (power 2, floor 0.01); options in plugins/curricula/_selection.py.
#: The half-life was chosen offline, on the GRPO runs' history (docs/results.md), after the first
#: selection runs without decay (``*_nodecay``) had shown the posterior overconfident.
SELECTION = {"prior": "empirical", "power": 2.0, "min_weight": 0.01, "half_life": 4.0}
NODECAY = {k: v for k, v in SELECTION.items() if k != "half_life"}


def _two_stage(**options: object) -> dict:
    base: dict = {
        "stage1_domains": ["math"],
        "stage2_mix": {"math": 0.5, "code": 0.5},
        "switch": {"after_epochs": 1},
        "resampling": "history",
        "hr": PAPER_HR,
    }
    return {"name": "two_stage", "options": {**base, **options}}


def _srpo_select(rules: dict) -> dict:
    return _two_stage(resampling="selection", selection=rules, stage2_shares="informative")


def _select(rules: dict) -> dict:
    return {"name": "history_resampling", "options": {"selection": "step", "step": rules}}


#: method -> (description, the curriculum that replaces the run file's)
METHODS: dict[str, tuple[str, dict]] = {
    "grpo": ("GRPO: uniform curriculum", {"name": "uniform"}),
    "dapo": (
        "DAPO: dynamic sampling (over-sample, drop zero-variance groups, refill; <= 4 rounds)",
        {"name": "dynamic_sampling", "options": {"max_generation_rounds": 4}},
    ),
    "srpo": ("SRPO, the paper's rule: two-stage + history resampling (no floor)", _two_stage()),
    "srpo_select": (
        "SRPO with step-wise selection in place of epoch-level history resampling, stage-1 "
        "domain shares by expected informative mass",
        _srpo_select(SELECTION),
    ),
    "select": (
        "step-wise history-aware selection only (no two-stage curriculum)",
        _select(SELECTION),
    ),
    "srpo_select_nodecay": (
        "srpo_select without the half-life (every past rollout counts fully)",
        _srpo_select(NODECAY),
    ),
    "select_nodecay": (
        "select without the half-life",
        _select(NODECAY),
    ),
    "hr_only": (
        "history resampling only, the paper's rule",
        {"name": "history_resampling", "options": PAPER_HR},
    ),
    "two_stage_only": ("two-stage curriculum only", _two_stage(resampling="none")),
    "hr_floor": (
        "history resampling with a floor of 64 prompts (dropped ones re-admitted, oldest first)",
        {"name": "history_resampling", "options": {**PAPER_HR, "min_dataset_size": 64}},
    ),
    "srpo_floor": (
        "SRPO with a floor of 64 prompts on history resampling",
        _two_stage(hr={"window": 1, "min_dataset_size": 64}),
    ),
    "srpo_switch8": (
        "SRPO with the stage switch after 8 steps instead of one epoch",
        _two_stage(switch={"after_steps": 8}),
    ),
}
DEFAULT_METHODS = ["grpo", "dapo", "srpo", "srpo_select", "select", "hr_only", "two_stage_only"]
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
    if args.threads:
        sets.append(f"run.threads={args.threads}")
    return [*sets, f"curriculum={json.dumps(METHODS[method][1])}"]


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
    run_file = TASKS[args.task] / "plugins.yaml"
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


def score(record: dict) -> float | None:
    """The target metric of one evaluation: the mean of the math and code accuracies (equal
    weight, whatever the held-out set sizes; other probes such as code_const left out)."""
    got = [record[f"accuracy/{d}"] for d in DOMAINS if f"accuracy/{d}" in record]
    return statistics.fmean(got) if got else record.get("accuracy")


def summarize(run_dir: Path, target: float) -> dict:
    run = load_run(run_dir)  # the report's reader: resumed steps deduplicated, torn lines skipped
    steps = {r["step"]: r for r in run.steps}
    rows = [steps[s] for s in sorted(steps)]
    evals = [{**e, "score": score(e)} for e in run.evals]
    hit_step = first_reach(evals, "score", target)
    rollouts_at = None
    if hit_step is not None:
        rollouts_at = 0.0 if hit_step == 0 else steps[hit_step - 1]["rollouts_total"]
    generated = sum(r.get("rollouts_generated", r.get("rollouts", 0.0)) for r in rows)
    trained = sum(r.get("rollouts", 0.0) for r in rows)
    # rollouts of groups with a learning signal (non-zero advantage), over all generated
    signal = sum(r.get("effective_ratio", 0.0) * r.get("rollouts", 0.0) for r in rows)
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
        "effective_ratio": [r.get("effective_ratio") for r in rows],
        "generated_per_trained": generated / trained if trained else None,
        "signal_share_of_generated": signal / generated if generated else None,
        "eval_curve": [(e["step"], e["score"]) for e in evals],
        "eval_curve_by_domain": {
            d: [(e["step"], e[f"accuracy/{d}"]) for e in evals if f"accuracy/{d}" in e]
            for d in (*DOMAINS, "code_const")
        },
        "rollouts_curve": [r["rollouts_total"] for r in rows],
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
        f"Task `{args.task}`. Target: held-out greedy accuracy ≥ {args.target:.0%} (mean of "
        f"math and code), evaluated every {args.eval_every} steps; budget {args.steps} steps; "
        f"seeds {args.seeds}; training prompts per domain: "
        f"{args.train_limit or 'as in the run files'}. Mean ± std over seeds; the math and "
        "code columns apply the same target to each domain alone. Effective ratio: share of "
        "trained groups with a learning signal (mean over steps; and over the second half); "
        "gen/trained: generated rollouts per trained rollout (= per trained group); signal "
        "share: rollouts in groups with a signal over all generated.",
        "",
        "| method | runs | steps to target | rollouts to target | steps: math | steps: code | "
        "final math | final code | effective ratio | eff. ratio, 2nd half | gen/trained | "
        "signal share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, runs in results.items():
        fin = [r["final"] for r in runs]
        eff = [_fmean(r["effective_ratio"]) for r in runs]
        late = [_fmean(r["effective_ratio"][len(r["effective_ratio"]) // 2 :]) for r in runs]
        lines.append(
            f"| {method} | {len(runs)} | {fmt([r['steps_to_target'] for r in runs])} | "
            f"{fmt([r['rollouts_to_target'] for r in runs])} | "
            + "".join(
                f"{fmt([r['steps_to_target_by_domain'][d] for r in runs])} | " for d in DOMAINS
            )
            + f"{fmt([f.get('accuracy/math') for f in fin], 3)} | "
            f"{fmt([f.get('accuracy/code') for f in fin], 3)} | {fmt(eff, 2)} | "
            f"{fmt(late, 2)} | {fmt([r['generated_per_trained'] for r in runs], 2)} | "
            f"{fmt([r['signal_share_of_generated'] for r in runs], 2)} |"
        )
    return "\n".join(lines) + "\n"


def _defined(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def _fmean(values: list[float | None]) -> float | None:
    """The mean of the defined values (None: none is)."""
    got = _defined(values)
    return statistics.fmean(got) if got else None


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
    domain_axes = {"math": math_ax, "code": code_ax, "code_const": spare}
    if not any(r["eval_curve_by_domain"].get("code_const") for rs in results.values() for r in rs):
        spare.axis("off")
        del domain_axes["code_const"]
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
    for ax in (acc_steps, acc_rollouts, *domain_axes.values()):
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    for ax in (acc_steps, acc_rollouts, eff, *domain_axes.values()):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--task", choices=list(TASKS), default="tiny", help="which tiny task")
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
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once (with --threads 1, 2 jobs use 2 cores better than 1 job on 2 threads)",
    )
    ap.add_argument("--threads", type=int, default=0, help="run.threads per run (0: run file's)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        print(f"{method}: {METHODS[method][0]}", flush=True)
    todo = [(m, s) for m in args.methods for s in args.seeds]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        dirs = list(pool.map(lambda ms: run_one(*ms, args), todo))
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for (method, _), run_dir in zip(todo, dirs, strict=True):
        results[method].append(summarize(run_dir, args.target))
    table = report(results, args)
    print(table)
    (args.out / "results.md").write_text(table)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, args.out / "efficiency.png", args.target)
    print(f"wrote {args.out}/results.md, results.json, efficiency.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
