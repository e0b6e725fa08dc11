"""Long answers (issue 24): one training update of SmolLM2-135M on 64 rollouts whose response
lengths follow a long tail, in four micro-batch layouts side by side in one process.

    ./dev python -m benchmarks.bench_long                       # the issue's size (minutes on 2 cores)
    ./dev python -m benchmarks.bench_long --rollouts 16 --mean 120 --max-len 512   # quick
    ./dev python -m pytest benchmarks/bench_long.py --benchmark-only -s            # small size

Layouts (each a real ``Policy.update``: forward + loss + backward of the mini-batch, gradient
clip and one AdamW step, ``ppo_epochs`` 1, so the old log-probs are the forward's own):

  before   count layout (``micro_batch_size`` rows of whole groups), every pass padded to the
           batch's longest response: what srpo did before this issue
  count    the same passes, each padded only to its own longest response (this issue's
           trimming, the default layout)
  budget   ``max_tokens_per_micro_batch``: rows sorted by length, packed under the budget
           (rows × longest ≤ budget), padded
  packed   the same budget, ``padding_free``: each pass one packed row, no padding at all

Reported per layout: best-of-N wall time of the update, its peak memory (RSS high-water mark
since the update began on CPU, ``max_memory_allocated`` on CUDA: ``srpo.policy.memory``),
token slots ÷ real tokens (``update/pad_frac`` + 1) and the number of passes; ratios against
``before``. Response lengths: log-normal (median ``mean``·e^(-σ²/2)), clipped to ``max-len``,
the longest row of each batch set to ``max-len``; token ids are random (timing and memory do
not depend on what the tokens say). Threads and the load average are printed with the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]

LAYOUTS: dict[str, dict[str, Any]] = {
    "before": {"micro_batch_size": 8},
    "count": {"micro_batch_size": 8},
    "budget": {"max_tokens_per_micro_batch": 4096},
    "packed": {"max_tokens_per_micro_batch": 4096, "padding_free": True},
}


def smollm2_dir() -> Path:
    """The SmolLM2 model directory examples/smollm2/build_model.py builds (and caches)."""
    from tests.support.smollm2 import smollm2_model_dir

    return smollm2_model_dir()


def random_model_dir(config_dir: Path, out: Path) -> Path:
    """A model directory with ``config_dir``'s architecture and tokenizer and random weights:
    the same time and memory as the trained weights (where those cannot be shipped, e.g. to
    a GPU machine that has only the config), not the same log-probs."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
    model.save_pretrained(out)
    for f in config_dir.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, out / f.name)
    return out


def long_tail_lengths(n: int, mean: float, max_len: int, seed: int) -> list[int]:
    """``n`` response lengths, log-normal with the given mean (σ = 0.8), in [8, max_len],
    the longest set to ``max_len`` (a long tail always has its outlier)."""
    gen = torch.Generator().manual_seed(seed)
    sigma = 0.8
    mu = math.log(mean) - sigma * sigma / 2
    raw = torch.exp(mu + sigma * torch.randn(n, generator=gen, dtype=torch.float64))
    lengths = raw.round().clamp(8, max_len).long()
    lengths[int(lengths.argmax())] = max_len
    return lengths.tolist()


def make_batch(policy: Any, rollouts: int, group: int, mean: float, max_len: int, seed: int):
    """A scored RolloutBatch of ``rollouts`` rows in groups of ``group`` with long-tail
    response lengths and mixed rewards (every group has a learning signal)."""
    from srpo.types import Prompt, RolloutBatch, Scores

    lengths = long_tail_lengths(rollouts, mean, max_len, seed)
    n_prompts = rollouts // group
    texts = [
        f"Problem {k}: compute ({k + 3} + {2 * k + 5}) * {k % 7 + 2} - {k + 1}, step by step."
        for k in range(n_prompts)
    ]
    prompts = [Prompt(id=k, domain="math", text=t, reference="0") for k, t in enumerate(texts)]
    gen = torch.Generator().manual_seed(seed + 1)
    vocab = int(policy.model.config.vocab_size)
    T = max(lengths)
    ids = torch.randint(0, vocab, (rollouts, T), generator=gen)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    ids[~mask] = int(policy.tokenizer.pad_token_id)
    batch = RolloutBatch(
        prompts=prompts,
        group=torch.arange(rollouts) // group,
        sample=torch.arange(rollouts) % group,
        prompt_token_ids=[policy.encode_prompt(t) for t in texts],
        response_ids=ids,
        response_mask=mask,
        behaviour_logp=torch.zeros(rollouts, T),
        truncated=torch.tensor([n == max_len for n in lengths]),
        response_text=[""] * rollouts,
        temperature=1.0,
    )
    reward = (torch.arange(rollouts) % 3 == 0).float()
    return batch, Scores(reward, reward > 0, [None] * rollouts)


def make_policy(
    model_dir: Path, layout: str, device: str, budget: int | None, checkpointing: bool = False
) -> Any:
    from srpo.config import AlgorithmSection, PolicySection
    from srpo.policy import Policy

    options = dict(LAYOUTS[layout], gradient_checkpointing=checkpointing)
    if budget is not None and "max_tokens_per_micro_batch" in options:
        options["max_tokens_per_micro_batch"] = budget
    cfg = PolicySection(path=model_dir, **options)
    torch.manual_seed(0)
    policy = Policy(model_dir, cfg, AlgorithmSection(group_size=8), total_steps=10, device=device)
    if layout == "before":
        _pad_to_batch_width(policy)
    return policy


