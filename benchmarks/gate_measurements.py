"""The gated measurements: each target ratio timed in one process, candidate vs baseline.

A gate's ratio is candidate vs baseline measured side by side: the two are timed
alternately (``alternate``: baseline, candidate, baseline, ...) and each side keeps its best
(minimum) time, so load that comes and goes hits both and a single slow repetition cannot
fail a gate. Sizes are small (the whole gated subset takes a few minutes on 2 loaded cores).
Each measurement returns ``{gate name: ratio, ..., "details": {...}}``; ``MEASUREMENTS``
names them and ``GATE_SOURCES`` says which one produces each gate. Kept apart from the
pass/fail logic (``benchmarks.gate_rules``) and the command (``benchmarks.gate``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- timing


def alternate(
    baseline: Callable[[], Any], candidate: Callable[[], Any], reps: int, warmup: int = 1
) -> tuple[float, float]:
    """Best (minimum) seconds of each, timed alternately ``reps`` times after ``warmup``."""
    for _ in range(warmup):
        baseline()
        candidate()
    best_b = best_c = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        baseline()
        best_b = min(best_b, time.perf_counter() - t)
        t = time.perf_counter()
        candidate()
        best_c = min(best_c, time.perf_counter() - t)
    return best_b, best_c


# --------------------------------------------------------------------------- measurements
# Each returns {gate name: ratio, ..., "details": {...}}.


def measure_loss(n: int = 2048, t: int = 1024, reps: int = 5, threads: int = 1) -> dict[str, Any]:
    """Fused GRPO loss fwd+bwd vs the eager framework-style loss, and vs the copy floor, all
    on ``threads`` torch threads (1: a 2-thread OpenMP region on a loaded 2-core machine
    waits for its descheduled twin, which swung these ratios 3x from run to run)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        r = _measure_loss(n, t, reps)
    finally:
        torch.set_num_threads(before)
    r["details"]["threads"] = threads
    return r


def _measure_loss(n: int, t: int, reps: int) -> dict[str, Any]:
    import torch

    import srpo.ops as ops
    from benchmarks.bench_loss import (
        CFG,
        _fwd_bwd,
        bytes_touched,
        eager_framework_loss,
        make_inputs,
    )

    if ops.active_backend() == "reference":
        raise RuntimeError(f"no compiled loss op: {ops.backend_info()}")
    inputs = make_inputs(n, t)
    fused = _fwd_bwd(lambda **kw: ops.grpo_loss(**kw, cfg=CFG, backend="compiled"), inputs)
    eager = _fwd_bwd(eager_framework_loss, inputs)
    half = bytes_touched(n, t, torch.float32) // 2
    src = torch.ones(half, dtype=torch.uint8)
    dst = torch.empty_like(src)

    def copy() -> None:
        dst.copy_(src)

    t_eager, t_fused = alternate(eager, fused, reps)
    # the copy is much faster than eager: more repetitions for a stable minimum
    t_copy, t_fused2 = alternate(copy, fused, 3 * reps)
    t_fused = min(t_fused, t_fused2)
    return {
        "fused_vs_eager": t_eager / t_fused,
        "fused_vs_copy": t_fused / t_copy,
        "details": {
            "n": n,
            "t": t,
            "reps": reps,
            "fused_s": t_fused,
            "eager_s": t_eager,
            "copy_s": t_copy,
        },
    }


def measure_history(records: int = 1_000_000, reps: int = 3) -> dict[str, Any]:
    """Per-prompt epoch summary: Parquet (read + group-by) time ÷ srpo history store time,
    each in a fresh subprocess that times only the summary (``bench_history.run_summary``)."""
    from benchmarks.bench_history import BATCH, run_summary, write_parquet, write_srpo

    tmp = Path(tempfile.mkdtemp(prefix="gate-history-"))
    try:
        srpo_path, pq_path = tmp / "history", tmp / "h.parquet"
        write_srpo(srpo_path, records, BATCH, durable=False)
        write_parquet(pq_path, records, BATCH)
        best = {"parquet": float("inf"), "srpo": float("inf")}
        checks = set()
        for _ in range(reps):
            for kind, path in (("parquet", pq_path), ("srpo", srpo_path)):
                r = run_summary(kind, path)
                best[kind] = min(best[kind], r["seconds"])
                checks.add(r["check"])
        if len(checks) != 1:
            raise RuntimeError("srpo and Parquet epoch summaries disagree")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "history_vs_parquet": best["parquet"] / best["srpo"],
        "details": {
            "records": records,
            "reps": reps,
            "srpo_s": best["srpo"],
            "parquet_s": best["parquet"],
        },
    }


