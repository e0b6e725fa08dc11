"""GRPO-family math: the float64-capable torch reference (the oracle of ``srpo.ops``), the
registries where algorithms vary, and DAPO's reward/loss-mask shaping."""

from srpo.algo.dapo import OverlongOptions, loss_mask, shape_scores
from srpo.algo.groups import group_has_signal
from srpo.algo.grpo import group_advantages, grpo_loss_reference
from srpo.algo.loss_config import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    STAT_NAMES,
    GroupAdvantages,
    LossConfig,
    LossOutput,
    SurrogateOutput,
)
from srpo.algo.loss_inputs import validate_inputs
from srpo.algo.registry import (
    ADVANTAGES,
    KL_PENALTIES,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    Registry,
    register_advantage,
    register_aggregation,
    register_kl,
    register_policy_loss,
)
from srpo.algo.rollout_correction import RolloutCorrectionOptions, correction_weights

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "KL_PENALTIES",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "STAT_NAMES",
    "GroupAdvantages",
    "LossConfig",
    "LossOutput",
    "OverlongOptions",
    "Registry",
    "RolloutCorrectionOptions",
    "SurrogateOutput",
    "correction_weights",
    "group_advantages",
    "group_has_signal",
    "grpo_loss_reference",
    "loss_mask",
    "register_advantage",
    "register_aggregation",
    "register_kl",
    "register_policy_loss",
    "shape_scores",
    "validate_inputs",
]
