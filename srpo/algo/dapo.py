"""DAPO's length handling (Yu et al. 2025, §3.4): overlong filtering and soft punishment.

A response cut off by the generation limit has no final answer, so its reward says more
about the limit than about the reasoning. DAPO offers two remedies:

* **Overlong filtering**: mask truncated responses out of the loss
  (``overlong_filter_mask``; pass the result as the policy's ``loss_mask``).
* **Soft overlong punishment**: a length-aware penalty added to the reward, zero up to
  ``L_max - L_cache``, growing linearly to ``-penalty`` over the last ``L_cache`` tokens::

      R(L) = 0                                  if L <= L_max - L_cache
      R(L) = ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
      R(L) = -1                                 if L > L_max

  (scaled by ``penalty``). A response at exactly ``L_max`` — what a truncated one measures —
  gets ``-penalty``, so the two branches meet.

The kernel applies both through ``shape_scores`` (after verification, before history and
group filtering see the rewards) and ``loss_mask`` (before the update), with the options of
the algorithm in force (``algorithm.overlong``, per-stage overrides included).
"""

from __future__ import annotations

import dataclasses

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from srpo.types import RolloutBatch, Scores


class OverlongOptions(BaseModel):
    """The DAPO length options a run file may set (e.g. under ``algorithm.overlong``)."""

    model_config = ConfigDict(extra="forbid")

    filter: bool = Field(False, description="mask truncated responses out of the loss")
    max_len: int | None = Field(None, ge=1, description="L_max of the soft penalty (off: None)")
    cache_len: int = Field(0, ge=0, description="L_cache: the buffer before L_max")
    penalty: float = Field(1.0, ge=0.0, description="penalty at and beyond L_max")

    @model_validator(mode="after")
    def _check(self) -> OverlongOptions:
        if self.max_len is not None and self.cache_len > self.max_len:
            raise ValueError(f"cache_len ({self.cache_len}) > max_len ({self.max_len})")
        return self


def overlong_filter_mask(response_mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """``response_mask`` [N, T] with the rows of truncated responses (``truncated`` [N])
    zeroed; keeps the mask's dtype (bool or float weights)."""
    if response_mask.dim() != 2 or truncated.shape != response_mask.shape[:1]:
        raise ValueError(
            f"response_mask [N, T] and truncated [N] expected, got "
            f"{tuple(response_mask.shape)} and {tuple(truncated.shape)}"
        )
    keep = ~truncated.to(device=response_mask.device, dtype=torch.bool)
    if response_mask.dtype == torch.bool:
        return response_mask & keep[:, None]
    return response_mask * keep[:, None].to(response_mask.dtype)


def soft_overlong_penalty(
    lengths: torch.Tensor, max_len: int, cache_len: int, penalty: float = 1.0
) -> torch.Tensor:
    """[N] float32 reward term for responses of ``lengths`` [N] tokens (see module doc)."""
    if max_len < 1 or not 0 <= cache_len <= max_len:
        raise ValueError(
            f"need 0 <= cache_len <= max_len, max_len >= 1 (got {cache_len}, {max_len})"
        )
    L = lengths.to(torch.float64)
    start = float(max_len - cache_len)
    ramp = (start - L) / cache_len if cache_len > 0 else torch.zeros_like(L)
    out = torch.where(L.le(start), torch.zeros_like(L), ramp)
    out = torch.where(L.gt(max_len), torch.full_like(L, -1.0), out)
    return (out * penalty).to(torch.float32)


def shape_scores(overlong: OverlongOptions, batch: RolloutBatch, scores: Scores) -> Scores:
    """The verifier's scores with the soft overlong penalty added to the reward (not to
    correctness), as a new ``Scores`` with the penalty in ``breakdown["overlong_penalty"]``;
    ``scores`` itself is left as the verifier made it."""
    if overlong.max_len is None or batch.num_rollouts == 0:
        return scores
    penalty = soft_overlong_penalty(
        batch.lengths, overlong.max_len, overlong.cache_len, overlong.penalty
    )
    return dataclasses.replace(
        scores,
        reward=scores.reward + penalty.to(scores.reward.dtype),
        breakdown={**scores.breakdown, "overlong_penalty": penalty.float()},
    )


def loss_mask(overlong: OverlongOptions, batch: RolloutBatch) -> torch.Tensor | None:
    """The tokens the loss may see: truncated responses dropped under overlong filtering,
    else None (the response mask)."""
    if not overlong.filter:
        return None
    return overlong_filter_mask(batch.response_mask, batch.truncated)
