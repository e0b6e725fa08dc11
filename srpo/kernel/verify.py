"""Scoring a batch: each rollout by its domain's verifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from srpo.api import PluginError, Prompt, RolloutBatch, Sampler, Score, Scores, Verifier


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
    sampler: Sampler, verifiers: Mapping[str, Verifier], eval_sets: Mapping[str, Sequence[Prompt]]
) -> dict[str, float]:
    """Greedy accuracy and mean response length on held-out sets, per domain and overall."""
    metrics: dict[str, float] = {}
    correct = total = 0
    for domain, prompts in eval_sets.items():
        batch = sampler.generate(prompts, 1, greedy=True)
        scores = verify_batch(verifiers, batch)
        metrics[f"accuracy/{domain}"] = float(scores.correct.float().mean()) if prompts else 0.0
        metrics[f"response_length/{domain}"] = float(batch.lengths.float().mean())
        correct += int(scores.correct.sum())
        total += len(prompts)
    metrics["accuracy"] = correct / max(total, 1)
    return metrics
