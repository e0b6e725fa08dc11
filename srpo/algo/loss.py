"""The loss the policy trains with: the compiled fused op for the built-in GRPO family, the
registry composition in torch for everything else."""

from __future__ import annotations

from collections.abc import Callable

import torch

from srpo.algo.grpo import LossConfig, LossOutput, grpo_loss_reference

BACKENDS = ("auto", "compiled", "reference")


#: What the policy calls: ``(rewards, group_ids, logp, old_logp, mask, ref_logp, cfg=...,
#: token_weight=...)`` (``token_weight``: the rollout-correction weights, or None).
LossFn = Callable[..., LossOutput]


def make_loss_fn(backend: str = "auto") -> LossFn:
    """A loss function for ``algorithm.loss_backend``: ``auto`` (compiled where it applies,
    else torch), ``compiled`` (the fused op; an error for a combination it does not
    implement) or ``reference`` (always the torch composition)."""
    if backend not in BACKENDS:
        raise ValueError(f"loss backend must be one of {BACKENDS}, got {backend!r}")

    def loss(
        rewards: torch.Tensor,
        group_ids: torch.Tensor,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        mask: torch.Tensor,
        ref_logp: torch.Tensor | None = None,
        cfg: LossConfig = LossConfig(),  # noqa: B008 (frozen dataclass: immutable default)
        token_weight: torch.Tensor | None = None,
    ) -> LossOutput:
        if backend == "reference" or not cfg.fused:
            if backend == "compiled":
                raise ValueError(compiled_unsupported(cfg))
            return grpo_loss_reference(
                rewards, group_ids, logp, old_logp, mask, ref_logp, cfg, token_weight
            )
        from srpo.ops import grpo_loss  # lazy: srpo.ops imports srpo.algo

        return grpo_loss(
            rewards,
            group_ids,
            logp,
            old_logp,
            mask,
            ref_logp,
            cfg,
            backend=backend,
            token_weight=token_weight,
        )

    return loss


def compiled_unsupported(cfg: LossConfig) -> str:
    return (
        f"the compiled loss implements advantage 'grpo', policy_loss 'ppo_clip', the built-in "
        f"KL estimators and aggregations; got advantage {cfg.advantage!r}, policy_loss "
        f"{cfg.policy_loss!r}, kl_estimator {cfg.kl_estimator!r}, aggregation "
        f"{cfg.aggregation!r}: use loss_backend 'auto' or 'reference'"
    )
