"""An experiment, not a benchmark (issue 26, measurement a): the SmolLM2 example with its vLLM
engine server on one core and the trainer on the other, ``run.max_staleness`` 0 vs 1, for a
few seeds: steps per hour and held-out greedy accuracy after the run.

    ./dev python -m benchmarks.staleness_smollm2 --seeds 0 1 2 [--steps 16] [--out DIR]

Each run is ``srpo run examples/smollm2/plugins-vllm-server.yaml`` with ``run.seed``,
``run.max_staleness``, ``run.max_steps`` set and ``algorithm.rollout_correction.mode:
token_tis`` in both settings (so they differ only in staleness), one after the other, never
two at once. Steps per hour come from the runs' own ``time/step`` (step start to its
metrics, the same span in both settings; evaluations and checkpoints excluded); accuracy is
the run's "after" evaluation. Both cores are busy in both settings (engine on one, trainer
on the other), so what staleness 1 can win is the engine's and the trainer's time no longer
adding up: on 2 shared cores the ratio is reported as measured, whatever it is.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUN_FILE = ROOT / "examples" / "smollm2" / "plugins-vllm-server.yaml"


def one_run(out: Path, seed: int, k: int, steps: int) -> dict[str, Any]:
    sets = {
        "run.seed": seed,
        "run.max_staleness": k,
        "run.max_steps": steps,
        "run.output_dir": str(out),
        "algorithm.rollout_correction.mode": "token_tis",
    }
    args = [a for key, v in sets.items() for a in ("--set", f"{key}={v}")]
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "srpo.cli", "run", str(RUN_FILE), "--overwrite", *args],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"run seed {seed} k {k} failed: {proc.stderr[-2000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps_rows = [r for r in rows if r.get("kind") == "step"]
    after = next(r for r in rows if r.get("kind") == "eval" and r.get("label") == "after")
    per_step = [float(r["time/step"]) for r in steps_rows]
    return {
        "seed": seed,
        "max_staleness": k,
        "steps": len(steps_rows),
        "mean_step_s": statistics.mean(per_step),
        "steps_per_hour": 3600 / statistics.mean(per_step),
        "after_accuracy": float(after["accuracy"]),
        "wall_s": wall,
        "staleness_mean": statistics.mean(float(r.get("staleness/mean", 0.0)) for r in steps_rows),
        "wait_rollouts_s": statistics.mean(
            float(r.get("time/wait_rollouts", 0)) for r in steps_rows
        ),
        "engine_idle_s": statistics.mean(float(r.get("time/engine_idle", 0)) for r in steps_rows),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument(
        "--staleness",
        type=int,
        nargs="+",
        default=[0, 1],
        help="the max_staleness settings to run per seed (default 0 1); with --steps, e.g. a "
        "staleness-1 run to the step count the synchronous run reaches in the same time",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "staleness-smollm2")
    ap.add_argument("--json", type=Path, default=None, help="write every run's figures here")
    a = ap.parse_args(argv)
    results = []
    for seed in a.seeds:
        for k in a.staleness:
            r = one_run(a.out / f"s{seed}-k{k}", seed, k, a.steps)
            results.append(r)
            print(
                json.dumps(
                    {key: round(v, 4) if isinstance(v, float) else v for key, v in r.items()}
                ),
                flush=True,
            )
            if a.json:
                a.json.write_text(json.dumps(results, indent=2) + "\n")
    for k in a.staleness:
        mine = [r for r in results if r["max_staleness"] == k]
        print(
            f"max_staleness {k}: {statistics.mean(r['steps_per_hour'] for r in mine):.1f} steps/h, "
            f"held-out accuracy {[round(r['after_accuracy'], 3) for r in mine]}"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
