"""Padding-free (packed) response log-probs vs today's padded batch, forward + backward.

Run: ``./dev python benchmarks/bench_packing.py [--n 16] [--max-len 1024] [--reps 3]``
(not a pytest test: one padded forward + backward of SmolLM2 takes tens of seconds on a
small CPU). ``--quick`` runs a tiny shape as a smoke test.

What it runs, in one process, on SmolLM2-135M-Instruct (``tests/support/smollm2.py``'s
build; float32, fused LM head as the policy's default): ``n`` rollouts of 4-rollout groups,
prompts of 40–120 tokens, response lengths log-normal (median ``--median``, sigma
``--sigma``) clipped to [1, ``--max-len``], ``--capped`` of them at the cap; the batch is right-padded to its longest
response, as samplers return it. Each variant computes ``(logp * mask).sum()`` and backward
into the model's parameters, model in train mode:

  padded         ``response_logprobs``: one [n, P+T] left/right-padded batch (today's path)
  buckets        ``response_logprobs`` on length-sorted quarters of the rows (4 calls, each
                 padded to its own longest row): what length bucketing buys without packing
  per_sequence   ``packed_response_logprobs``, one causal SDPA call per sequence (default)
  block_mask     ``packed_response_logprobs``, transformers' [L, L] block-diagonal mask

FlexAttention is not a variant: torch 2.13 has no FlexAttention backward on CPU.

Method: variants alternate within each round (round 0 a warm-up), best (min) and median
wall time per variant; the machine is shared, so the load average (/proc/loadavg) is
printed before and after and only ratios within one run mean anything. Memory: peak
resident set size above the resident size just before the call (after ``malloc_trim``), read
by a thread sampling /proc/self/statm every 2 ms; gradients included (every variant holds
them). Threads: ``torch.set_num_threads(--threads)``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Peak resident set size above its value at entry, sampled by a thread."""

    def __enter__(self) -> PeakRss:
        with contextlib.suppress(OSError):  # glibc: give freed arenas back first
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def extra(self) -> int:
        return self.peak - self.base


def make_batch(
    n: int, median: float, sigma: float, max_len: int, vocab: int, capped: int = 1, seed: int = 0
):
    """``n`` rollouts in groups of 4 with long-tailed response lengths, ``capped`` of them
    cut at ``max_len`` (truncated by max_new_tokens, as RL batches have them); random token
    ids (timing and exactness do not depend on what the tokens say)."""
    from srpo.types import RolloutBatch

    gen = torch.Generator().manual_seed(seed)
    groups = (n + 3) // 4
    prompt_lens = torch.randint(40, 121, (groups,), generator=gen).tolist()
    prompts = [torch.randint(1, vocab, (p,), generator=gen).tolist() for p in prompt_lens]
    lens = torch.empty(n).log_normal_(float(torch.tensor(median).log()), sigma, generator=gen)
    lens = lens.round().clamp(1, max_len).long()
    lens[torch.randperm(n, generator=gen)[:capped]] = max_len
    T = int(lens.max())
    mask = torch.arange(T)[None] < lens[:, None]
    ids = torch.where(mask, torch.randint(1, vocab, (n, T), generator=gen), 0)
    return RolloutBatch(
        prompts=[None] * groups,  # type: ignore[list-item]  (only the token ids are used)
        group=torch.arange(n) // 4,
        sample=torch.arange(n) % 4,
        prompt_token_ids=prompts,
        response_ids=ids,
        response_mask=mask,
        behaviour_logp=torch.zeros(n, T),
        truncated=torch.zeros(n, dtype=torch.bool),
        response_text=[""] * n,
        temperature=0.7,
    )


