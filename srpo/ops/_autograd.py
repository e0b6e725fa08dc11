"""Autograd formula and fake kernel of ``<ns>::grpo_fwd`` (registered once per namespace).

The forward already computes d loss / d logp (same pass as the loss), so backward is
``grad * grad_loss``; when ``grad_loss`` is exactly 1 on the CPU (the usual ``loss.backward()``)
the saved gradient is returned as is, saving a full read+write pass over [N, T]
(the same trick as Liger-Kernel's fused cross entropy).
"""

from __future__ import annotations

from typing import Any

import torch

NUM_STATS = 14  # csrc/grpo.h kNumOut - 1 (the stats vector the op returns)

_registered: set[str] = set()
# rewards, group_ids, logp, old_logp, mask, ref_logp, token_weight, advantages; the rest is
# kw-only (register_autograd takes no keyword-only tensors)
_NUM_POSITIONAL = 8


def _fake(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    token_weight: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    *,
    need_grad: bool = True,  # the schema's default (the dispatcher drops defaulted arguments)
    **_options: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = torch.float64 if logp.dtype == torch.float64 else torch.float32
    n, t = logp.shape
    loss = logp.new_empty((), dtype=acc)
    stats = logp.new_empty((NUM_STATS,), dtype=acc)
    grad = logp.new_empty((n, t)) if need_grad else logp.new_empty((0,))
    adv = logp.new_empty((n,), dtype=torch.float64)
    return loss, stats, grad, adv


def _setup_context(
    ctx: Any,
    inputs: tuple[Any, ...],
    keyword_only_inputs: dict[str, Any],
    output: tuple[torch.Tensor, ...],
) -> None:
    _loss, stats, grad, adv = output
    ctx.mark_non_differentiable(stats, grad, adv)
    # Only the loss gets a gradient: without this, autograd materializes a zero [N, T] tensor
    # for the unused `grad` output on every backward (a 16 MB fill at 4096 x 1024 fp32).
    ctx.set_materialize_grads(False)
    ctx.need_grad = bool(keyword_only_inputs["need_grad"])  # defaults filled in by torch
    ctx.save_for_backward(grad)


def _is_plain_cpu_tensor(x: torch.Tensor) -> bool:
    if type(x) is not torch.Tensor or x.device.type != "cpu":
        return False  # FakeTensor / FunctionalTensor under tracing, or a device tensor
    if torch.compiler.is_compiling():
        return False
    functorch = getattr(torch._C, "_functorch", None)
    return not (functorch is not None and functorch.is_functorch_wrapped_tensor(x))


def _backward(ctx: Any, g_loss: torch.Tensor, *_unused: Any) -> tuple[Any, ...]:
    """One gradient per positional input (keyword-only options get none)."""
    if not ctx.need_grad:
        raise RuntimeError("grpo_fwd was called with need_grad=False; cannot backpropagate")
    (grad,) = ctx.saved_tensors
    if g_loss is None:  # not materialized: nothing flows back from the loss
        return (None,) * _NUM_POSITIONAL
    if _is_plain_cpu_tensor(g_loss) and g_loss.item() == 1.0:
        g_logp = grad
    else:
        g_logp = grad * g_loss.to(grad.dtype)
    return (None, None, g_logp) + (None,) * (_NUM_POSITIONAL - 3)


def register(ns: str) -> None:
    if ns in _registered:
        return
    name = f"{ns}::grpo_fwd"
    torch.library.register_fake(name, _fake)
    torch.library.register_autograd(name, _backward, setup_context=_setup_context)
    _registered.add(ns)
