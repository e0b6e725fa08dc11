"""What the GRPO-family loss is configured with and what it and its pieces return.

``LossConfig`` (the options, checked against the registries of ``srpo.algo.registry``), the
built-in names the compiled op implements, the order of its stats, and the result types of the
loss and of the registered pieces (advantage estimators, surrogates). Separate from the math
(``srpo.algo.grpo``) so that the compiled op (``srpo.ops``), the policy and plugins that add a
registered piece share the contract without reading the reference's arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import torch

from srpo.algo.registry import ADVANTAGES, KL_PENALTIES, LOSS_AGGREGATIONS, POLICY_LOSSES
from srpo.algo.rollout_correction import RolloutCorrectionOptions

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "STAT_NAMES",
    "GroupAdvantages",
    "LossConfig",
    "LossOutput",
    "SurrogateOutput",
]

#: The built-in names the compiled op implements (its enum order: csrc/grpo.h).
KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# Order matches the compiled op's stats vector (csrc/grpo.h, GrpoOut minus the loss).
STAT_NAMES = (
    "clip_frac_low",
    "clip_frac_high",
    "dual_clip_frac",
    "approx_kl",
    "kl",
    "adv_abs_mean",
    "zero_adv_group_frac",
    "tokens",
    "sequences",
)


@dataclass(frozen=True)
class LossConfig:
    """Options of the GRPO-family loss; defaults are plain GRPO with symmetric clipping.

    ``advantage``, ``policy_loss``, ``kl_estimator`` and ``aggregation`` are names in the
    registries of ``srpo.algo.registry``.
    """

    advantage: str = "grpo"
    policy_loss: str = "ppo_clip"
    clip_low: float = 0.2  # ratio lower bound 1 - clip_low
    clip_high: float = 0.2  # ratio upper bound 1 + clip_high (DAPO clip-higher: 0.28)
    dual_clip: float | None = None  # dual-clip constant c > 1 (negative advantages); None = off
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    aggregation: str = "token-mean"
    norm_constant: float | None = None  # seq-mean-token-sum-norm divisor; None -> T
    std_normalize: bool = True  # GRPO (True) vs Dr.GRPO (False)
    eps: float = 1e-6
    zero_var_tol: float = 1e-6  # flat-group rule, relative to max(1, |mean|)
    check_finite: bool = True  # raise on NaN/inf at mask != 0 (one host read of 5 counters)
    # importance correction of the behaviour/trainer mismatch: the policy turns it into the
    # loss's token_weight (srpo.algo.rollout_correction.correction_weights)
    rollout_correction: RolloutCorrectionOptions = field(default_factory=RolloutCorrectionOptions)

    def __post_init__(self) -> None:
        if isinstance(self.rollout_correction, Mapping):
            rc = RolloutCorrectionOptions(**self.rollout_correction)
            object.__setattr__(self, "rollout_correction", rc)
        if not isinstance(self.rollout_correction, RolloutCorrectionOptions):
            raise ValueError(
                "LossConfig.rollout_correction must be RolloutCorrectionOptions or a mapping, "
                f"got {type(self.rollout_correction).__name__}"
            )
        for name, registry in (
            ("advantage", ADVANTAGES),
            ("policy_loss", POLICY_LOSSES),
            ("kl_estimator", KL_PENALTIES),
            ("aggregation", LOSS_AGGREGATIONS),
        ):
            if getattr(self, name) not in registry:
                raise ValueError(f"LossConfig.{name}: {registry.unknown(getattr(self, name))}")
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"LossConfig.clip_low must be in [0, 1), got {self.clip_low}")
        if not self.clip_high >= 0.0:
            raise ValueError(f"LossConfig.clip_high must be >= 0, got {self.clip_high}")
        if self.dual_clip is not None and not self.dual_clip > 1.0:
            raise ValueError(f"LossConfig.dual_clip must be > 1 or None, got {self.dual_clip}")
        if not self.kl_coef >= 0.0:
            raise ValueError(f"LossConfig.kl_coef must be >= 0, got {self.kl_coef}")
        if self.norm_constant is not None and not self.norm_constant > 0.0:
            raise ValueError(f"LossConfig.norm_constant must be > 0, got {self.norm_constant}")
        if not self.eps >= 0.0 or not self.zero_var_tol >= 0.0:
            raise ValueError("LossConfig.eps and zero_var_tol must be >= 0")

    @classmethod
    def from_options(cls, options: Any) -> LossConfig:
        """From any object with same-named attributes (the run file's ``algorithm`` section):
        every LossConfig field it has, defaults for the others."""
        values: Mapping[str, Any] = (
            options if isinstance(options, Mapping) else getattr(options, "__dict__", {})
        )
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    @property
    def zero_advantage_means_zero_gradient(self) -> bool:
        """Whether rollouts with advantage 0 contribute exactly nothing to the gradient."""
        surrogate = POLICY_LOSSES.get(self.policy_loss)
        return self.kl_coef == 0.0 and getattr(surrogate, "zero_gradient_at_zero_advantage", False)

    @property
    def fused(self) -> bool:
        """Whether the compiled op implements this combination (else it runs in torch)."""
        return (
            self.advantage == "grpo"
            and self.policy_loss == "ppo_clip"
            and self.kl_estimator in KL_ESTIMATORS
            and self.aggregation in AGGREGATIONS
        )


class LossOutput(NamedTuple):
    """Scalar loss (differentiable w.r.t. logp) and detached 0-dim stats (see STAT_NAMES)."""

    loss: torch.Tensor
    stats: dict[str, torch.Tensor]


class GroupAdvantages(NamedTuple):
    """What an advantage estimator returns: per-rollout advantages [N] float64 and which of
    the (dense, sorted) groups [G] are flat (their advantages are all exactly 0)."""

    advantages: torch.Tensor
    flat: torch.Tensor


class SurrogateOutput(NamedTuple):
    """What a policy-loss surrogate returns: the per-token loss [N, T] and boolean [N, T]
    maps whose mask-weighted shares become stats (``clip_frac_low``, ...)."""

    per_token: torch.Tensor
    token_flags: dict[str, torch.Tensor]
