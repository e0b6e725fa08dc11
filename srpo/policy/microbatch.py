"""How an update's batch is cut into optimizer steps and forward/backward passes, and what
each pass's loss counts for.

Mini-batches (one optimizer step each) are interleaved slices of the prompt groups;
micro-batches (one forward/backward each) are whole groups, about ``micro_batch_size``
rollouts; each micro-batch's loss is weighted by its share of the mini-batch's tokens (rows,
for the seq-mean aggregations), so a step equals one pass over the whole mini-batch. Its own
module so that how rows are grouped and normalized can change (token-budget micro-batches,
global normalizers) without touching the update loop.
"""

from __future__ import annotations

import torch

from srpo.types import RolloutBatch


def mini_batches(num_groups: int, k: int) -> list[list[int]]:
    """Groups of each optimizer step: ``k`` interleaved slices of ``range(num_groups)``."""
    groups = list(range(num_groups))
    return [m for m in (groups[i::k] for i in range(k)) if m]


def micro_batches(batch: RolloutBatch, groups: list[int], size: int) -> list[torch.Tensor]:
    """Row sets of whole groups, about ``size`` rollouts each: the loss op normalizes
    advantages per group, so a group is never split."""
    out, cur, n = [], [], 0
    for g in groups:
        rows = (batch.group == g).nonzero().flatten()
        if n and n + len(rows) > size:
            out.append(torch.cat(cur))
            cur, n = [], 0
        cur.append(rows)
        n += len(rows)
    if cur:
        out.append(torch.cat(cur))
    return out


def group_rows(batch: RolloutBatch, groups: list[int]) -> torch.Tensor:
    """The rows of ``groups``, group by group."""
    return torch.cat([(batch.group == g).nonzero().flatten() for g in groups])


def loss_units(mask: torch.Tensor, seq_level: bool) -> float:
    """What a loss averages over in ``mask`` [n, T]: its tokens, or (``seq_level``: the
    seq-mean aggregations) its non-empty rows."""
    return float((mask.any(1) if seq_level else mask).sum())


def loss_share(mask: torch.Tensor, total: float, seq_level: bool, world_size: int) -> float:
    """The weight of a micro-batch's loss (its ``mask``) in a mini-batch of ``total`` units
    (global: every rank's rows); × ``world_size`` because FSDP averages the ranks' gradients."""
    share = loss_units(mask, seq_level) / max(total, 1.0)
    return share * world_size
