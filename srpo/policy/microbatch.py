"""How an update's batch is cut into optimizer steps and forward/backward passes.

Mini-batches (one optimizer step each) are interleaved slices of the prompt groups. Their
advantages come from one pass over the whole mini-batch (``srpo.ops.advantage_pass``) and the
loss of each micro-batch is divided by the mini-batch's token (or sequence) count, so a
micro-batch may hold rows of any groups: the micro-batch losses add up to the mini-batch's.

Micro-batches (one forward/backward each) are then either

* counted in rollouts (``policy.micro_batch_size``): whole groups, about that many rows each
  — the layout of earlier releases, kept for users who want it; or
* cut by a token budget (``policy.max_tokens_per_micro_batch``), as verl's dynamic batch size
  does: rows sorted by length and packed under the budget, the passes balanced so that no
  pass (and no data-parallel rank) waits on a much longer one. The cost of a pass is what its
  forward holds: the sum of its rows' tokens when it runs packed (``policy.padding_free``),
  its rows × its longest row when it runs padded.

Rows whose advantage is exactly zero are planned apart from the others in both layouts, so
that skipping them (``policy.skip_zero_advantage``) leaves every other pass, and so every
floating-point sum, unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from srpo.types import RolloutBatch


def mini_batches(num_groups: int, k: int) -> list[list[int]]:
    """Groups of each optimizer step: ``k`` interleaved slices of ``range(num_groups)``."""
    groups = list(range(num_groups))
    return [m for m in (groups[i::k] for i in range(k)) if m]


def group_rows(batch: RolloutBatch, groups: Sequence[int]) -> torch.Tensor:
    """The rows of ``groups``, group by group."""
    if not groups:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([(batch.group == g).nonzero().flatten() for g in groups])


def row_tokens(batch: RolloutBatch) -> torch.Tensor:
    """[N] tokens a forward pass reads per row: its prompt and its real response tokens (the
    response mask's length, not the loss mask's: a row's forward covers its whole response
    even where an algorithm drops tokens from the loss)."""
    prompt = torch.tensor([len(batch.prompt_token_ids[int(g)]) for g in batch.group])
    return prompt.long() + batch.lengths.long()


def pass_cost(lengths: Sequence[int], padded: bool) -> int:
    """Token slots a pass over rows of these lengths holds (see the module doc)."""
    if not lengths:
        return 0
    return len(lengths) * max(lengths) if padded else sum(lengths)


# --------------------------------------------------------------------------- by count


def count_micro_batches(batch: RolloutBatch, groups: Sequence[int], size: int) -> list[list[int]]:
    """Row lists of whole groups, about ``size`` rollouts each (the count layout)."""
    out: list[list[int]] = []
    cur: list[int] = []
    for g in groups:
        rows = (batch.group == g).nonzero().flatten().tolist()
        if cur and len(cur) + len(rows) > size:
            out.append(cur)
            cur = []
        cur += rows
    if cur:
        out.append(cur)
    return out


# --------------------------------------------------------------------------- by token budget


def _balanced_bins(items: list[tuple[int, int]], bins: int, cap: int) -> list[list[int]] | None:
    """Longest-first greedy: each (row, length) into the least-loaded of the ``bins`` it fits
    in (sum of lengths ≤ ``cap``); None when one fits nowhere. ``items``: longest first."""
    loads = [0] * bins
    out: list[list[int]] = [[] for _ in range(bins)]
    for row, length in items:
        fits = [b for b in range(bins) if loads[b] + length <= cap]
        if not fits:
            return None
        b = min(fits, key=lambda k: (loads[k], k))
        out[b].append(row)
        loads[b] += length
    return [b for b in out if b]


def packed_micro_batches(lengths: dict[int, int], budget: int) -> list[list[int]]:
    """Rows (``{row: tokens}``) into as few passes as fit ``budget`` tokens each (summed:
    the packed layout), balanced longest-first; a row longer than the budget runs alone."""
    if not lengths:
        return []
    items = sorted(lengths.items(), key=lambda kv: (-kv[1], kv[0]))
    alone = [[row] for row, n in items if n > budget]
    rest = [(row, n) for row, n in items if n <= budget]
    if not rest:
        return alone
    bins = max(1, math.ceil(sum(n for _, n in rest) / budget))
    while True:
        packed = _balanced_bins(rest, bins, budget)
        if packed is not None:
            return alone + packed
        bins += 1


def padded_micro_batches(lengths: dict[int, int], budget: int) -> list[list[int]]:
    """Rows into passes of ``rows × longest ≤ budget`` (the padded layout): sorted longest
    first, cut where the next row would overflow, then evened out — the same number of passes
    with rows moved from the fuller passes to the emptier ones where the budget allows."""
    if not lengths:
        return []
    items = sorted(lengths.items(), key=lambda kv: (-kv[1], kv[0]))
    out: list[list[tuple[int, int]]] = []
    for row, n in items:
        cur = out[-1] if out else None
        if cur is not None and (len(cur) + 1) * cur[0][1] <= budget:
            cur.append((row, n))
        else:
            out.append([(row, n)])
    # even out the passes' slot counts: move a pass's shortest rows to the next (shorter)
    # pass while that lowers the larger of the two costs
    for i in range(len(out) - 1):
        a, b = out[i], out[i + 1]
        while len(a) > 1:
            moved = a[-1]
            new_b = [moved, *b]
            cost_a = len(a) * a[0][1]
            new_cost_b = len(new_b) * new_b[0][1]
            if new_cost_b > budget or max(cost_a - a[0][1], new_cost_b) >= max(
                cost_a, len(b) * b[0][1]
            ):
                break
            a.pop()
            out[i + 1] = b = new_b
    return [[row for row, _ in mb] for mb in out]


def budget_micro_batches(lengths: dict[int, int], budget: int, padded: bool) -> list[list[int]]:
    """Token-budget passes over ``{row: tokens}`` in the packed or the padded layout."""
    if padded:
        return padded_micro_batches(lengths, budget)
    return packed_micro_batches(lengths, budget)


def split_across_ranks(lengths: dict[int, int], world: int) -> list[list[int]]:
    """Rows (``{row: tokens}``) shared out among ``world`` ranks with about equal tokens each
    (longest first into the least-loaded rank), every rank's rows in row order. Every rank
    computes the same split from the same batch, so nothing is communicated."""
    if world == 1:
        return [sorted(lengths)]
    items = sorted(lengths.items(), key=lambda kv: (-kv[1], kv[0]))
    loads = [0] * world
    out: list[list[int]] = [[] for _ in range(world)]
    for row, n in items:
        r = min(range(world), key=lambda k: (loads[k], len(out[k]), k))
        out[r].append(row)
        loads[r] += n
    return [sorted(rows) for rows in out]
