"""Which prompt groups carry a learning signal: the rule behind SRPO's and DAPO's filtering."""

from __future__ import annotations

import torch


def group_has_signal(group: torch.Tensor, reward: torch.Tensor, n_groups: int) -> torch.Tensor:
    """[P] bool: the group's rewards are not all equal, so its advantages are not all zero.

    "Equal" is relative (``max - min <= 1e-6 * max(1, |max|)``), so float noise on rewards
    that are meant to be the same does not count as signal.
    """
    if group.numel() == 0:
        return torch.zeros(n_groups, dtype=torch.bool)
    r = reward.double()
    hi = torch.full((n_groups,), -torch.inf, dtype=torch.float64).scatter_reduce(
        0, group, r, "amax"
    )
    lo = torch.full((n_groups,), torch.inf, dtype=torch.float64).scatter_reduce(0, group, r, "amin")
    return (hi - lo) > 1e-6 * torch.clamp(hi.abs(), min=1.0)
