"""The loss stats of one update, gathered over its micro-batches (and ranks).

Its own module because the accumulation is a performance contract (device tensors, one host
read per update) that the update loop should not have to spell out, and because a skipped
micro-batch's stats are known without running it (``flat_micro_stats``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from srpo.distributed import Dist


class UpdateStats:
    """Loss stats over an update's micro-batches, kept as float64 device tensors so they
    reach the host once, at the end (a float() per micro-batch would stall a GPU's queue).
    Counts are summed; everything else is weighted by the micro-batch's tokens."""

    SUMMED = (
        "tokens",
        "sequences",
        "skipped_tokens",
        "loss_sum",
        "token_slots",
        "real_tokens",
        "passes",
        "recomputed",
        "selective",
    )

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.weights: dict[str, float] = {}

    def add(self, stats: Mapping[str, Any], weight: float) -> None:
        for k, v in stats.items():
            if isinstance(v, torch.Tensor):
                v = v.to(torch.float64)
            if k in self.SUMMED:
                self.sums[k] = self.sums.get(k, 0.0) + v
                continue
            self.sums[k] = self.sums.get(k, 0.0) + v * weight
            self.weights[k] = self.weights.get(k, 0.0) + weight

    def result(self, dist: Dist | None = None) -> dict[str, float]:
        """The stats of the whole update: sums and weights of every rank's micro-batches
        added up (gathered as host numbers: ranks may hold different keys)."""
        on_device = [k for k, v in self.sums.items() if isinstance(v, torch.Tensor)]
        host = dict(self.sums)
        if on_device:  # one device-to-host copy for all stats
            values = torch.stack([self.sums[k] for k in on_device]).tolist()
            host.update(zip(on_device, values, strict=True))
        sums, weights = {k: float(v) for k, v in host.items()}, dict(self.weights)
        if dist is not None and dist.active:
            sums, weights = {}, {}
            for rank_sums, rank_weights in dist.all_gather((host, self.weights)):
                for k, v in rank_sums.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                for k, w in rank_weights.items():
                    weights[k] = weights.get(k, 0.0) + float(w)
        return {k: v / weights[k] if k in weights else v for k, v in sums.items()}


def flat_micro_stats(m_host: torch.Tensor) -> dict[str, Any]:
    """The loss stats a micro-batch of zero-advantage rows would report, known without
    running it (its loss adds 0, clip shares 0); approx_kl, entropy, the behaviour gap and the
    mismatch_* stats need the forward pass and are averaged over the micro-batches that ran.
    The advantage stats are the mini-batch's (``srpo.ops.advantage_pass``), not a pass's."""
    return {
        "clip_frac_low": 0.0,
        "clip_frac_high": 0.0,
        "dual_clip_frac": 0.0,
        "kl": 0.0,
        "tokens": float(m_host.sum()),
        "sequences": float(m_host.any(1).sum()),
    }
