"""Per-step rollout metrics, computed from columns (no per-rollout Python on the hot path)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from srpo.algo.groups import group_has_signal
from srpo.types import RolloutBatch, Scores


def rollout_metrics(
    batch: RolloutBatch, scores: Scores, domains: Sequence[str]
) -> dict[str, float]:
    n = batch.num_rollouts
    if n == 0:
        return {"rollouts": 0.0}
    lengths = batch.lengths.float()
    signal = group_has_signal(batch.group, scores.reward, len(batch.prompts))
    m = {
        "rollouts": float(n),
        "prompts": float(len(batch.prompts)),
        "reward/mean": float(scores.reward.mean()),
        "reward/std": float(scores.reward.std()) if n > 1 else 0.0,
        "accuracy": float(scores.correct.float().mean()),
        "effective_ratio": float(signal.float().mean()),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "truncated_frac": float(batch.truncated.float().mean()),
        "verifier_errors": float(scores.num_errors),
    }
    dom_of_group = [p.domain for p in batch.prompts]
    for d in domains:
        gmask = torch.tensor([x == d for x in dom_of_group], dtype=torch.bool)
        if not gmask.any():
            continue
        rows = gmask[batch.group]
        m[f"accuracy/{d}"] = float(scores.correct[rows].float().mean())
        m[f"reward/{d}"] = float(scores.reward[rows].mean())
    for k, v in scores.breakdown.items():
        m[f"reward_parts/{k}"] = float(v.mean())
    return m
