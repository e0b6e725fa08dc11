"""GRPO loss forward+backward: fused op vs its byte floor, torch reference, eager framework style.

Run: ``./dev python -m benchmarks.bench_loss`` (alternating rounds, a table per thread count;
``--threads 1 2``, ``--reps``, ``--json PATH``), or ``./dev python -m pytest
benchmarks/bench_loss.py`` (pytest-benchmark, one benchmark per op and thread count, figures in
each benchmark's ``extra_info``). Size: N=4096 rollouts x T=1024 tokens, G=16 rollouts per
prompt, ragged lengths, float32 log-probs, bool mask; ``SRPO_BENCH_N`` / ``SRPO_BENCH_T``
shrink it, ``SRPO_BENCH_THREADS`` (default ``1,2``) picks the thread counts of the pytest run.

The bytes the op must move (``bytes_touched``), for float32 log-probs and a bool (1-byte) mask:
  per token     read logp 4 + old_logp 4 + mask 1, write the gradient d loss/d logp 4  = 13 B
                (bfloat16: 2 + 2 + 1 + 2 = 7 B; a float mask adds 3 B)
  per sequence  read the reward 4 (float32) + group id 8 (int64), write the advantage 8 = 20 B
What the CPU op actually moves differs on both sides: it reads the mask twice (row lengths
first, then the fused pass: +1 B/token, partly from cache), and in chunks of W tokens (W = 8
with AVX2, 16 with AVX-512) whose mask is all 0 it writes a zero gradient without loading
logp/old_logp (``skip_fraction`` reports their share; ~45% of this ragged batch). Its GB/s is
the nominal bytes over its time.

The floor (``floor_step``) moves exactly those bytes in one pass over the same tensors:
``torch.where(mask, logp, old_logp, out=buf)`` reads logp, old_logp and the mask and writes one
[N, T] tensor of logp's dtype, plus ``torch.add(rewards, group_ids, out=adv)`` for the
per-sequence bytes. ``copy`` is a plain ``copy_`` of the same byte count (half read, half
written), the floor of earlier runs and of the gate. Threads: the op runs its O(N*T) passes on
``at::get_num_threads()`` threads (the caller + its own helper pool, csrc/grpo_cpu.cpp), the
floor and copy on torch's OpenMP pool of the same size: ``torch.set_num_threads(k)`` sets both.
On a loaded machine an OpenMP region waits for every thread while the op's pool does not, which
flatters the op at 2 threads; at 1 thread both run on the caller alone.

On a small shared machine, wall-clock times swing with other processes' load: compare the
ratios of one run, and the mins; every result carries ``os.getloadavg()`` before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch

import srpo.ops as ops
from benchmarks.device_peaks import hbm_peak_gbs
from srpo.algo import LossConfig, grpo_loss_reference

N = int(os.environ.get("SRPO_BENCH_N", 4096))
T = int(os.environ.get("SRPO_BENCH_T", 1024))
G = 16
CFG = LossConfig(clip_low=0.2, clip_high=0.28)
BYTES_PER_SEQ = 4 + 8 + 8  # read reward (float32) + group id (int64), write advantage (float64)
#: the benchmarks of one size, fast ones first; "eager" and "reference" are the slow baselines;
#: "fused_weighted" is "fused" with rollout-correction weights (token_weight, icepop: +4 B/token)
OPS = ("floor", "copy", "fused", "fused_weighted", "reference", "eager")
BANDWIDTH_OPS = ("floor", "copy", "fused")  # the ones with a GB/s figure
SLOW_OPS = ("reference", "eager")


def make_inputs(n: int, t: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(t // 8, t + 1, (n,), generator=gen)
    old = -torch.rand(n, t, generator=gen) * 3
    batch = {
        "rewards": torch.randint(0, 2, (n,), generator=gen).float(),
        "group_ids": torch.arange(n) // G,
        "logp": old + 0.2 * torch.randn(n, t, generator=gen),
        "old_logp": old,
        "mask": torch.arange(t)[None, :] < lengths[:, None],
    }
    return {k: (v.to(dtype) if k.endswith("logp") else v).to(device) for k, v in batch.items()}


def token_bytes(dtype: torch.dtype, mask_dtype: torch.dtype = torch.bool) -> int:
    """Bytes per token the op must move: read logp, old_logp, mask; write the gradient."""
    e = torch.empty((), dtype=dtype).element_size()
    return 3 * e + torch.empty((), dtype=mask_dtype).element_size()


def bytes_touched(n: int, t: int, dtype: torch.dtype) -> int:
    """Bytes the op must move for an [n, t] batch with a bool mask (module docstring)."""
    return n * t * token_bytes(dtype) + n * BYTES_PER_SEQ


def skip_fraction(mask: torch.Tensor, width: int) -> float:
    """Share of the ``width``-token chunks whose mask is all 0 (the CPU op skips their reads)."""
    n, t = mask.shape
    t_w = t // width * width
    if t_w == 0:
        return 0.0
    chunks = mask[:, :t_w].reshape(n, t_w // width, width).any(-1)
    return float((~chunks).float().mean())


def eager_framework_loss(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
) -> torch.Tensor:
    """How popular frameworks write it: a Python loop over groups, then a materialized
    [N, T] advantage and an elementwise clipped loss (cf. verl compute_grpo_outcome_advantage
    + compute_policy_loss)."""
    scores = rewards.clone()
    id2score: dict[int, list[torch.Tensor]] = {}
    for i, g in enumerate(group_ids.tolist()):
        id2score.setdefault(g, []).append(scores[i])
    id2mean, id2std = {}, {}
    for g, vals in id2score.items():
        s = torch.stack(vals)
        id2mean[g] = s.mean() if len(vals) > 1 else torch.tensor(0.0)
        id2std[g] = s.std() if len(vals) > 1 else torch.tensor(1.0)
    for i, g in enumerate(group_ids.tolist()):
        scores[i] = (scores[i] - id2mean[g]) / (id2std[g] + 1e-6)
    m = mask.to(logp.dtype)
    advantages = scores.unsqueeze(-1) * m  # [N, T] materialized
    ratio = torch.exp(logp - old_logp)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    pg = torch.maximum(pg1, pg2)
    return (pg * m).sum() / m.sum()


def _fwd_bwd(fn, inputs: dict):
    logp = inputs["logp"].clone().requires_grad_()
    rest = {k: v for k, v in inputs.items() if k != "logp"}

    def step() -> None:
        logp.grad = None
        out = fn(logp=logp, **rest)
        loss = out if isinstance(out, torch.Tensor) else out.loss
        loss.backward()

    return step


def floor_step(inputs: dict) -> Callable[[], None]:
    """One pass moving exactly the op's bytes (module docstring), on the op's own tensors."""
    logp, old, mask = inputs["logp"], inputs["old_logp"], inputs["mask"]
    out = torch.empty_like(logp)
    adv = torch.empty(logp.shape[0], dtype=torch.float64, device=logp.device)

    def step() -> None:
        torch.where(mask, logp, old, out=out)
        torch.add(inputs["rewards"], inputs["group_ids"], out=adv)

    return step


def copy_step(nbytes: int, device: str | torch.device = "cpu") -> Callable[[], None]:
    """``copy_`` that reads nbytes/2 and writes nbytes/2."""
    src = torch.ones(nbytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def loss_step(name: str, inputs: dict) -> Callable[[], None]:
    """The callable of benchmark ``name`` (one of OPS) on ``inputs``."""
    if name == "fused":
        return _fwd_bwd(lambda **kw: ops.grpo_loss(**kw, cfg=CFG, backend="compiled"), inputs)
    if name == "fused_weighted":
        w = correction_weights_for(inputs)
        return _fwd_bwd(
            lambda **kw: ops.grpo_loss(**kw, cfg=CFG, backend="compiled", token_weight=w), inputs
        )
    if name == "reference":
        return _fwd_bwd(lambda **kw: grpo_loss_reference(**kw, cfg=CFG), inputs)
    if name == "eager":
        return _fwd_bwd(eager_framework_loss, inputs)
    if name == "floor":
        return floor_step(inputs)
    if name == "copy":
        n, t = inputs["logp"].shape
        return copy_step(bytes_touched(n, t, inputs["logp"].dtype), inputs["logp"].device)
    raise ValueError(f"unknown loss benchmark {name!r}; one of {OPS}")


def correction_weights_for(inputs: dict) -> torch.Tensor:
    """IcePop weights (srpo.algo.rollout_correction) of a behaviour policy 0.1 * N(0, 1) away
    from ``old_logp``: what the policy passes as ``token_weight`` (computed once, untimed)."""
    from srpo.algo import RolloutCorrectionOptions, correction_weights

    old = inputs["old_logp"]
    gen = torch.Generator().manual_seed(1)
    behaviour = old.cpu().float() + 0.1 * torch.randn(old.shape, generator=gen)
    w, _ = correction_weights(
        old, behaviour.to(old.device), inputs["mask"], RolloutCorrectionOptions(mode="icepop")
    )
    assert w is not None
    return w


def synchronizer(device: str | torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def figures(
    times: Sequence[float], tokens: int | None = None, nbytes: int | None = None
) -> dict[str, Any]:
    """min (best of N), median and N of some timings, with ns/token and GB/s of the min."""
    out: dict[str, Any] = {
        "min": min(times),
        "median": statistics.median(times),
        "reps": len(times),
    }
    if tokens:
        out["ns_per_token"] = out["min"] * 1e9 / tokens
    if nbytes:
        out["gbs"] = nbytes / out["min"] / 1e9
        out["gbs_median"] = nbytes / out["median"] / 1e9
    return out


@contextlib.contextmanager
def use_threads(k: int | None) -> Iterator[int]:
    """``with use_threads(k):`` torch (and so the op) on k threads (None: as they are)."""
    before = torch.get_num_threads()
    if k is not None:
        torch.set_num_threads(k)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def ratios(res: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The target ratios from ``measure``'s per-op figures, on the mins and on the medians."""
    pairs = {
        "fused_vs_floor": ("fused", "floor"),
        "fused_vs_copy": ("fused", "copy"),
        "fused_weighted_vs_fused": ("fused_weighted", "fused"),
        "eager_vs_fused": ("eager", "fused"),
        "reference_vs_fused": ("reference", "fused"),
    }
    out: dict[str, float] = {}
    for label, (a, b) in pairs.items():
        if a in res and b in res:
            out[label] = res[a]["min"] / res[b]["min"]
            out[label + "_median"] = res[a]["median"] / res[b]["median"]
    return out


