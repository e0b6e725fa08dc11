"""The argument checks of the GRPO-family loss, shared by the torch reference and the op.

Metadata only (types, shapes, dtypes, devices; no host sync), so ``srpo.ops.grpo_loss`` runs
them before choosing a backend and every backend fails alike, naming the offending argument.
Kept apart from the math (``srpo.algo.grpo``) so the reference reads as formulas.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from srpo.algo.loss_config import LossConfig

__all__ = ["validate_inputs"]

_FLOAT_LOGP = (torch.float32, torch.float64, torch.bfloat16)


def _check_tensors(named: Mapping[str, torch.Tensor], logp: torch.Tensor) -> None:
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if logp.dim() != 2:
        raise ValueError(f"logp must be 2-D [N, T], got shape {tuple(logp.shape)}")
    if logp.dtype not in _FLOAT_LOGP:
        raise ValueError(f"logp must be float32, float64 or bfloat16, got {logp.dtype}")
    for name, x in named.items():
        if x.device != logp.device:
            raise ValueError(f"{name} is on {x.device} but logp is on {logp.device}")


def _check_token_inputs(named: Mapping[str, torch.Tensor], logp: torch.Tensor) -> None:
    for name in ("old_logp", "mask", "ref_logp", "token_weight"):
        x = named.get(name)
        if x is not None and x.shape != logp.shape:
            raise ValueError(
                f"{name} must have the shape of logp {tuple(logp.shape)}, got {tuple(x.shape)}"
            )
    for name in ("old_logp", "ref_logp"):
        x = named.get(name)
        if x is not None and x.dtype != logp.dtype:
            raise ValueError(
                f"{name} dtype {x.dtype} != logp dtype {logp.dtype}; cast with .to(logp.dtype)"
            )
    mask = named["mask"]
    if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
        raise ValueError(f"mask must be bool or floating point, got {mask.dtype}")
    weight = named.get("token_weight")
    if weight is not None and not weight.dtype.is_floating_point:
        raise ValueError(f"token_weight must be floating point, got {weight.dtype}")


def _check_row_inputs(rewards: torch.Tensor, group_ids: torch.Tensor, n: int) -> None:
    for name, x in (("rewards", rewards), ("group_ids", group_ids)):
        if x.shape != (n,):
            raise ValueError(f"{name} must have shape [N] = ({n},), got {tuple(x.shape)}")
    if not rewards.dtype.is_floating_point:
        raise ValueError(f"rewards must be floating point, got {rewards.dtype}")
    if (
        group_ids.dtype.is_floating_point
        or group_ids.dtype.is_complex
        or group_ids.dtype in (torch.bool,)
    ):
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")


def _check_given(
    advantages: torch.Tensor | None, denominator: float | None, logp: torch.Tensor
) -> None:
    if advantages is not None:
        if not isinstance(advantages, torch.Tensor):
            raise ValueError(f"advantages must be a torch.Tensor, got {type(advantages).__name__}")
        n = logp.shape[0]
        if advantages.shape != (n,):
            raise ValueError(
                f"advantages must have shape [N] = ({n},), got {tuple(advantages.shape)}"
            )
        if not advantages.dtype.is_floating_point:
            raise ValueError(f"advantages must be floating point, got {advantages.dtype}")
        if advantages.device != logp.device:
            raise ValueError(f"advantages is on {advantages.device} but logp is on {logp.device}")
    if denominator is not None and not float(denominator) > 0:
        raise ValueError(f"denominator must be > 0 or None, got {denominator}")


def validate_inputs(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    cfg: LossConfig,
    token_weight: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    denominator: float | None = None,
) -> None:
    """Metadata checks only (no host sync); errors name the offending argument."""
    if not isinstance(cfg, LossConfig):
        raise TypeError(f"cfg must be a LossConfig, got {type(cfg).__name__}")
    named = {"rewards": rewards, "group_ids": group_ids, "logp": logp, "old_logp": old_logp}
    named["mask"] = mask
    if ref_logp is not None:
        named["ref_logp"] = ref_logp
    if token_weight is not None:
        named["token_weight"] = token_weight
    _check_tensors(named, logp)
    _check_token_inputs(named, logp)
    _check_row_inputs(rewards, group_ids, logp.shape[0])
    _check_given(advantages, denominator, logp)
    if cfg.kl_coef > 0.0 and ref_logp is None:
        raise ValueError("ref_logp is required when LossConfig.kl_coef > 0")
