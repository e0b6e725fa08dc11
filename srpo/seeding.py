"""Per-prompt sampling seeds (and the 64-bit mix samplers derive theirs with): what makes N data-parallel ranks sample what one process does.

The kernel gives the sampler one seed per prompt, a function of the run seed, the step,
the generation round and the prompt's position in the step — not of which rank generates
it or what else is in its batch. A sampler that honours them (``generate(..., seeds=)``)
samples the same tokens whether one process or N ranks generate the step.
"""

from __future__ import annotations

_MASK = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """One step of SplitMix64: a fast, well-mixed 64-bit hash of ``x``."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def prompt_seeds(run_seed: int, step: int, round_: int, n: int) -> list[int]:
    """``n`` seeds (non-negative, < 2**63) for the prompts of one generation round."""
    base = splitmix64(splitmix64(splitmix64(run_seed & _MASK) ^ step) ^ round_)
    return [splitmix64(base ^ i) >> 1 for i in range(n)]
