"""The policy under FSDP2: sharding it, running its fused log-probs inside FSDP's forward,
and reading its full weights one parameter at a time.

PyTorch's own ``fully_shard`` per decoder layer and on the root (embeddings, final norm and
the LM head, tied or not, live in the root's group). FSDP2 averages gradients over ranks;
the policy weights each rank's loss by its share of the *global* token count times the
number of ranks, so the average is exactly the one-process gradient (a custom divide factor
would need ``ReduceOp.PREMUL_SUM``, which gloo lacks).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

#: Name of the method FSDP runs like ``forward`` (all-gather before, reshard after).
FUSED_METHOD = "srpo_fused_forward"


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers causal LM (``model.model.layers`` for Llama,
    Qwen2, Mistral, ...): one FSDP unit each, so one layer's weights are gathered at a time."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(
            f"{type(model).__name__}: cannot find its decoder layers (get_decoder().layers) "
            "to shard them with FSDP2"
        )
    return list(layers)


def shard_model(
    model: Any, fused: Callable[..., Any] | None, param_dtype: torch.dtype | None = None
) -> Any:
    """Shard ``model`` in place over the default process group with FSDP2.

    ``fused(model, **kwargs)`` is registered as an FSDP forward method, so calling
    ``model.srpo_fused_forward(...)`` gathers the root's parameters (the LM head among them)
    around it, as ``forward`` does. ``param_dtype`` (CUDA: the training dtype) sets FSDP's
    mixed precision: parameters cast for compute, gradients reduced in float32.
    """
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    kwargs: dict[str, Any] = {}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=torch.float32
        )
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    if fused is not None:
        setattr(model, FUSED_METHOD, types.MethodType(fused, model))
        register_fsdp_forward_method(model, FUSED_METHOD)
    return model


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def iter_full_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of every parameter and buffer of a sharded model, gathered one
    at a time: the peak extra memory is one parameter, never the whole model. Every rank
    must iterate to the end (each step is a collective)."""
    from torch.distributed.tensor import DTensor

    for name, t in model.state_dict().items():
        full = t.full_tensor() if isinstance(t, DTensor) else t
        yield name, full.detach()


@torch.no_grad()
def copy_full_weights(sharded: Any, replica: torch.nn.Module) -> None:
    """Refresh a plain (unsharded) copy of the model from the sharded one, in place."""
    target = replica.state_dict()
    for name, full in iter_full_weights(sharded):
        if name in target:
            target[name].copy_(full)
