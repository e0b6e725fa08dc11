"""Held-out evaluation during training: greedy as always, plus ``srpo eval``'s numbers.

With ``eval.n_samples: 0`` (the default) this is the greedy accuracy the kernel has always
reported, by the same code. With ``n_samples: n`` the held-out prompts are also sampled n
times and scored by ``srpo eval``'s own runner and estimators (``runner.run_eval`` and
``runner.summarize``: no second copy), so a curve drawn during training and a number
printed by ``srpo eval`` on a checkpoint mean the same thing. The samples are seeded per
prompt from ``run.seed`` alone (``runner.prompt_seed``): every evaluation of a run draws
with the same random numbers, so the differences between steps are the model's, not the
dice's.

The metric keys add to the greedy ones (``accuracy``, ``accuracy/<d>``,
``response_length/<d>``, unchanged): ``avg@n``, ``avg@n_stderr``, ``pass@k``, ``maj@k``
(where the verifier normalizes answers; overall only when all of them do),
``sample_length`` (mean tokens of the samples) and ``sample_truncated`` (share cut at
max_new_tokens), each overall and per domain as ``<key>/<domain>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from srpo.api import Curriculum, Prompt, Sampler, Verifier, normalizes_answers
from srpo.distributed import Dist
from srpo.eval.estimators import default_ks
from srpo.eval.runner import run_eval, summarize
from srpo.eval.samples import SampleStore
from srpo.kernel.verify import evaluate_sets

#: ``srpo eval``'s per-dataset keys that name something else in a training run's metrics.
_RENAMED = {"response_length": "sample_length", "truncated": "sample_truncated"}
#: Not reported as metrics: counts, and the greedy accuracy (already ``accuracy``).
_SKIPPED = {"prompts", "samples", "greedy"}


@dataclass(frozen=True)
class SampledEval:
    """What ``eval.n_samples/temperature/pass_k`` and ``run.seed`` ask for."""

    n: int
    temperature: float | None
    ks: tuple[int, ...]
    seed: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SampledEval:
        """From the kernel's (validated, JSON-dumped) run config; ``{}`` is greedy only."""
        from srpo.config import EvalSection

        fields = ("n_samples", "temperature", "pass_k")
        raw = {k: v for k, v in dict(config.get("eval") or {}).items() if k in fields}
        section = EvalSection.model_validate(raw)
        n = section.n_samples
        ks = tuple(section.pass_k) if section.pass_k else tuple(default_ks(n) if n else ())
        seed = int(dict(config.get("run") or {}).get("seed") or 0)
        return cls(n, section.temperature, ks, seed)


def held_out_metrics(
    sampler: Sampler,
    verifiers: Mapping[str, Verifier],
    eval_sets: Mapping[str, Sequence[Prompt]],
    dist: Dist,
    plan: SampledEval,
    curriculum: Curriculum,
) -> dict[str, float]:
    """Greedy metrics, plus the sampled ones when ``plan.n`` > 0."""
    metrics = evaluate_sets(sampler, verifiers, eval_sets, dist)
    if plan.n > 0:
        metrics.update(sampled_metrics(sampler, verifiers, eval_sets, dist, plan, curriculum))
    return metrics


def sampled_metrics(
    sampler: Sampler,
    verifiers: Mapping[str, Verifier],
    eval_sets: Mapping[str, Sequence[Prompt]],
    dist: Dist,
    plan: SampledEval,
    curriculum: Curriculum,
) -> dict[str, float]:
    """avg@n ± se, pass@k, maj@k, length and truncation of ``plan.n`` samples per prompt.

    Data-parallel: each rank samples its share of every set; the scored records are
    gathered so every rank summarizes the same whole. The sampler runs at
    ``plan.temperature`` for this call only, on top of the current stage's overrides,
    which are put back afterwards (also when generation fails)."""
    share = {d: [ps[i] for i in dist.shard(len(ps))] for d, ps in eval_sets.items()}
    store = SampleStore(None, {})
    stage = dict(curriculum.overrides().get("sampler", {}))
    if plan.temperature is not None:
        sampler.override({**stage, "temperature": plan.temperature})
    try:
        run_eval(
            sampler,
            verifiers,
            share,
            store,
            n=plan.n,
            seed=plan.seed,
            greedy=False,
            greedy_only=False,
            batch_prompts=max([1, *(len(ps) for ps in share.values())]),
        )
    finally:
        if plan.temperature is not None:
            sampler.override(stage)
    if dist.active:
        for part in dist.all_gather(list(store.records.values())):
            store.add(part)
    voting = {d: normalizes_answers(verifiers[d]) for d in eval_sets}
    summary = summarize(store, eval_sets, n=plan.n, ks=plan.ks, greedy_only=False, majority=voting)
    return flatten(summary)


def flatten(summary: Mapping[str, Mapping[str, float | int | None]]) -> dict[str, float]:
    """``srpo eval``'s ``{dataset: {metric: value}}`` as a training run's flat keys:
    ``metric`` for ``overall``, ``metric/dataset`` for each dataset."""
    out: dict[str, float] = {}
    for dataset, values in summary.items():
        suffix = "" if dataset == "overall" else f"/{dataset}"
        for key, value in values.items():
            if key in _SKIPPED or value is None:
                continue
            out[f"{_RENAMED.get(key, key)}{suffix}"] = float(value)
    return out
