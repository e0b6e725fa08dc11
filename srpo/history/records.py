"""One training step's rollouts as history records: the columns ``HistoryStore.append`` takes.

The kernel calls ``rollout_columns`` after verification and passes the result on:
``store.append(**rollout_columns(batch, scores, epoch=..., step=..., stage=...,
domain_codes=...))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from srpo.history.schema import FLAG_TRUNCATED, FLAG_VERIFIER_ERROR

if TYPE_CHECKING:  # srpo.types imports torch; writers (and crash-test children) start fast
    from srpo.types import RolloutBatch, Scores


def rollout_columns(
    batch: RolloutBatch,
    scores: Scores,
    *,
    epoch: int,
    step: int,
    stage: int,
    domain_codes: Mapping[str, int],
    with_tokens: bool = False,
) -> dict[str, Any]:
    """The record columns (``RECORD_COLUMNS``, on-disk dtypes) of every rollout in ``batch``.

    ``scores`` are the batch's verdicts (row for row); ``domain_codes`` maps each prompt's
    domain to the code stored in ``domain`` (u8). ``flags`` marks truncated responses
    (``FLAG_TRUNCATED``) and verifier errors (``FLAG_VERIFIER_ERROR``). ``with_tokens`` (a
    store opened with ``store_tokens``) adds ``tokens``: each response's ids, unpadded.
    """
    n = batch.num_rollouts
    group = batch.group.numpy()
    pid = np.array([p.id for p in batch.prompts], dtype=np.uint64)[group]
    dom = np.array([domain_codes[p.domain] for p in batch.prompts], dtype=np.uint8)[group]
    error = np.array([e is not None for e in scores.error], dtype=np.uint8)
    flags = (batch.truncated.numpy().astype(np.uint8) * FLAG_TRUNCATED) | (
        error * FLAG_VERIFIER_ERROR
    )
    columns: dict[str, Any] = {
        "prompt_id": pid,
        "epoch": np.full(n, epoch, dtype=np.uint32),
        "step": np.full(n, step, dtype=np.uint32),
        "sample": batch.sample.numpy().astype(np.uint16),
        "domain": dom,
        "reward": scores.reward.numpy().astype(np.float32),
        "correct": scores.correct.numpy().astype(np.uint8),
        "length": batch.lengths.numpy().astype(np.uint32),
        "flags": flags,
        "stage": np.full(n, stage, dtype=np.uint8),
    }
    if with_tokens:
        ids, lengths = batch.response_ids.numpy(), batch.lengths.tolist()
        columns["tokens"] = [ids[i, :k] for i, k in enumerate(lengths)]
    return columns
