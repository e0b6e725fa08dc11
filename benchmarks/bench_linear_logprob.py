"""Fused linear log-probs (srpo.ops.linear_logprobs) vs eager, forward + backward, time and memory.

Run: ``python benchmarks/bench_linear_logprob.py [--shapes qwen smollm] [--reps 3]`` (not a
pytest test: one eager run at the Qwen shape takes tens of seconds on a small CPU).

Each variant computes ``logp`` and the entropy at temperature 0.7 and backpropagates
``logp.sum()`` into hidden [N, H] and weight [V, H] (float32, N = 2048 tokens):
  eager  ``logits = h @ W.T; lp = log_softmax(logits / t); lp.gather(targets)``, entropy
         ``-(lp.exp() * lp).sum(-1)`` under no_grad (it needs no gradient in either variant)
  fused  ``linear_logprobs(h, W, targets, t, with_entropy=True)`` (default 2048 x 4096 blocks)

On a GPU, ``python -m benchmarks.gpu`` runs both shapes in process through
``measure_in_process`` (peak memory from ``torch.cuda.max_memory_allocated``).

Method (CPU). Each measurement is a fresh process (``--child VARIANT SHAPE``) that allocates
and touches the inputs, reads its resident set size (/proc/self/statm) as the baseline, runs the
variant once, and reports wall time and ``ru_maxrss - baseline`` = the peak extra memory of
forward + backward (the gradients h.grad and W.grad included: they are outputs both variants
must hold; the figure without them is printed too). A fresh process is what makes ru_maxrss a
per-variant peak; large CPU tensors are mmap'ed by malloc and page-faulted on first touch in
any process, so a warm process would not be faster for them. The variants alternate (eager,
fused, eager, fused, ...) and the best (min) time of each is compared, since the machine is
shared and noisy; the load average (``os.getloadavg``) is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPES = {"qwen": (2048, 896, 151_936), "smollm": (2048, 576, 49_152)}  # N, H, V
TEMPERATURE = 0.7
ROOT = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _inputs(
    n: int, h: int, v: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=gen).to(device).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) * (3.0 / h**0.5)).to(device).requires_grad_()
    return hidden, weight, torch.randint(0, v, (n,), generator=gen).to(device)


def _eager(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    logits = hidden @ weight.T
    lp = torch.log_softmax(logits / TEMPERATURE, dim=-1)
    logp = lp.gather(1, targets[:, None]).squeeze(1)
    with torch.no_grad():
        _entropy = -(lp.exp() * lp).sum(-1)
    logp.sum().backward()


def _fused(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    from srpo.ops import linear_logprobs

    logp, _entropy = linear_logprobs(hidden, weight, targets, TEMPERATURE, True, backend="compiled")
    logp.sum().backward()


def child(variant: str, shape: str) -> None:
    """One measurement; prints a JSON line."""
    import srpo.ops  # noqa: F401 (load the extension before the baseline)

    n, h, v = SHAPES[shape]
    hidden, weight, targets = _inputs(n, h, v)
    if variant == "fused":  # load + register the op outside the measurement
        _fused(*_inputs(4, h, 16))
    base = _rss_bytes()
    t0 = time.perf_counter()
    (_eager if variant == "eager" else _fused)(hidden, weight, targets)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    grads = hidden.grad.nbytes + weight.grad.nbytes
    out = {"seconds": seconds, "extra": peak - base, "grads": grads}
    print(json.dumps(out), flush=True)


def _measure(variant: str, shape: str) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, shape]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(res.stdout.strip().splitlines()[-1])


def gemm_flops(n: int, h: int, v: int) -> dict[str, float]:
    """Executed GEMM FLOPs of forward + backward: eager 3 GEMMs (logits, grad hidden, grad
    weight), fused 4 (backward recomputes the logits)."""
    one = 2.0 * n * h * v
    return {"eager": 3 * one, "fused": 4 * one}


def measure_in_process(n: int, h: int, v: int, device: str = "cpu", reps: int = 3) -> dict:
    """Both variants in this process on ``device``, alternating (eager, fused, ...) after one
    warm-up each: best (min) and median synchronized wall time, and on CUDA the peak extra memory
    of forward + backward (``torch.cuda.max_memory_allocated`` minus what was allocated before,
    the gradients included: both variants must hold them). CPU memory is not measured in
    process (see the module docstring for the subprocess method); its ``extra`` is None."""
    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    hidden, weight, targets = _inputs(n, h, v, device)
    variants = {"eager": _eager, "fused": _fused}
    times: dict[str, list[float]] = {k: [] for k in variants}
    extra: dict[str, int | None] = {k: None for k in variants}
    for r in range(reps + 1):  # round 0 is the warm-up
        for name, fn in variants.items():
            hidden.grad = weight.grad = None
            sync()
            if cuda:
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            fn(hidden, weight, targets)
            sync()
            if r > 0:
                times[name].append(time.perf_counter() - t0)
            if cuda:
                peak = torch.cuda.max_memory_allocated() - base
                extra[name] = max(extra[name] or 0, peak)
    flops = gemm_flops(n, h, v)
    out: dict = {"n": n, "h": h, "v": v, "device": str(device), "reps": reps}
    out["grads"] = hidden.grad.nbytes + weight.grad.nbytes
    for name, ts in times.items():
        best = min(ts)
        out[name] = {
            "min": best,
            "median": statistics.median(ts),
            "extra": extra[name],
            "flops": flops[name],
            "tflops": flops[name] / best / 1e12,
        }
    out["time_ratio"] = out["fused"]["min"] / out["eager"]["min"]
    if cuda:
        out["memory_ratio"] = out["fused"]["extra"] / out["eager"]["extra"]
    return out


def run_shape(shape: str, reps: int) -> None:
    runs: dict[str, list[dict]] = {"eager": [], "fused": []}
    for _ in range(reps):
        for variant in ("eager", "fused"):  # alternate: both see the same load drift
            runs[variant].append(_measure(variant, shape))
            r = runs[variant][-1]
            print(
                f"  {shape:7} {variant:6} {r['seconds']:8.2f} s  extra {r['extra'] / 2**20:8.0f} MiB"
            )
    best = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
    extra = {k: max(r["extra"] for r in v) for k, v in runs.items()}
    grads = runs["eager"][0]["grads"]
    no_grads = {k: max(x - grads, 1) for k, x in extra.items()}
    n, h, v = SHAPES[shape]
    print(f"{shape} N={n} H={h} V={v} float32 T={TEMPERATURE}, {torch.get_num_threads()} threads")
    print(
        f"  time   eager {best['eager']:.2f} s  fused {best['fused']:.2f} s  "
        f"fused/eager {best['fused'] / best['eager']:.3f} (best of {reps}; target <= 1.2)"
    )
    print(
        f"  memory eager {extra['eager'] / 2**20:.0f} MiB  fused {extra['fused'] / 2**20:.0f} MiB  "
        f"fused/eager {extra['fused'] / extra['eager']:.3f} (target <= 0.125); without the "
        f"{grads / 2**20:.0f} MiB of gradients: {no_grads['fused'] / no_grads['eager']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["qwen", "smollm"], choices=list(SHAPES))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "SHAPE"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"load average before {os.getloadavg()}"
    )
    for shape in args.shapes:
        run_shape(shape, args.reps)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
