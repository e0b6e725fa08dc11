"""Generation beside the update (issue 26, measurement b): how close a step with
``run.max_staleness: 1`` comes to the ideal ``max(generate, train)`` when the engine's time is
not spent on the trainer's cores.

    ./dev python -m benchmarks.bench_staleness [--steps 10] [--reps 3] [--latency S]
        [--device cpu|cuda] [--json PATH]

The engine is a stand-in for a remote one that answers after a fixed latency without using
this machine's cores (a vLLM server on other hardware): it replays real rollouts of the tiny
model, recorded for the same steps' prompts and seeds in a first run, and sleeps out the
latency. Replaying keeps the trainer's work identical in both measured runs (same responses,
same lengths) and keeps generation's compute off the trainer's cores, which is the situation
this measures; the staleness tests prove the pipeline's rollouts are the right weights'. The
latency defaults to the measured update time, the balanced case where overlap matters most
(sum = 2 x max). In one process, side by side: the tiny math task at
``max_staleness`` 0 (generate, then train: their sum) and 1, the same steps, seeds and
threads, in interleaved pairs. Reported: the median wall-clock period of a step (end to end,
loggers included) of each, the ideal ``max(generate, train)`` from the synchronous run's own
phases, and the ratio (the bar: <= 1.10).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny"


class RemoteStandIn:
    """Wraps a sampler: answers ``latency`` seconds after each request with the rollouts the
    wrapped sampler gave for the same prompts and seeds in the recording run (generated now,
    and counted in ``misses``, if there was none)."""

    recorded: ClassVar[dict[tuple[Any, ...], Any]] = {}
    misses = 0

    def __init__(self, inner: Any, latency: float) -> None:
        self.inner, self.latency = inner, latency
        self.options = inner.options

    def generate(self, prompts: Any, n: int, *, greedy: bool = False, seeds: Any = None) -> Any:
        t = time.perf_counter()
        key = (tuple(p.id for p in prompts), n, greedy, tuple(seeds or ()))
        batch = RemoteStandIn.recorded.get(key)
        if batch is None:
            RemoteStandIn.misses += int(self.latency > 0)
            batch = self.inner.generate(prompts, n, greedy=greedy, seeds=seeds)
            RemoteStandIn.recorded[key] = batch
        batch = dataclasses.replace(batch)  # the kernel stamps versions on what it gets
        time.sleep(max(0.0, self.latency - (time.perf_counter() - t)))
        return batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def run_once(
    workdir: Path,
    k: int,
    steps: int,
    latency: float,
    threads: int,
    prompts: int = 16,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Train ``steps`` steps of the tiny math task at ``max_staleness: k`` on ``device``;
    step metrics."""
    from srpo.config import load_config
    from srpo.kernel.build import build, close_roles

    cfg = yaml.safe_load((TINY / "math_grpo.yaml").read_text())
    cfg["policy"]["path"] = str(TINY / "model")
    cfg["datasets"]["math"]["path"] = str(TINY / cfg["datasets"]["math"]["path"])
    cfg["eval"] = {}
    cfg["loggers"] = [{"name": "jsonl"}]
    cfg["checkpoint"] = {"every": 0, "keep": 1}
    cfg["run"].update(
        output_dir=str(workdir / f"k{k}"), max_steps=steps, prompts_per_step=prompts, epochs=1,
        threads=threads, max_staleness=k, seed=0, device=device,
    )  # fmt: skip
    cfg["algorithm"]["rollout_correction"] = {"mode": "token_tis"}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"k{k}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    kernel = build(load_config(path))
    try:
        kernel.roles.sampler = RemoteStandIn(kernel.roles.sampler, latency)  # type: ignore[assignment]
        ends: list[float] = []  # wall clock at each step's end: the period, loggers included
        finish = kernel._finish_step

        def timed_finish(metrics: dict[str, float]) -> None:
            finish(metrics)
            ends.append(time.perf_counter())

        kernel._finish_step = timed_finish  # type: ignore[method-assign]
        kernel.run()
    finally:
        close_roles(kernel)
    rows = [json.loads(x) for x in (workdir / f"k{k}" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("kind") == "step"]
    for r, a, b in zip(steps[1:], ends, ends[1:], strict=False):
        r["period"] = b - a  # end of the previous step to end of this one
    return steps


def median(rows: list[dict[str, Any]], key: str, skip: int = 1) -> float:
    return statistics.median(float(r.get(key) or 0.0) for r in rows[skip:])


def measure(sync: list[dict[str, Any]], ahead: list[dict[str, Any]]) -> dict[str, float]:
    """One repetition: the synchronous run's phases and step, the overlapped run's step, and
    the two ideals: from the synchronous run's phases, and from the overlapped run's own
    main-thread work (its step minus the time it waited for rollouts) against the latency,
    which takes the machine's drift between the two runs out of the pipeline's overhead."""
    generate = median(sync, "time/generate")
    step0, step1 = median(sync, "period", skip=2), median(ahead, "period", skip=2)
    train = step0 - generate  # the synchronous cycle is their sum
    work1 = step1 - median(ahead, "time/wait_rollouts")
    return {
        "generate_s": generate,
        "train_s": train,
        "step_staleness0_s": step0,
        "step_staleness1_s": step1,
        "staleness1_over_ideal": step1 / max(generate, train),
        "staleness1_over_own_ideal": step1 / max(generate, work1),
        "speedup": step0 / step1,
        "update_s_staleness1": median(ahead, "time/update"),
        "wait_rollouts_s": median(ahead, "time/wait_rollouts"),
        "engine_idle_s": median(ahead, "time/engine_idle"),
    }


def measure_pipeline(
    steps: int,
    prompts: int,
    reps: int,
    threads: int,
    latency: float | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """The whole measurement: a recording run, then ``reps`` interleaved pairs of runs at
    staleness 0 and 1; the medians and each pair (also ``benchmarks.gpu``'s, on CUDA)."""
    reps_out = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        record = run_once(work / "record", 0, steps, 0.0, threads, prompts, device)
        gc.collect()
        if latency is None:  # the balanced case: engine latency = the update's time
            latency = round(max(0.1, median(record, "time/update")), 2)
        for i in range(reps):  # interleaved A-B, B-A: drift hits both settings alike
            got = {}
            for k in (0, 1) if i % 2 == 0 else (1, 0):
                got[k] = run_once(work / f"{i}-{k}", k, steps, latency, threads, prompts, device)
                gc.collect()  # the finished run's model and optimizer, before the next
            reps_out.append(measure(got[0], got[1]))
    load = os.getloadavg()
    return {
        "device": device,
        "threads": threads,
        "load_avg_1m": round(load[0], 2),
        "steps": steps,
        "prompts_per_step": prompts,
        "reps": reps,
        "engine_latency_s": latency,
        "replay_misses": RemoteStandIn.misses,
        "median": {k: round(statistics.median(r[k] for r in reps_out), 3) for k in reps_out[0]},
        "each": [{k: round(v, 3) for k, v in r.items()} for r in reps_out],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="steps per run (the first is a bubble)")
    ap.add_argument(
        "--latency", type=float, default=None, help="engine latency, s (default: update time)"
    )
    ap.add_argument("--prompts", type=int, default=64, help="prompts per step (8 rollouts each)")
    ap.add_argument("--reps", type=int, default=4, help="repetitions of the pair of runs")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the trainer")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="the trainer's")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args(argv)
    out = measure_pipeline(a.steps, a.prompts, a.reps, a.threads, a.latency, a.device)
    mid, latency = out["median"], out["engine_latency_s"]
    print(
        f"{a.device}, threads {a.threads}, load {out['load_avg_1m']:.2f}, {a.prompts} prompts x 8 "
        f"per step; median of {a.reps} interleaved pairs of runs (each: median wall-clock "
        f"period of steps 3..{a.steps}, end of one step to end of the next):\n"
        f"  engine latency {latency:.2f} s, train {mid['train_s']:.3f} s\n"
        f"  max_staleness 0: {mid['step_staleness0_s']:.3f} s/step   "
        f"max_staleness 1: {mid['step_staleness1_s']:.3f} s/step "
        f"(speed-up {mid['speedup']:.2f}x)\n"
        f"  staleness 1 / max(generate, train) = {mid['staleness1_over_ideal']:.3f} "
        f"(bar <= 1.10); / max(latency, its own work) = {mid['staleness1_over_own_ideal']:.3f}\n"
        f"  each pair: {[r['staleness1_over_ideal'] for r in out['each']]}"
    )
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
