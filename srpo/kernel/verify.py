"""Scoring a batch: each rollout by its domain's verifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from srpo.api import PluginError, Prompt, RolloutBatch, Sampler, Score, Scores, Verifier
from srpo.distributed import Dist


def verify_batch(verifiers: Mapping[str, Verifier], batch: RolloutBatch) -> Scores:
    """Score each rollout with its domain's verifier. A verifier that raises (or returns the
    wrong number of scores) costs its samples their reward, counted as verifier errors, not
    the run: verifiers that should stop the run on an internal error say so themselves
    (e.g. the code verifier's ``fail_fast`` option) by raising ``PluginError``."""
    n = batch.num_rollouts
    if n == 0:
        return Scores(torch.zeros(0), torch.zeros(0, dtype=torch.bool), [])
    out: list[Score | None] = [None] * n
    by_domain: dict[str, list[int]] = {}
    for i in range(n):
        by_domain.setdefault(batch.prompt_of(i).domain, []).append(i)
    for domain, rows in by_domain.items():
        got = _score_domain(verifiers[domain], batch, rows)
        for i, s in zip(rows, got, strict=True):
            out[i] = s
    return Scores.from_list([s for s in out if s is not None])


def _score_domain(verifier: Verifier, batch: RolloutBatch, rows: list[int]) -> list[Score]:
    prompts = [batch.prompt_of(i) for i in rows]
    texts = [batch.response_text[i] for i in rows]
    try:
        got = verifier.score(prompts, texts)
        if len(got) != len(rows):
            raise ValueError(f"returned {len(got)} scores for {len(rows)} responses")
        return list(got)
    except Exception as e:
        if isinstance(e, PluginError):
            raise
        return [Score(0.0, False, error=f"verifier raised {type(e).__name__}: {e}") for _ in rows]


def evaluate_sets(
    sampler: Sampler,
    verifiers: Mapping[str, Verifier],
    eval_sets: Mapping[str, Sequence[Prompt]],
    dist: Dist | None = None,
) -> dict[str, float]:
    """Greedy accuracy and mean response length on held-out sets, per domain and overall.
    Data-parallel: each rank evaluates its share of every set; the counts are gathered."""
    dist = dist if dist is not None else Dist.local()
    metrics: dict[str, float] = {}
    correct = total = 0
    for domain, prompts in eval_sets.items():
        share = [prompts[i] for i in dist.shard(len(prompts))]
        batch = sampler.generate(share, 1, greedy=True)
        scores = verify_batch(verifiers, batch)
        mine = (int(scores.correct.sum()), int(batch.lengths.sum()), len(share))
        ok, length, n = (sum(x) for x in zip(*dist.all_gather(mine), strict=True))
        metrics[f"accuracy/{domain}"] = ok / n if n else 0.0
        metrics[f"response_length/{domain}"] = length / n if n else float("nan")
        correct += ok
        total += n
    metrics["accuracy"] = correct / max(total, 1)
    return metrics
