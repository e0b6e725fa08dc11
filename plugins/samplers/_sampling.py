"""Sampling options every first-party sampler takes, declared once: the run file spells them
the same whichever engine generates (switching ``sampler.name`` keeps the options valid)."""

from __future__ import annotations

from pydantic import Field

from srpo.api import PluginOptions, splitmix64


class SamplingOptions(PluginOptions):
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(64, ge=1)


_MASK64 = (1 << 64) - 1


def row_seed(seed: int, sample: int) -> int:
    """The seed of sample ``sample`` of a prompt seeded ``seed``: a function of the two only
    (not of the batch it is generated in), in ``[0, 2**63)`` (``torch.manual_seed``'s range)."""
    return splitmix64(splitmix64(seed & _MASK64) ^ (sample & _MASK64)) >> 1
