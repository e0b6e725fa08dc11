"""What every first-party sampler takes, declared once: the sampling options (the run file
spells them the same whichever engine generates, so switching ``sampler.name`` keeps them
valid) and the kernel's per-prompt seeds, checked the same way by each."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from srpo.api import PluginOptions, Prompt, splitmix64


class SamplingOptions(PluginOptions):
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    top_p: float = Field(
        1.0, gt=0, le=1, description="nucleus sampling: the smallest set of tokens with this mass"
    )
    top_k: int | None = Field(None, ge=1, description="keep the k most likely tokens (none: all)")
    max_new_tokens: int = Field(
        64, ge=1, description="longest response in tokens; a longer one is cut (truncated)"
    )


_MASK64 = (1 << 64) - 1


def prompt_seeds(seeds: Sequence[int], prompts: Sequence[Prompt]) -> list[int]:
    """The kernel's seeds for ``generate`` as ints, one per prompt: a count that does not
    match would pair prompts with the wrong seeds, so it fails here, in one line."""
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    return [int(x) for x in seeds]


def row_seed(seed: int, sample: int) -> int:
    """The seed of sample ``sample`` of a prompt seeded ``seed``: a function of the two only
    (not of the batch it is generated in), in ``[0, 2**63)`` (``torch.manual_seed``'s range)."""
    return splitmix64(splitmix64(seed & _MASK64) ^ (sample & _MASK64)) >> 1
