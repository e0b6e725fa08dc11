"""The policy's optimizer: AdamW with a warmup-then-decay LR schedule, and the clipped step.

Separate from the update loop (``srpo.policy.update``), which decides *what* gradient to
accumulate; this module owns how a gradient becomes a weight change: the schedule, the
gradient norm (global across shards) and skipping a step whose norm is not finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from srpo.config import PolicySection


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier on the base LR at optimizer step ``s``: linear warmup, then the schedule."""

    def f(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def make_optimizer(
    model: Any, cfg: PolicySection, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``model``'s parameters and its LR schedule over every optimizer step of the
    run (``total_steps`` training steps × ``mini_batches`` × ``ppo_epochs``)."""
    opt = cfg.optimizer
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=opt.lr,
        betas=opt.betas,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
    )
    optimizer_steps = max(1, total_steps * cfg.mini_batches * cfg.ppo_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(opt.schedule, opt.warmup_steps, optimizer_steps)
    )
    return optimizer, scheduler


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's global value (FSDP2 reductions return them); other tensors as they are."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def clip_and_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float | None,
) -> float:
    """Clip the accumulated gradient (if ``grad_clip``), step unless its norm is not finite
    (the weights stay as they were), free the gradient, advance the schedule; returns the
    gradient norm."""
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.linalg.vector_norm(
            torch.stack([_full(torch.linalg.vector_norm(p.grad)) for p in params])
        )
    norm = _full(norm)  # a sharded model's norm is a DTensor: the global value
    if torch.isfinite(norm):  # else skip a poisoned step, keep weights
        optimizer.step()
    # the gradient is spent: freed now rather than when the next mini-batch starts, so
    # generation and the next step's no-grad passes do not carry a model's worth of it
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return float(norm)
