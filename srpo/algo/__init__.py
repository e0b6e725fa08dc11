"""GRPO-family math: the float64-capable torch reference (the oracle of ``srpo.ops``)."""

from srpo.algo.grpo import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    STAT_NAMES,
    LossConfig,
    LossOutput,
    group_advantages,
    grpo_loss_reference,
    validate_inputs,
)

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "STAT_NAMES",
    "LossConfig",
    "LossOutput",
    "group_advantages",
    "grpo_loss_reference",
    "validate_inputs",
]