def _pad_to_batch_width(policy: Any) -> None:
    """The layout before this issue: every pass padded to the batch's response width."""
    plain: Callable[..., Any] = policy.response_logprobs

    def padded(model: Any, batch: Any, rows: torch.Tensor, with_entropy: bool = False) -> Any:
        return plain(model, batch, rows, with_entropy, width=batch.response_ids.shape[1])

    policy.response_logprobs = padded


def measure(
    rollouts: int = 64,
    mean: float = 250.0,
    max_len: int = 2048,
    reps: int = 2,
    device: str = "cpu",
    budget: int | None = None,
    layouts: tuple[str, ...] = tuple(LAYOUTS),
    model_dir: Path | None = None,
    checkpointing: bool = False,
) -> dict[str, Any]:
    """Best-of-``reps`` update time, peak memory and token slots per layout (one process)."""
    model_dir = model_dir or smollm2_dir()
    out: dict[str, Any] = {"layouts": {}}
    for layout in layouts:
        policy = make_policy(model_dir, layout, device, budget, checkpointing)
        batch, scores = make_batch(policy, rollouts, 8, mean, max_len, seed=0)
        times, peaks, metrics = [], [], {}
        for _ in range(reps):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            metrics = policy.update(batch, scores)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            peaks.append(metrics["memory/update_peak_gb"])
        slots_per_token = metrics["update/pad_frac"] + 1.0
        if layout == "before":  # its passes were padded to the batch's width, not their own
            slots_per_token = _batch_width_slots(batch, policy.cfg.micro_batch_size)
        out["layouts"][layout] = {
            "time_s": min(times),
            "peak_gb": min(peaks),
            "slots_per_token": slots_per_token,
            "loss": metrics["loss"],
            "grad_norm": metrics["grad_norm"],
        }
        out["real_tokens"] = int(row_tokens_total(batch))
        del policy
    base = out["layouts"].get("before")
    if base:
        for row in out["layouts"].values():
            row["speedup"] = base["time_s"] / row["time_s"]
            row["memory_ratio"] = row["peak_gb"] / base["peak_gb"] if base["peak_gb"] else None
    out.update(
        rollouts=rollouts,
        mean=mean,
        max_len=max_len,
        reps=reps,
        device=device,
        checkpointing=checkpointing,
        threads=torch.get_num_threads(),
        loadavg=_loadavg(),
    )
    return out


def _batch_width_slots(batch: Any, size: int) -> float:
    """Slots ÷ real tokens of the count layout's passes padded to the batch's response width."""
    from srpo.policy.microbatch import count_micro_batches

    width = batch.response_ids.shape[1]
    slots = 0
    for rows in count_micro_batches(batch, range(len(batch.prompts)), size):
        longest_prompt = max(len(batch.prompt_token_ids[int(batch.group[r])]) for r in rows)
        slots += len(rows) * (longest_prompt + width)
    return slots / row_tokens_total(batch)


def row_tokens_total(batch: Any) -> int:
    from srpo.policy.microbatch import row_tokens

    return int(row_tokens(batch).sum())


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def table(result: dict[str, Any]) -> str:
    lines = [
        f"SmolLM2-135M, {result['rollouts']} rollouts, response lengths log-normal mean "
        f"{result['mean']:.0f} max {result['max_len']} ({result['real_tokens']} real tokens "
        f"with prompts), device {result['device']}, {result['threads']} threads, load "
        f"{result['loadavg']}, best of {result['reps']}, activation checkpointing "
        f"{'on' if result['checkpointing'] else 'off'}",
        "",
        "| layout | update (s) | × before | peak memory (GB) | slots ÷ tokens | loss | grad norm |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["layouts"].items():
        lines.append(
            f"| {name} | {r['time_s']:.2f} | {r.get('speedup', 1.0):.2f}× | {r['peak_gb']:.2f} "
            f"| {r['slots_per_token']:.2f} | {r['loss']:.6g} | {r['grad_norm']:.6g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rollouts", type=int, default=64)
    p.add_argument("--mean", type=float, default=250.0)
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--budget", type=int, default=None, help="token budget (default 4096)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--model-dir", type=Path, default=None, help="default: the SmolLM2 example's")
    p.add_argument(
        "--random-init",
        type=Path,
        default=None,
        metavar="CONFIG_DIR",
        help="random weights with this directory's config and tokenizer (a machine without "
        "the model: same time and memory)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in backward, every layout (the padded ones need it on "
        "2 cores x 24 GB at long lengths)",
    )
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    model_dir = a.model_dir
    if a.random_init is not None:
        import tempfile

        model_dir = random_model_dir(a.random_init, Path(tempfile.mkdtemp()) / "model")
    layouts = tuple(a.layouts)
    result = measure(
        a.rollouts,
        a.mean,
        a.max_len,
        a.reps,
        a.device,
        a.budget,
        layouts,
        model_dir,
        a.gradient_checkpointing,
    )
    print(table(result))
    if a.json is not None:
        import json

        a.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()


def test_long_tail_update_layouts(benchmark) -> None:
    """The four layouts at a small size (16 rollouts, mean 120, max 512), once each."""
    result = benchmark.pedantic(
        measure, kwargs={"rollouts": 16, "mean": 120.0, "max_len": 512, "reps": 1,
                         "budget": 1024}, rounds=1, iterations=1,
    )  # fmt: skip
    print("\n" + table(result))
    rows = result["layouts"]
    assert rows["packed"]["slots_per_token"] <= 1.1
    assert abs(rows["packed"]["loss"] - rows["before"]["loss"]) <= 1e-5 * max(
        1.0, abs(rows["before"]["loss"])
    )
