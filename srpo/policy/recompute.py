"""Activation checkpointing decided per forward/backward pass (``policy.gradient_checkpointing``).

A pass keeps every decoder layer's intermediate tensors for its backward: for a decoder LM in
float32 about 1.5-2 MB per token for SmolLM2-135M (30 layers × hidden 576 × MLP 1536), so a
pass of 1,500 tokens holds 2-3 GB, and one of 16k tokens would hold 30+. Two ways to keep less,
both transformers' own checkpointing (non-reentrant) around each decoder layer:

* **full** recomputes each layer in backward and keeps only the layers' inputs (a tenth of the
  activations, measured) for about one extra forward of compute (~+25-35 % on the pass);
* **selective** keeps what is expensive to recompute — the outputs of the matrix multiplies
  and of attention — and recomputes only the elementwise work between them (norms, rotary
  embedding, the MLP's activation and gating): about 40 % fewer activations for +4-11 % on the
  pass (PyTorch's selective activation checkpointing, the "op-level" policy torchtitan ships).

``true``, ``selective`` and ``false`` force a level on every pass; ``auto`` (the default) picks
per pass the lightest level whose estimated activations fit ``policy.activation_memory_gb``
(default: half the memory available when the update begins: the device's free memory on CUDA,
``MemAvailable`` on Linux): none, then selective, then full. Short answers train at full speed
and the long tail of a long-answer run does not run the machine out of memory. Recomputation
changes no number: the gradient is the same at every level (tested bit for bit on CPU).

The estimates are deliberately simple and on the high side (per token and layer, in elements
of the parameters' dtype): with no recompute 18 × hidden + 4 × MLP width + 4 × key/value width
(the residual stream, the two norms' inputs and outputs, q/k/v before and after the rotary
embedding, attention output, the gated MLP's four intermediates); selective 8 × hidden + 3 ×
MLP + 2 × key/value (the multiplies' outputs, attention's output, the layer's input, one
product being recomputed). Measured against the process's peak in ``benchmarks/RESULTS.md``
("Where the memory goes").
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any

import torch

from srpo.policy.memory import proc_kib_field

_MEMINFO = Path("/proc/meminfo")


def _shape(config: Any) -> tuple[int, int, int, int]:
    """hidden, layers, MLP width and key/value width of a decoder config."""
    text = getattr(config, "text_config", None) or config
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    layers = int(getattr(text, "num_hidden_layers", 0) or 0)
    mlp = int(getattr(text, "intermediate_size", 0) or 4 * hidden)
    heads = int(getattr(text, "num_attention_heads", 0) or 1)
    kv_heads = int(getattr(text, "num_key_value_heads", 0) or heads)
    head_dim = int(getattr(text, "head_dim", 0) or (hidden // heads if heads else 0))
    return hidden, layers, mlp, kv_heads * head_dim


def activation_bytes_per_token(config: Any, dtype: torch.dtype, level: str = "none") -> int:
    """Estimated bytes a pass keeps per token for backward at a recompute ``level``."""
    hidden, layers, mlp, kv = _shape(config)
    whole_layer = 18 * hidden + 4 * mlp + 4 * kv
    if level == "none":
        elements = whole_layer * layers
    elif level == "selective":
        elements = (8 * hidden + 3 * mlp + 2 * kv) * layers
    else:  # full: the layers' inputs, and one layer's activations while it is recomputed
        elements = hidden * layers + whole_layer
    return elements * torch.finfo(dtype).bits // 8


def available_bytes(device: torch.device) -> int | None:
    """Memory a pass could still take: free device memory on CUDA, ``MemAvailable`` on
    Linux; None where neither can be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return proc_kib_field(_MEMINFO, "MemAvailable")