def measure(
    n: int = N,
    t: int = T,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    threads: int | None = None,
    reps: int = 15,
    slow_reps: int = 3,
    names: Sequence[str] = OPS,
) -> dict[str, Any]:
    """Every benchmark in ``names`` on one [n, t] batch, in alternating rounds (each round runs
    each once, so load that comes and goes hits all of them; the slow baselines only in the
    first ``slow_reps`` rounds), after one warm-up each. Times are synchronized wall clock."""
    with use_threads(threads) as k:
        inputs = make_inputs(n, t, device, dtype)
        steps = {name: loss_step(name, inputs) for name in names}
        sync = synchronizer(device)
        for step in steps.values():
            step()
        sync()
        times: dict[str, list[float]] = {name: [] for name in names}
        load_before = load_average()
        for r in range(reps):
            for name, step in steps.items():
                if name in SLOW_OPS and r >= slow_reps:
                    continue
                t0 = time.perf_counter()
                step()
                sync()
                times[name].append(time.perf_counter() - t0)
        load_after = load_average()
    nbytes = bytes_touched(n, t, dtype)
    res = {
        name: figures(ts, n * t, nbytes if name in BANDWIDTH_OPS else None)
        for name, ts in times.items()
    }
    mask = inputs["mask"]
    return {
        "n": n,
        "t": t,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": k,
        "backend": ops.active_backend(),
        "bytes": nbytes,
        "bytes_per_token": token_bytes(dtype),
        "bytes_per_seq": BYTES_PER_SEQ,
        "skip_fraction": {w: round(skip_fraction(mask, w), 3) for w in (8, 16)},
        "load_before": load_before,
        "load_after": load_after,
        "ops": res,
        "ratios": ratios(res),
    }