def variants(model, batch, fused: bool) -> dict[str, Callable[[], None]]:
    from srpo.policy.logprobs import response_logprobs
    from srpo.policy.packing import packed_response_logprobs

    cpu = torch.device("cpu")
    rows = torch.arange(batch.num_rollouts)
    mask = batch.response_mask

    def padded(rs: torch.Tensor = rows) -> None:
        logp, _ = response_logprobs(model, batch, rs, 0, cpu, fused)
        (logp * mask[rs]).sum().backward()

    def buckets() -> None:
        order = batch.lengths.argsort()
        for rs in order.chunk(4):
            padded(rs)

    def packed(attention: str) -> Callable[[], None]:
        def run() -> None:
            logp, _ = packed_response_logprobs(model, batch, rows, cpu, fused, attention=attention)
            (logp * mask).sum().backward()

        return run

    return {
        "padded": padded,
        "buckets": buckets,
        "per_sequence": packed("per_sequence"),
        "block_mask": packed("block_mask"),
    }


def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="rollouts (groups of 4)")
    ap.add_argument("--median", type=float, default=200.0, help="median response length")
    ap.add_argument("--sigma", type=float, default=0.7, help="log-normal sigma of the lengths")
    ap.add_argument("--max-len", type=int, default=1024, help="longest response (clip)")
    ap.add_argument("--capped", type=int, default=1, help="responses cut at --max-len")
    ap.add_argument("--reps", type=int, default=3, help="timed rounds after the warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-checkpointing", action="store_true", help="keep every activation")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--eager-head", action="store_true", help="full logits, not the fused op")
    ap.add_argument("--skip", nargs="*", default=[], help="variants to leave out")
    ap.add_argument("--quick", action="store_true", help="tiny random model: a smoke test")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        model, name = tiny_model(), "tiny random Llama"
    else:
        from transformers import AutoModelForCausalLM

        from tests.support.smollm2 import smollm2_model_dir

        model = AutoModelForCausalLM.from_pretrained(smollm2_model_dir(), dtype=torch.float32)
        name = "SmolLM2-135M-Instruct"
    model.train()
    if not args.no_checkpointing:  # as policy.gradient_checkpointing does it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = make_batch(
        args.n, args.median, args.sigma, args.max_len, model.config.vocab_size, args.capped
    )
    from srpo.policy.packing import token_slots

    slots = token_slots(batch, torch.arange(batch.num_rollouts))
    lens = batch.lengths.float()
    print(
        f"{name}, float32, {'eager' if args.eager_head else 'fused'} head, gradient "
        f"checkpointing {'off' if args.no_checkpointing else 'on'}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpus {os.cpu_count()}"
    )
    print(
        f"n={args.n} responses: mean {lens.mean():.0f} median {lens.median():.0f} "
        f"max {int(lens.max())} tokens; real tokens {slots.tokens}, padded slots "
        f"{slots.padded} (pad_frac {slots.pad_frac(False):.2f}), packed {slots.packed} "
        f"(pad_frac {slots.pad_frac(True):.2f})"
    )
    print("loadavg before:", Path("/proc/loadavg").read_text().strip())
    runs = {k: v for k, v in variants(model, batch, not args.eager_head).items()}
    runs = {k: v for k, v in runs.items() if k not in args.skip}
    times: dict[str, list[float]] = {k: [] for k in runs}
    peak: dict[str, int] = {k: 0 for k in runs}
    for r in range(-args.warmup + 1, args.reps + 1):
        for k, fn in runs.items():
            model.zero_grad(set_to_none=True)
            with PeakRss() as mem:
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
            if r > 0:
                times[k].append(dt)
                peak[k] = max(peak[k], mem.extra)
            print(f"  round {r} {k}: {dt:.2f} s, +{mem.extra / 2**20:.0f} MiB", flush=True)
    print("loadavg after:", Path("/proc/loadavg").read_text().strip())
    base = min(times["padded"]) if "padded" in times else None
    print("| variant | best s | median s | padded ÷ variant (best) | peak extra RSS MiB |")
    print("|---|---|---|---|---|")
    for k, ts in times.items():
        ratio = f"{base / min(ts):.2f}×" if base else "-"
        print(
            f"| {k} | {min(ts):.2f} | {statistics.median(ts):.2f} | {ratio} | "
            f"{peak[k] / 2**20:.0f} |"
        )


if __name__ == "__main__":
    main()