def _saved_ops() -> frozenset[Any]:
    """The ops whose outputs selective recompute keeps: matrix multiplies and attention
    kernels (whichever this torch build and flash-attn install have). A kernel that does not
    go through torch's dispatcher (flash-attn before it registered its kernels as torch ops)
    is not seen by the policy: it runs again in backward, correct but slower."""
    names = [
        ("aten", "mm"),
        ("aten", "addmm"),
        ("aten", "bmm"),
        ("aten", "baddbmm"),
        ("aten", "_scaled_dot_product_flash_attention"),
        ("aten", "_scaled_dot_product_flash_attention_for_cpu"),
        ("aten", "_scaled_dot_product_efficient_attention"),
        ("aten", "_scaled_dot_product_cudnn_attention"),
        ("aten", "_flash_attention_forward"),
        ("aten", "_efficient_attention_forward"),
        ("flash_attn", "_flash_attn_forward"),
        ("flash_attn", "_flash_attn_varlen_forward"),
    ]
    ops = []
    for namespace, name in names:
        try:
            packet = getattr(getattr(torch.ops, namespace), name)
        except (AttributeError, RuntimeError):
            continue
        ops.extend(getattr(packet, o) for o in packet.overloads())
    return frozenset(ops)


def _selective_policy(saved: frozenset[Any]) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
        return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def _layers(model: Any) -> list[Any]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


class ActivationRecompute:
    """Owns the model's checkpointing switch; ``begin_update`` once per update (it reads the
    memory available then), ``use_for(tokens)`` before each pass."""

    def __init__(self, model: Any, setting: bool | str, allowance_gb: float | None) -> None:
        self.model, self.setting, self.allowance_gb = model, setting, allowance_gb
        self.layers: list[Any] = []
        self.level = "none"
        #: token slots up to which a pass may use each level (auto); inf: no limit
        self.limits: dict[str, float] = {"none": float("inf"), "selective": float("inf")}
        if setting is False:
            return
        if not getattr(model, "supports_gradient_checkpointing", False):
            if setting != "auto":
                raise ValueError(
                    f"{type(model).__name__} does not support gradient checkpointing "
                    "(set policy.gradient_checkpointing: false)"
                )
            return  # auto: nothing to switch
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        self._selective = functools.partial(
            create_selective_checkpoint_contexts, _selective_policy(_saved_ops())
        )
        # transformers sets the checkpoint function on every layer (non-reentrant: exact, no
        # inputs that must require grad); each call asks _contexts which level the pass is at
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False, "context_fn": self._contexts}
        )
        self.layers = _layers(model)
        self.level = "full"  # what gradient_checkpointing_enable left on every layer
        self._switch({"auto": "none", "selective": "selective"}.get(setting, "full"))

    def _contexts(self) -> tuple[Any, Any]:
        """The forward/recompute contexts of one checkpointed layer call at this pass's level."""
        if self.level == "selective":
            return self._selective()
        return contextlib.nullcontext(), contextlib.nullcontext()

    def begin_update(self, device: torch.device) -> None:
        """The token counts above which a pass moves to a heavier level, from the allowance
        now."""
        if self.setting != "auto" or not self.layers:
            return
        if self.allowance_gb is not None:
            allowance = self.allowance_gb * 1e9
        else:
            free = available_bytes(device)
            allowance = float("inf") if free is None else free / 2
        dtype = next(self.model.parameters()).dtype
        for level in ("none", "selective"):
            per_token = activation_bytes_per_token(self.model.config, dtype, level)
            self.limits[level] = allowance / per_token if per_token else float("inf")

    def use_for(self, tokens: int) -> str:
        """Set the level for a pass of ``tokens`` token slots; returns it."""
        if self.setting == "auto" and self.layers:
            if tokens <= self.limits["none"]:
                self._switch("none")
            elif tokens <= self.limits["selective"]:
                self._switch("selective")
            else:
                self._switch("full")
        return self.level

    def _switch(self, level: str) -> None:
        if (level != "none") != (self.level != "none"):
            for layer in self.layers:
                layer.gradient_checkpointing = level != "none"
        self.level = level
