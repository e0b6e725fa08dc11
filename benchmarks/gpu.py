"""Every compiled-op benchmark on a CUDA device, its figures written into RESULTS.md.

    ./dev python -m benchmarks.gpu                   # on a machine with a GPU: a few minutes
    ./dev python -m benchmarks.gpu --device cpu      # the same code at tiny sizes (its test)
    options: --results PATH (default benchmarks/RESULTS.md), --json PATH, --reps N

What it runs, all forward + backward, side by side in one process:
  * the fused GRPO loss (bench_loss.measure) in float32 and bfloat16 at the bench_loss size
    (N=4096 x T=1024: fused op, its byte floor, copy, torch reference, eager framework-style)
    and at 16x the tokens (16384 x 4096: fused, floor and copy only), where the GPU's
    bandwidth rather than the per-call host cost decides;
  * the fused linear log-probs (bench_linear_logprob.measure_in_process) at N=2048 tokens,
    H=896, V=151936 (Qwen2.5) and H=576, V=49152 (SmolLM2-135M) against eager
    h @ W.T -> log_softmax -> gather, with peak memory (torch.cuda.max_memory_allocated);
  * a device-to-device copy_ of 1 GiB: the achievable bandwidth;
  * one policy update of SmolLM2-135M on 64 long-tail rollouts (bench_long: mean 250, max
    2,048 tokens), the padded layout from before token budgets vs packed passes;
  * the pipeline of generation beside the update (bench_staleness): the tiny task's trainer on
    the GPU, an engine whose time is not the trainer's, step time at max_staleness 1 against
    max(generate, train).
GB/s of the loss is its bytes (bench_loss.bytes_touched: 13 B/token in float32, 7 in bfloat16,
+20 B/sequence) over its time, as a share of the device's HBM peak (device_peaks: vendor figures
by device name; else memory clock x bus width from the device's properties) and of the measured
copy. Times are wall clock around each call with a synchronize (what a training step
sees, host overhead included) and, on CUDA, the device's busy time per call from the profiler
(kernels only; the GB/s against the peak uses it).

The figures replace the part of RESULTS.md between ``<!-- gpu:begin -->`` and
``<!-- gpu:end -->`` (appended with a heading when the markers are missing); the rest of the
file is left byte for byte. Without a CUDA device it exits with status 2 and one line, unless
``--device cpu``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.device_peaks import hbm_peak_gbs, properties_peak_gbs

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"
BEGIN, END = "<!-- gpu:begin -->", "<!-- gpu:end -->"
HEADING = "## Compiled ops on a GPU (`benchmarks/gpu.py`)"

# --------------------------------------------------------------------------- RESULTS.md section


def replace_section(text: str, body: str) -> str:
    """``text`` with the part between the markers replaced by ``body`` (markers kept; the rest
    unchanged), or with a heading and the marked section appended when there are none."""
    nb, ne = text.count(BEGIN), text.count(END)
    if nb == ne == 0:
        return text.rstrip("\n") + f"\n\n{HEADING}\n\n{BEGIN}\n{body.strip()}\n{END}\n"
    b, e = text.find(BEGIN), text.find(END)
    if nb != 1 or ne != 1 or e < b:
        raise ValueError(f"expected one {BEGIN} before one {END}, found {nb} and {ne}")
    return text[: b + len(BEGIN)] + "\n" + body.strip() + "\n" + text[e:]


def write_section(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(replace_section(text, body))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- measurements

SIZES: dict[str, dict[str, Any]] = {
    "cuda": {
        "loss": [(4096, 1024, "all"), (16384, 4096, "bandwidth")],
        "linear": {"Qwen2.5": (2048, 896, 151_936), "SmolLM2-135M": (2048, 576, 49_152)},
        "copy_bytes": 2 << 30,  # 1 GiB read + 1 GiB written
        "reps": 20,
        # issue 24's long-tail update on SmolLM2 (its weights, built by the example's script)
        "long": {"rollouts": 64, "mean": 250.0, "max_len": 2048, "reps": 2, "model": "smollm2"},
        # issue 26's pipeline efficiency: the trainer on the GPU, a stand-in remote engine
        "staleness": {"steps": 10, "prompts": 64, "reps": 2},
    },
    "cpu": {  # the command's own check: tiny, a few seconds
        "loss": [(64, 128, "all"), (128, 256, "bandwidth")],
        "linear": {"tiny-a": (64, 64, 1024), "tiny-b": (64, 32, 512)},
        "copy_bytes": 8 << 20,
        "reps": 3,
        "long": {"rollouts": 16, "mean": 24.0, "max_len": 64, "reps": 1, "model": "tiny"},
        "staleness": {"steps": 4, "prompts": 8, "reps": 1},
    },
}


def device_busy_seconds(fn: Callable[[], Any], calls: int = 10) -> float | None:
    """Seconds per call the CUDA device spent in kernels, memsets and copies while ``fn`` ran
    ``calls`` times (torch.profiler; one stream, so the events do not overlap). None if the
    profiler gave nothing."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
        busy_us = sum(
            e.time_range.elapsed_us()
            for e in prof.events()
            if getattr(e, "device_type", None) == DeviceType.CUDA
        )
    except Exception as exc:  # the wall-clock figures stand without it
        print(f"benchmarks.gpu: profiler failed ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    return busy_us / calls / 1e6 if busy_us > 0 else None


def measure_copy(device: str, nbytes: int, reps: int) -> dict[str, Any]:
    from benchmarks.bench_loss import copy_step, figures, synchronizer

    step, sync = copy_step(nbytes, device), synchronizer(device)
    step()
    sync()
    times = []
    for _ in range(max(reps, 5)):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    out = figures(times, nbytes=nbytes)
    out["bytes"] = nbytes
    if device == "cuda":
        busy = device_busy_seconds(step)
        if busy:
            out["device_s"] = busy
            out["device_gbs"] = nbytes / busy / 1e9
    return out


def measure_loss(device: str, n: int, t: int, dtype: Any, which: str, reps: int) -> dict[str, Any]:
    from benchmarks import bench_loss as bl

    names = bl.OPS if which == "all" else bl.BANDWIDTH_OPS
    r = bl.measure(n, t, device=device, dtype=dtype, reps=reps, slow_reps=3, names=names)
    if device == "cuda":  # the device's busy time per call, for the bandwidth figures
        inputs = bl.make_inputs(n, t, device, dtype)
        for name in bl.BANDWIDTH_OPS:
            busy = device_busy_seconds(bl.loss_step(name, inputs))
            if busy:
                r["ops"][name]["device_s"] = busy
                r["ops"][name]["device_gbs"] = r["bytes"] / busy / 1e9
    return r


def measure_long(device: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One ``Policy.update`` on long-tail rollouts (bench_long): the padded layout from before
    token budgets vs packed token-budget passes, time and peak memory
    (``max_memory_allocated`` on CUDA). No activation checkpointing: on a GPU both layouts
    fit, so the memory column is what each layout's passes really keep."""
    from benchmarks import bench_long

    if spec["model"] == "tiny":  # the command's own check: the shipped tiny model
        model_dir = HERE.parent / "examples" / "tiny" / "model"
    else:
        model_dir = bench_long.smollm2_dir()
    return bench_long.measure(
        spec["rollouts"], spec["mean"], spec["max_len"], spec["reps"], device,
        layouts=("before", "packed"), model_dir=model_dir,
    )  # fmt: skip


def measure_staleness(device: str, size: dict[str, Any]) -> dict[str, Any]:
    """Step time at ``max_staleness`` 1 against max(generate, train) with the trainer on
    ``device`` and an engine whose time is not the trainer's (bench_staleness's stand-in that
    replays real rollouts after a latency equal to the update time)."""
    from benchmarks.bench_staleness import measure_pipeline

    spec = size["staleness"]
    threads = 1 if device == "cpu" else 2
    return measure_pipeline(spec["steps"], spec["prompts"], spec["reps"], threads, device=device)


def run_all(device: str, reps: int | None = None) -> dict[str, Any]:
    """Every benchmark; a failing one is recorded (``error``) and the others still run."""
    import torch

    import srpo.ops as ops

    size = SIZES[device]
    reps = reps or size["reps"]
    out: dict[str, Any] = {"device": device, "reps": reps, "errors": []}
    out["env"] = environment(device)

    def attempt(label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            r = fn()
        except Exception as exc:  # one broken benchmark must not lose the others' figures
            line = f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            out["errors"].append(line)
            r = {"error": line}
        r["label"], r["seconds"] = label, time.perf_counter() - t0
        print(f"benchmarks.gpu: {label} done in {r['seconds']:.1f} s", file=sys.stderr)
        return r

    out["copy"] = attempt("copy", lambda: measure_copy(device, size["copy_bytes"], reps))
    out["loss"] = [
        attempt(
            f"loss {n}x{t} {str(dtype).removeprefix('torch.')}",
            lambda n=n, t=t, dtype=dtype, which=which: measure_loss(
                device, n, t, dtype, which, reps
            ),
        )
        for n, t, which in size["loss"]
        for dtype in (torch.float32, torch.bfloat16)
    ]
    from benchmarks.bench_linear_logprob import measure_in_process

    out["linear"] = [
        attempt(
            f"linear {label}",
            lambda dims=dims: measure_in_process(*dims, device=device, reps=min(reps, 5)),
        )
        for label, dims in size["linear"].items()
    ]
    for r, label in zip(out["linear"], size["linear"], strict=True):
        r["shape"] = label
    out["long"] = attempt("long-answer update", lambda: measure_long(device, size["long"]))
    out["staleness"] = attempt("staleness pipeline", lambda: measure_staleness(device, size))
    out["env"]["backend"] = ops.active_backend()
    return out


def environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": _commit(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env["name"] = torch.cuda.get_device_name(0)
        env["memory_gib"] = props.total_memory / 2**30
        env["sms"] = props.multi_processor_count
        env["capability"] = f"{props.major}.{props.minor}"
        env["table_peak"] = hbm_peak_gbs(env["name"])
        env["properties_peak_gbs"] = properties_peak_gbs(0)
    else:
        env["name"] = "CPU"
    return env


def _commit() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=HERE,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None


# --------------------------------------------------------------------------- report


def _ms(f: dict[str, Any]) -> str:
    return f"{f['min'] * 1e3:.3f} / {f['median'] * 1e3:.3f}"


def _num(v: float) -> str:
    """3 significant digits, no exponent below 1e6."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _pct(gbs: float | None, ref: float | None) -> str:
    return f"{100 * gbs / ref:.0f}%" if gbs and ref else "—"


def render(res: dict[str, Any]) -> str:
    env = res["env"]
    cuda = res["device"] == "cuda"
    lines: list[str] = []
    if cuda:
        lines.append(
            f"**{env['name']}** ({env['sms']} SMs, {env['memory_gib']:.0f} GiB, compute "
            f"capability {env['capability']}), torch {env['torch']}, CUDA {env['cuda']}, "
            f"backend `{env.get('backend')}`, {env['date']}, commit {env['commit']}; "
            f"float32 matmul precision `{env['matmul_precision']}`."
        )
    else:
        lines.append(
            "**Device: CPU** (`--device cpu`: the command's own check at tiny sizes; these are "
            f"not GPU figures). torch {env['torch']}, backend `{env.get('backend')}`, "
            f"{env['threads']} thread(s), load average {env['load_average'][0]:.2f}, "
            f"{env['date']}, commit {env['commit']}."
        )
    copy = res["copy"]
    table = env.get("table_peak")
    peak = table[1] if table else env.get("properties_peak_gbs")
    copy_gbs = copy.get("device_gbs") or copy.get("gbs")
    if cuda:
        spec = f"{table[1]:.0f} GB/s (table: `{table[0]}`)" if table else "not in the table"
        props = env.get("properties_peak_gbs")
        props_s = f"{props:.0f} GB/s" if props else "not reported"
        lines.append(
            f"\nHBM peak: {spec}; memory clock × bus width: {props_s}. Measured "
            f"device-to-device `copy_` ({copy.get('bytes', 0) / 2**30:.0f} GiB moved, half read, "
            "half written): "
            + (
                f"**{copy_gbs:.0f} GB/s** = {_pct(copy_gbs, peak)} of the peak."
                if copy_gbs
                else f"failed ({copy.get('error')})."
            )
        )
    elif copy_gbs:
        lines.append(
            f"\nMeasured `copy_` ({copy['bytes'] >> 20} MiB moved): {_num(copy_gbs)} GB/s."
        )
    lines.append(
        f"\nTimes: best (min) / median of {res['reps']} alternating rounds (torch reference and "
        "eager: 3), wall clock with a synchronize after each call"
        + ("; *device* = kernel time per call from the profiler." if cuda else ".")
    )

    lines += [
        "\n### Fused GRPO loss, forward + backward\n",
        "| size | dtype | op | min / median (ms) | device (ms) | GB/s | % of peak | % of copy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["loss"]:
        if "error" in r:
            lines.append(f"| {r['label']} | | **failed** | {r['error']} | | | | |")
            continue
        for name, f in r["ops"].items():
            dev = f"{f['device_s'] * 1e3:.3f}" if "device_s" in f else "—"
            gbs = f.get("device_gbs") or f.get("gbs")
            lines.append(
                f"| {r['n']} × {r['t']} | {r['dtype']} | {name} | {_ms(f)} | {dev} | "
                + (_num(gbs) if gbs else "")
                + f" | {_pct(gbs, peak) if gbs else ''} | {_pct(gbs, copy_gbs) if gbs else ''} |"
            )
    lines.append("")
    for r in res["loss"]:
        if "error" in r or not r["ratios"]:
            continue
        q = r["ratios"]
        parts = [f"{label} {q[key]:.2f}×" for label, key in _RATIOS if key in q]
        lines.append(f"- {r['n']} × {r['t']} {r['dtype']} (min): " + "; ".join(parts))
    lines.append(
        "\nBytes: 13 B/token in float32 (7 in bfloat16) + 20 B/sequence "
        "(`bench_loss.bytes_touched`); GB/s from the device time where there is one. The floor "
        "is one `torch.where` pass over the same tensors moving the same bytes."
    )

    lines += [
        "\n### Fused linear log-probs, forward + backward (float32, temperature 0.7)\n",
        "| shape | variant | min / median (ms) | GEMM TFLOP/s | peak extra memory | "
        "fused ÷ eager (time, memory) |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["linear"]:
        if "error" in r:
            lines.append(f"| {r['label']} | **failed** | {r['error']} | | | |")
            continue
        shape = f"{r['shape']} (N = {r['n']}, H = {r['h']}, V = {r['v']})"
        for name in ("eager", "fused"):
            f = r[name]
            mem = f"{f['extra'] / 2**20:.0f} MiB" if f["extra"] is not None else "—"
            ratio = ""
            if name == "fused":
                mr = r.get("memory_ratio")
                ratio = f"{r['time_ratio']:.2f}×, " + (f"{mr:.3f}" if mr else "—")
            lines.append(f"| {shape} | {name} | {_ms(f)} | {f['tflops']:.1f} | {mem} | {ratio} |")
    lines.append(
        "\nGEMM TFLOP/s counts executed GEMMs (eager 3, fused 4: its backward recomputes the "
        "logits). Peak extra memory includes the gradients of hidden and weight."
    )
    lines += _render_long(res.get("long"))
    lines += _render_staleness(res.get("staleness"))
    if res["errors"]:
        lines.append("\nFailed: " + "; ".join(res["errors"]))
    return "\n".join(lines)


def _render_staleness(r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return []
    lines = ["\n### Generation beside the update: the pipeline's efficiency (`bench_staleness`)\n"]
    if "error" in r:
        return [*lines, f"**failed**: {r['error']}"]
    m = r["median"]
    lines += [
        f"The tiny math task, {r['prompts_per_step']} prompts × 8 per step, {r['steps']} steps, "
        f"trainer on {r['device']} ({r['threads']} CPU threads), an engine answering after "
        f"{r['engine_latency_s']:.2f} s (the update's time) without this machine's compute; "
        f"median of {r['reps']} interleaved pairs. Bar: staleness 1 ≤ 1.10 × max(generate, "
        "train).\n",
        "| generate (s) | train (s) | staleness 0 (s/step) | staleness 1 (s/step) | "
        "÷ max(generate, train) | speed-up |",
        "|---|---|---|---|---|---|",
        f"| {m['generate_s']:.3f} | {m['train_s']:.3f} | {m['step_staleness0_s']:.3f} | "
        f"{m['step_staleness1_s']:.3f} | {m['staleness1_over_ideal']:.3f} | "
        f"{m['speedup']:.2f}× |",
    ]
    return lines


def _render_long(r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return []
    lines = ["\n### Long answers: one update, padded vs packed (`bench_long`)\n"]
    if "error" in r:
        return [*lines, f"**failed**: {r['error']}"]
    lines += [
        f"{r['rollouts']} rollouts, response lengths log-normal mean {r['mean']:.0f}, max "
        f"{r['max_len']} ({r['real_tokens']} real tokens with the prompts), best of {r['reps']}, "
        "no activation checkpointing.\n",
        "| layout | update (s) | × before | peak memory (GB) | slots ÷ tokens | loss | grad norm |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in r["layouts"].items():
        lines.append(
            f"| {name} | {row['time_s']:.3f} | {row.get('speedup', 1.0):.2f}× | "
            f"{row['peak_gb']:.2f} | {row['slots_per_token']:.2f} | {row['loss']:.6f} | "
            f"{row['grad_norm']:.6f} |"
        )
    return lines


_RATIOS = (
    ("fused ÷ floor", "fused_vs_floor"),
    ("fused ÷ copy", "fused_vs_copy"),
    ("eager ÷ fused", "eager_vs_fused"),
    ("reference ÷ fused", "reference_vs_fused"),
)


# --------------------------------------------------------------------------- command


def _precheck(device: str) -> str | None:
    """The one-line reason this device cannot run, or None."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        return (
            f"no CUDA device (torch {torch.__version__}, {build}, sees no GPU); run this on a "
            "machine with a GPU, or pass --device cpu for the small CPU check"
        )
    import srpo.ops as ops

    backend = ops.active_backend()
    if backend == "reference":
        return f"no compiled srpo op: {'; '.join(ops.backend_info()['errors'])[:300]}"
    if device == "cuda" and not backend.endswith("cuda"):
        return (
            f"the compiled srpo op has no CUDA kernels (backend {backend}): rebuild with nvcc "
            "(pip install --no-build-isolation -e .) or set SRPO_OPS_NO_PREBUILT=1 to JIT-build "
            "csrc/ for CUDA"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--results", type=Path, default=RESULTS_MD, help="markdown to update")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--reps", type=int, help="rounds per benchmark (default: cuda 20, cpu 3)")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: 1 with --device cpu, else torch's)"
    )
    args = parser.parse_args(argv)
    why = _precheck(args.device)
    if why:
        print(f"benchmarks.gpu: {why}", file=sys.stderr)
        return 2
    from benchmarks.bench_loss import use_threads

    t0 = time.perf_counter()
    with use_threads(args.threads or (1 if args.device == "cpu" else None)):
        res = run_all(args.device, args.reps)
    res["seconds"] = time.perf_counter() - t0
    body = render(res)
    write_section(args.results, body)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    print(body)
    print(f"\nbenchmarks.gpu: wrote {args.results} in {res['seconds']:.0f} s", file=sys.stderr)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
