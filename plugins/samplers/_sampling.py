"""Sampling options every first-party sampler takes, declared once: the run file spells them
the same whichever engine generates (switching ``sampler.name`` keeps the options valid)."""

from __future__ import annotations

from pydantic import Field

from srpo.api import PluginOptions


class SamplingOptions(PluginOptions):
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(64, ge=1)
