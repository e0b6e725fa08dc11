"""Activation checkpointing decided per forward/backward pass (``policy.gradient_checkpointing``).

A pass keeps every decoder layer's intermediate tensors for its backward: for a decoder LM in
float32 about 2 MB per token for SmolLM2-135M (30 layers × hidden 576 × MLP 1536), so a pass
of 1,500 tokens holds 3-4 GB, and one of 16k tokens would hold 30+. Recomputing each layer in
backward (transformers' own checkpointing, non-reentrant) keeps only the layers' inputs — about
a thirtieth of that — for about one extra forward of compute (~+30 % on the pass).

``true`` and ``false`` force it; ``auto`` (the default) turns it on for the passes whose
estimated activations exceed ``policy.activation_memory_gb`` (default: half the memory
available when the update begins: the device's free memory on CUDA, ``MemAvailable`` on
Linux), so short answers train at full speed and the long tail of a long-answer run does not
run the machine out of memory. Recomputation changes no number: the gradient is the same with
it on or off (tested bit for bit on CPU).

The estimate is deliberately simple and on the high side: per token and layer, 18 × hidden +
4 × MLP width + 4 × key/value width elements of the parameters' dtype (the residual stream, the
two norms' inputs and outputs, q/k/v before and after the rotary embedding, attention output,
the gated MLP's four intermediates), measured against the process's peak in
``benchmarks/RESULTS.md`` ("Where the memory goes").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from srpo.policy.memory import proc_kib_field

_MEMINFO = Path("/proc/meminfo")


def activation_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Estimated bytes a pass keeps per token for backward without checkpointing."""
    text = getattr(config, "text_config", None) or config
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    layers = int(getattr(text, "num_hidden_layers", 0) or 0)
    mlp = int(getattr(text, "intermediate_size", 0) or 4 * hidden)
    heads = int(getattr(text, "num_attention_heads", 0) or 1)
    kv_heads = int(getattr(text, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(text, "head_dim", 0) or (hidden // heads if heads else 0))
    kv = kv_heads * head_dim
    per_layer = 18 * hidden + 4 * mlp + 4 * kv
    return per_layer * layers * torch.finfo(dtype).bits // 8


def available_bytes(device: torch.device) -> int | None:
    """Memory a pass could still take: free device memory on CUDA, ``MemAvailable`` on
    Linux; None where neither can be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return proc_kib_field(_MEMINFO, "MemAvailable")


def _layers(model: Any) -> list[Any]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


class ActivationRecompute:
    """Owns the model's checkpointing switch; ``begin_update`` once per update (it reads the
    memory available then), ``use_for(tokens)`` before each pass."""

    def __init__(self, model: Any, setting: bool | str, allowance_gb: float | None) -> None:
        self.model, self.setting, self.allowance_gb = model, setting, allowance_gb
        self.layers: list[Any] = []
        self.on = False
        self.limit_tokens: float = float("inf")
        if setting is False:
            return
        if not getattr(model, "supports_gradient_checkpointing", False):
            if setting is True:
                raise ValueError(
                    f"{type(model).__name__} does not support gradient checkpointing "
                    "(set policy.gradient_checkpointing: false)"
                )
            return  # auto: nothing to switch
        # transformers sets the checkpoint function on every layer (non-reentrant: exact,
        # and no inputs that must require grad); from then on srpo flips the layers' flag
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.layers = _layers(model)
        self.on = True
        if setting == "auto":
            self._switch(False)

    def begin_update(self, device: torch.device) -> None:
        """The token count above which a pass recomputes, from the allowance now."""
        if self.setting != "auto" or not self.layers:
            return
        if self.allowance_gb is not None:
            allowance = self.allowance_gb * 1e9
        else:
            free = available_bytes(device)
            allowance = float("inf") if free is None else free / 2
        dtype = next(self.model.parameters()).dtype
        per_token = activation_bytes_per_token(self.model.config, dtype)
        self.limit_tokens = allowance / per_token if per_token else float("inf")

    def use_for(self, tokens: int) -> bool:
        """Switch checkpointing for a pass of ``tokens`` token slots; whether it is on."""
        if self.setting == "auto" and self.layers:
            self._switch(tokens > self.limit_tokens)
        return self.on

    def _switch(self, on: bool) -> None:
        if on != self.on:
            for layer in self.layers:
                layer.gradient_checkpointing = on
            self.on = on
