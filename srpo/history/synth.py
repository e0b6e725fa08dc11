"""Deterministic, realistic rollout records for tests, benchmarks and demos.

Each prompt gets a pass rate drawn from Beta(a, a) with a < 1 (U-shaped: many prompts the
policy always solves and many it never does, as SRPO's history resampling assumes); each
rollout is correct with that rate; lengths are log-normal, capped (capped = truncated).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from srpo.history.schema import FLAG_TRUNCATED, FLAG_VERIFIER_ERROR

MAX_LEN = 4096


@dataclass(frozen=True)
class PromptPool:
    """A fixed prompt set: stable random u64 ids, a true pass rate and a domain each."""

    ids: np.ndarray
    pass_rate: np.ndarray
    domain: np.ndarray

    @staticmethod
    def make(num_prompts: int, seed: int = 0, beta: float = 0.3) -> PromptPool:
        rng = np.random.default_rng(seed)
        ids = rng.integers(0, 2**64 - 1, size=num_prompts, dtype=np.uint64, endpoint=True)
        return PromptPool(
            ids,
            rng.beta(beta, beta, size=num_prompts),
            rng.integers(0, 2, size=num_prompts).astype(np.uint8),
        )


def rollouts(
    pool: PromptPool, prompts: np.ndarray, group: int, epoch: int, step: int, seed: int
) -> dict[str, np.ndarray]:
    """Columns of ``group`` rollouts for each prompt index in ``prompts`` (adjacent)."""
    rng = np.random.default_rng([seed, epoch, step])
    n = prompts.size * group
    p = np.repeat(pool.pass_rate[prompts], group)
    correct = rng.random(n) < p
    length = rng.lognormal(np.where(correct, 6.0, 6.6), 0.7).astype(np.int64) + 1
    truncated = length >= MAX_LEN
    length = np.minimum(length, MAX_LEN)
    correct &= ~truncated
    err = rng.random(n) < 1e-4
    correct &= ~err
    flags = truncated * FLAG_TRUNCATED + err * FLAG_VERIFIER_ERROR
    reward = correct.astype(np.float32)
    reward[truncated] = -0.5
    return {
        "prompt_id": np.repeat(pool.ids[prompts], group),
        "epoch": np.full(n, epoch, np.uint32),
        "step": np.full(n, step, np.uint32),
        "sample": np.tile(np.arange(group, dtype=np.uint16), prompts.size),
        "domain": np.repeat(pool.domain[prompts], group),
        "reward": reward,
        "correct": correct.astype(np.uint8),
        "length": length.astype(np.uint32),
        "flags": flags.astype(np.uint8),
        "stage": np.zeros(n, np.uint8),
    }


def epoch_batches(
    pool: PromptPool,
    *,
    group: int,
    epoch: int,
    batch_records: int,
    first_step: int = 0,
    seed: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """One epoch over the pool in shuffled order, one step (``batch_records``) at a time."""
    order = np.random.default_rng([seed, epoch, 2**31]).permutation(pool.ids.size)
    per = max(1, batch_records // group)
    for k, s in enumerate(range(0, order.size, per)):
        yield rollouts(pool, order[s : s + per], group, epoch, first_step + k, seed)