def measure_code(programs: int = 32, reps: int = 2) -> dict[str, Any]:
    """Sandboxed code verifier time ÷ bare ``python -I`` subprocess time, same programs and
    concurrency (the sandbox's overhead; lower is better)."""
    from concurrent.futures import ThreadPoolExecutor

    from srpo_plugins.verifiers.code import CodeVerifier

    from benchmarks import bench_code_verifier as bcv
    from srpo.api import PluginContext

    prompts, responses, bare = (x[:programs] for x in bcv.programs())
    workers = bcv.WORKERS
    v = CodeVerifier(
        CodeVerifier.Options(), PluginContext(run_dir=ROOT, seed=0, num_workers=workers)
    )
    ok: list[bool] = []

    def run_bare() -> None:
        with ThreadPoolExecutor(workers) as pool:
            ok.extend(pool.map(lambda s: bcv._bare_run(s, True), bare))

    def run_sandboxed() -> None:
        ok.extend(s.correct for s in v.score(prompts, responses))

    try:
        t_bare, t_box = alternate(run_bare, run_sandboxed, reps, warmup=0)
        backend = v.backend.name
    finally:
        v.close()
    if not all(ok):
        raise RuntimeError("a correct program was scored wrong")
    return {
        "sandbox_overhead": t_box / t_bare,
        "details": {
            "programs": programs,
            "workers": workers,
            "reps": reps,
            "backend": backend,
            "bare_s": t_bare,
            "sandboxed_s": t_box,
        },
    }


def measure_math(answers: int = 400, reps: int = 3) -> dict[str, Any]:
    """math-verify parse+verify in process ÷ srpo math verifier (fast path), same answers."""
    from math_verify import parse, verify
    from srpo_plugins.verifiers.math import MathVerifier

    from benchmarks.bench_math_verifier import answers as make_answers
    from srpo.api import PluginContext

    prompts, responses = (x[:answers] for x in make_answers())
    expected = [k % 2 == 0 for k in range(answers)]
    v = MathVerifier(MathVerifier.Options(), PluginContext(run_dir=ROOT, seed=0))
    got: dict[str, list[bool]] = {}

    def baseline() -> None:
        got["math_verify"] = [
            bool(verify(parse("\\boxed{" + str(p.reference) + "}"), parse(r)))
            for p, r in zip(prompts, responses, strict=True)
        ]

    def candidate() -> None:
        got["srpo"] = [s.correct for s in v.score(prompts, responses)]

    try:
        t_mv, t_fast = alternate(baseline, candidate, reps)
    finally:
        v.close()
    if got["math_verify"] != expected or got["srpo"] != expected:
        raise RuntimeError("a verifier decided an answer wrongly")
    return {
        "math_fast_path": t_mv / t_fast,
        "details": {
            "answers": answers,
            "reps": reps,
            "math_verify_s": t_mv,
            "fast_path_s": t_fast,
        },
    }


def tiny_kernel(
    run_dir: Path, prompts_per_step: int = 8, max_new_tokens: int = 32, threads: int = 1
) -> Any:
    """The tiny task (examples/tiny/math_grpo.yaml) as ``srpo run`` builds it: history
    store, console + jsonl loggers; no held-out evaluation; a smaller batch."""
    import yaml

    from srpo.config import load_config
    from srpo.kernel.build import build
    from srpo.kernel.history_hook import open_history

    tiny = ROOT / "examples" / "tiny"
    cfg = yaml.safe_load((tiny / "math_grpo.yaml").read_text())
    cfg["policy"]["path"] = str(tiny / "model")
    cfg["datasets"]["math"]["path"] = str(tiny / cfg["datasets"]["math"]["path"])
    cfg["eval"] = {}
    cfg["run"].update(output_dir=str(run_dir / "run"), prompts_per_step=prompts_per_step)
    cfg["run"]["threads"] = threads
    cfg["sampler"]["options"]["max_new_tokens"] = max_new_tokens
    path = run_dir / "gate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return build(load_config(path), history_factory=open_history)


