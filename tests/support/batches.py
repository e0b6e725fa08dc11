"""Small hand-made RolloutBatches for tests that need the data type, not a model."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from srpo.api import Prompt, RolloutBatch


def make_batch(
    prompts: Sequence[Prompt],
    group: Sequence[int],
    texts: Sequence[str],
    *,
    mask: torch.Tensor | None = None,
    truncated: Sequence[bool] | None = None,
    temperature: float = 1.0,
) -> RolloutBatch:
    """Rollout i answers ``prompts[group[i]]`` with ``texts[i]``; token ids are all 1, the
    mask is full (or ``mask`` [N, T]), samples are numbered within each group."""
    n = len(group)
    m = mask if mask is not None else torch.ones(n, 1, dtype=torch.bool)
    seen: dict[int, int] = {}
    sample = []
    for g in group:
        sample.append(seen.get(g, 0))
        seen[g] = sample[-1] + 1
    return RolloutBatch(
        prompts=list(prompts),
        group=torch.tensor(list(group), dtype=torch.long),
        sample=torch.tensor(sample, dtype=torch.long),
        prompt_token_ids=[[1] for _ in prompts],
        response_ids=torch.ones(m.shape, dtype=torch.long),
        response_mask=m,
        behaviour_logp=torch.zeros(m.shape),
        truncated=torch.tensor(list(truncated) if truncated is not None else [False] * n),
        response_text=list(texts),
        temperature=temperature,
    )