def in_cache_ns_per_token(threads: int | None = None, reps: int = 200) -> float:
    """The fused fwd+bwd's cost per token with its data in cache: (time at 32 x 1024, ~0.4 MB
    of inputs and gradient, minus time at 1 x 16: the fixed per-call cost) / 32768 tokens, best
    of ``reps`` each. Close to the out-of-cache ns/token means compute-bound."""
    with use_threads(threads):
        best = {}
        for n, t in ((32, 1024), (1, 16)):
            step = loss_step("fused", make_inputs(n, t))
            step()
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                step()
                ts.append(time.perf_counter() - t0)
            best[(n, t)] = min(ts)
    return (best[(32, 1024)] - best[(1, 16)]) * 1e9 / (32 * 1024)


# --------------------------------------------------------------------------- report


def table(results: Sequence[dict[str, Any]]) -> str:
    """A markdown table of ``measure`` results (one row per result and op)."""
    lines = [
        "| threads | load before → after | op | min / median (ms) | ns/token (min) | GB/s (min) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        load = f"{r['load_before'][0]:.2f} → {r['load_after'][0]:.2f}"
        for name, f in r["ops"].items():
            gbs = f"{f['gbs']:.2f}" if "gbs" in f else ""
            lines.append(
                f"| {r['threads']} | {load} | {name} | {f['min'] * 1e3:.2f} / "
                f"{f['median'] * 1e3:.2f} | {f['ns_per_token']:.2f} | {gbs} |"
            )
    return "\n".join(lines)


def ratio_line(r: dict[str, Any]) -> str:
    q = r["ratios"]
    parts = [f"{r['threads']} thread(s):"]
    for label, key in (
        ("fused ÷ floor", "fused_vs_floor"),
        ("fused ÷ copy", "fused_vs_copy"),
        ("weighted ÷ fused", "fused_weighted_vs_fused"),
        ("eager ÷ fused", "eager_vs_fused"),
        ("reference ÷ fused", "reference_vs_fused"),
    ):
        if key in q:
            parts.append(f"{label} {q[key]:.2f}× (min) {q[key + '_median']:.2f}× (median);")
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--n", type=int, default=N)
    parser.add_argument("--t", type=int, default=T)
    parser.add_argument("--reps", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--slow-reps", type=int, default=3, help="rounds of eager/reference")
    parser.add_argument("--no-in-cache", action="store_true", help="skip the in-cache cost")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="which to run")
    args = parser.parse_args(argv)
    if ops.active_backend() == "reference":
        raise SystemExit(f"bench_loss: no compiled loss op: {ops.backend_info()['errors']}")
    print(
        f"torch {torch.__version__}, backend {ops.active_backend()}, {os.cpu_count()} CPUs, "
        f"N={args.n} T={args.t} G={G}, float32, bool mask: "
        f"{token_bytes(torch.float32)} B/token + {BYTES_PER_SEQ} B/sequence"
    )
    results = []
    for k in args.threads:
        r = measure(
            args.n, args.t, threads=k, reps=args.reps, slow_reps=args.slow_reps, names=args.ops
        )
        if not args.no_in_cache:
            r["fused_in_cache_ns_per_token"] = in_cache_ns_per_token(k)
        results.append(r)
        print(f"skip fraction (W=8, 16): {r['skip_fraction']}", flush=True)
    print(table(results))
    for r in results:
        print(ratio_line(r))
        if "fused_in_cache_ns_per_token" in r:
            print(
                f"  fused in cache {r['fused_in_cache_ns_per_token']:.2f} ns/token vs "
                f"{r['ops']['fused']['ns_per_token']:.2f} out of cache, floor "
                f"{r['ops']['floor']['ns_per_token']:.2f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


# --------------------------------------------------------------------------- pytest

THREADS = [int(x) for x in os.environ.get("SRPO_BENCH_THREADS", "1,2").split(",")]
ROUNDS = {"floor": 30, "copy": 30, "fused": 30, "reference": 4, "eager": 3}
#: per thread count: the fast baselines first, fused last (its extra_info gets the ratios)
CASES = [(k, name) for k in THREADS for name in ("floor", "copy", "reference", "eager", "fused")]
_SEEN: dict[tuple[int, str], dict[str, Any]] = {}


@pytest.fixture(scope="module")
def cpu_inputs() -> dict:
    return make_inputs(N, T)


@pytest.mark.parametrize(("threads", "name"), CASES, ids=[f"{k}t-{n}" for k, n in CASES])
def test_loss(benchmark, record, capsys, cpu_inputs, threads: int, name: str) -> None:
    if name == "fused":
        assert ops.active_backend() != "reference", ops.backend_info()
    with use_threads(threads):
        step = loss_step(name, cpu_inputs)
        before = load_average()
        benchmark.pedantic(step, rounds=ROUNDS[name], warmup_rounds=1 if name in SLOW_OPS else 2)
        after = load_average()
    st = benchmark.stats.stats
    nbytes = bytes_touched(N, T, torch.float32) if name in BANDWIDTH_OPS else None
    info = {
        "threads": threads,
        "load_before": before,
        "load_after": after,
        **figures(st.data, N * T, nbytes),
        "bytes": nbytes,
    }
    _SEEN[(threads, name)] = info
    if name == "fused":
        info["ratios"] = ratios({n: f for (k, n), f in _SEEN.items() if k == threads})
        with capsys.disabled():
            print("\n  " + ratio_line(info), end="")
    benchmark.extra_info.update(info)
    record(f"{name}, {threads} thread(s)", benchmark, **({"bytes": nbytes} if nbytes else {}))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cuda(benchmark, record, dtype) -> None:
    """Fused fwd+bwd on the GPU; the full set (floor, GB/s vs peak, linear log-probs) is
    ``python -m benchmarks.gpu``."""
    if not ops.active_backend().endswith("cuda"):
        pytest.skip("no CUDA kernels in this build")
    step = loss_step("fused", make_inputs(N, T, "cuda", dtype))

    def timed() -> None:
        step()
        torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=30, warmup_rounds=3)
    nbytes = bytes_touched(N, T, dtype)
    extra: dict[str, Any] = {"bytes": nbytes}
    peak = hbm_peak_gbs(torch.cuda.get_device_name())
    if peak:
        extra["peak_gbs"] = peak[1]
    benchmark.extra_info.update(figures(benchmark.stats.stats.data, N * T, nbytes), **extra)
    record(f"fused_cuda_{str(dtype).split('.')[-1]}", benchmark, **extra)


if __name__ == "__main__":
    main()