@contextmanager
def tiny_kernel_run(prefix: str, **kw: Any) -> Iterator[Any]:
    """A ``tiny_kernel`` in a temporary directory, at the start of epoch 0; afterwards its
    roles and history store closed, the directory removed and torch's thread count restored
    (the kernel sets ``run.threads``)."""
    import torch

    from srpo.kernel.build import close_roles

    threads_before = torch.get_num_threads()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    kernel = None
    try:
        kernel = tiny_kernel(tmp, **kw)
        kernel.roles.curriculum.begin_epoch(0)
        yield kernel
    finally:
        if kernel is not None:
            close_roles(kernel)
            if kernel.history is not None:
                kernel.history.close()
        shutil.rmtree(tmp, ignore_errors=True)
        torch.set_num_threads(threads_before)


PARTS = ("generate", "verify", "update", "history")


def measure_kernel(
    steps: int = 4, prompts_per_step: int = 8, max_new_tokens: int = 32, threads: int = 1
) -> dict[str, Any]:
    """Share of a training step spent outside generation, verification, the update and the
    history commit, on the tiny task. Two figures, both from the step's own timings:
    ``time/other ÷ time/step`` (inside ``Kernel.step``'s clock), and the gated one, which
    also counts what runs after that clock stops (curriculum ``observe``, the StepEnd event
    to the loggers): (wall time of ``Kernel.step()`` − the four parts) ÷ that wall time."""
    from srpo.api import Logger
    from srpo.events import StepEnd

    class Collect(Logger):
        def __init__(self) -> None:
            self.metrics: list[dict[str, float]] = []

        def on_event(self, event: Any) -> None:
            if isinstance(event, StepEnd):
                self.metrics.append(dict(event.metrics))

    kw = {"prompts_per_step": prompts_per_step, "max_new_tokens": max_new_tokens}
    with tiny_kernel_run("gate-kernel-", threads=threads, **kw) as kernel:
        collect = Collect()
        kernel.roles.loggers.append(collect)
        kernel.step()  # warm-up (first-call allocations, lazy imports)
        walls = []
        for _ in range(steps):
            t = time.perf_counter()
            kernel.step()
            walls.append(time.perf_counter() - t)
        ms = collect.metrics[1:]
        t = time.perf_counter()
        for _ in range(5):  # the step-start snapshot (before time/step's clock starts)
            kernel.snapshot()
        snapshot_s = (time.perf_counter() - t) / 5
        wall = sum(walls)
        parts = sum(m[f"time/{p}"] for m in ms for p in PARTS)
        other = sum(m["time/other"] for m in ms)
        step = sum(m["time/step"] for m in ms)
        details = {
            "steps": steps,
            "prompts_per_step": prompts_per_step,
            "rollouts_per_step": int(ms[0]["rollouts_generated"]),
            "max_new_tokens": max_new_tokens,
            "threads": threads,
            "step_s": step / steps,
            "wall_s": wall / steps,
            "other_s": other / steps,
            "other_share_in_step": other / step,
            "snapshot_s": snapshot_s,
            **{f"{p}_s": sum(m[f"time/{p}"] for m in ms) / steps for p in PARTS},
        }
    return {"kernel_overhead": (wall - parts) / wall, "details": details}


MEASUREMENTS: dict[str, Callable[[], dict[str, Any]]] = {
    "loss": measure_loss,
    "history": measure_history,
    "code": measure_code,
    "math": measure_math,
    "kernel": measure_kernel,
}

#: gate name -> the measurement that produces it
GATE_SOURCES = {
    "fused_vs_eager": "loss",
    "fused_vs_copy": "loss",
    "history_vs_parquet": "history",
    "sandbox_overhead": "code",
    "math_fast_path": "math",
    "kernel_overhead": "kernel",
}
