"""Generate, score and record: the evaluation loop, and the metrics from its records.

Each prompt's samples depend only on (seed, prompt id, model), never on which other
prompts share a call, so a resumed or ``--limit``-ed evaluation draws the same samples as
a full one, and the chunking is free to follow the progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from srpo.api import (
    Prompt,
    RolloutBatch,
    Sampler,
    Scores,
    Verifier,
    normalizes_answers,
    splitmix64,
)
from srpo.eval.estimators import maj_at_k, mean_and_stderr, pass_at_k
from srpo.eval.samples import GREEDY, SampleStore
from srpo.kernel.roles import takes_seeds
from srpo.kernel.verify import verify_batch

_MASK = (1 << 64) - 1


def prompt_seed(seed: int, prompt: Prompt) -> int:
    """The sampling seed of one prompt: a function of the eval seed and the prompt's stable
    id only (non-negative, < 2**63, as the samplers expect)."""
    return splitmix64(splitmix64(seed & _MASK) ^ (prompt.id & _MASK)) >> 1


def _records(
    b: RolloutBatch, scores: Scores, verifier: Verifier | None, dataset: str, greedy: bool
) -> list[dict[str, Any]]:
    """One JSON-ready record per rollout; ``answer`` only where the verifier votes."""
    lengths, rewards, correct = b.lengths.tolist(), scores.reward.tolist(), scores.correct.tolist()
    out = []
    for i in range(b.num_rollouts):
        p, error = b.prompt_of(i), scores.error[i]
        rec: dict[str, Any] = {
            "dataset": dataset,
            "prompt_id": p.id,
            "sample": GREEDY if greedy else int(b.sample[i]),
            "prompt": p.text,
            "response": b.response_text[i],
            "reward": float(rewards[i]),
            "correct": bool(correct[i]),
            "length": int(lengths[i]),
            "truncated": bool(b.truncated[i]),
        }
        if verifier is not None:
            rec["answer"] = verifier.normalize(b.response_text[i])
        if error:
            rec["error"] = error
        out.append(rec)
    return out


def run_eval(
    sampler: Sampler,
    verifiers: Mapping[str, Verifier],
    datasets: Mapping[str, Sequence[Prompt]],
    store: SampleStore,
    *,
    n: int,
    seed: int,
    greedy: bool,
    greedy_only: bool,
    batch_prompts: int,
    advance: Callable[[int], None] = lambda _: None,
) -> None:
    """Sample ``n`` responses per prompt (and, with ``greedy``, one greedy decode), score
    them with the dataset's verifier and add them to ``store``, chunk by chunk; prompts whose
    samples are all in the store already are skipped (``advance`` is told either way)."""
    seeded = takes_seeds(sampler)
    want = [GREEDY] if greedy_only else [*range(n), *([GREEDY] if greedy else [])]
    for domain, prompts in datasets.items():
        verifier = verifiers[domain]
        voter = verifier if normalizes_answers(verifier) else None
        todo = [p for p in prompts if not all(store.has((domain, p.id, s)) for s in want)]
        advance(len(prompts) - len(todo))
        for start in range(0, len(todo), batch_prompts):
            chunk = todo[start : start + batch_prompts]
            extra = {"seeds": [prompt_seed(seed, p) for p in chunk]} if seeded else {}
            if greedy_only:
                batch = sampler.generate(chunk, 1, greedy=True)
                store.add(_records(batch, verify_batch(verifiers, batch), voter, domain, True))
            else:
                batch = sampler.generate(chunk, n, **extra)
                recs = _records(batch, verify_batch(verifiers, batch), voter, domain, False)
                if greedy:
                    gb = sampler.generate(chunk, 1, greedy=True)
                    recs += _records(gb, verify_batch(verifiers, gb), voter, domain, True)
                store.add(recs)
            advance(len(chunk))


def summarize(
    store: SampleStore,
    datasets: Mapping[str, Sequence[Prompt]],
    *,
    n: int,
    ks: Sequence[int],
    greedy_only: bool,
    majority: Mapping[str, bool],
) -> dict[str, dict[str, float | int | None]]:
    """Metrics per dataset and ``overall`` (every prompt of every dataset, pooled) from the
    store's records of the prompts being evaluated. ``majority[d]``: maj@k is defined for
    dataset d (its verifier normalizes answers); overall reports it only when all do."""
    out: dict[str, dict[str, float | int | None]] = {}
    pooled: dict[str, list[Any]] = {}
    for domain, prompts in [*datasets.items(), ("overall", [])]:
        if domain == "overall":
            parts = pooled
            has_maj = bool(majority) and all(majority.values())
        else:
            parts = _per_prompt(store, domain, prompts, n, ks, greedy_only, majority[domain])
            has_maj = majority[domain]
            for k, v in parts.items():
                pooled.setdefault(k, []).extend(v)
        out[domain] = _metrics(parts, n, ks, has_maj)
    return out


def _per_prompt(
    store: SampleStore,
    domain: str,
    prompts: Sequence[Prompt],
    n: int,
    ks: Sequence[int],
    greedy_only: bool,
    voting: bool,
) -> dict[str, list[Any]]:
    """Per-prompt values (and per-sample lengths) of one dataset, as lists to pool."""
    parts: dict[str, list[Any]] = {"avg": [], "greedy": [], "length": [], "truncated": []}
    for k in ks:
        parts[f"pass@{k}"] = []
        if voting:
            parts[f"maj@{k}"] = []
    for p in prompts:
        idx = [GREEDY] if greedy_only else list(range(n))
        recs = [store.records[(domain, p.id, s)] for s in idx]
        ok = [bool(r["correct"]) for r in recs]
        parts["avg"].append(sum(ok) / len(ok))
        parts["length"] += [r["length"] for r in recs]
        parts["truncated"] += [bool(r["truncated"]) for r in recs]
        g = store.records.get((domain, p.id, GREEDY))
        if g is not None:
            parts["greedy"].append(float(g["correct"]))
        for k in ks:
            parts[f"pass@{k}"].append(pass_at_k(len(ok), sum(ok), k))
            if voting:
                parts[f"maj@{k}"].append(maj_at_k([r.get("answer") for r in recs], ok, k))
    return parts


def _metrics(
    parts: Mapping[str, list[Any]], n: int, ks: Sequence[int], has_maj: bool
) -> dict[str, float | int | None]:
    avg, se = mean_and_stderr(parts["avg"])
    lengths, trunc = parts["length"], parts["truncated"]
    m: dict[str, float | int | None] = {
        "prompts": len(parts["avg"]),
        "samples": len(lengths),
        "greedy": sum(parts["greedy"]) / len(parts["greedy"]) if parts["greedy"] else None,
        f"avg@{n}": avg,
        f"avg@{n}_stderr": se,
    }
    for k in ks:
        m[f"pass@{k}"] = _mean(parts[f"pass@{k}"])
    if has_maj:
        for k in ks:
            m[f"maj@{k}"] = _mean(parts[f"maj@{k}"])
    m["response_length"] = _mean(lengths)
    m["truncated"] = _mean([float(t) for t in trunc])
    return m


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
