"""The numbers RL papers report, from per-sample correctness: avg@n, pass@k, maj@k.

Each estimator works on one prompt's ``n`` samples and is averaged over prompts by the
caller, because that is how the papers define them (a prompt is the unit, not a sample),
and it is what makes the standard error of avg@n meaningful: prompts are the independent
draws; the samples of one prompt are not independent of each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with ``c`` correct out of ``n`` samples (Chen et al.
    2021): ``1 - C(n-c, k) / C(n, k)``, the chance that ``k`` of the ``n`` samples drawn
    without replacement hold at least one correct one.

    Computed as ``1 - prod_{i=n-c+1..n} (1 - k/i)``: the binomials overflow a float for
    the n of real evaluations, the product never does. Not ``1 - (1 - c/n)**k``, which
    draws with replacement and is biased low for k > 1."""
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n (got c={c}, n={n})")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n (got k={k}, n={n})")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(m)); the error is NaN for m < 2,
    where it is unknown, rather than a misleading 0."""
    m = len(values)
    if m == 0:
        return float("nan"), float("nan")
    mean = math.fsum(values) / m
    if m < 2:
        return mean, float("nan")
    var = math.fsum((v - mean) ** 2 for v in values) / (m - 1)
    return mean, math.sqrt(var / m)


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the most frequent answer of one set of samples is correct. Samples without
    an answer (``None``) do not vote; no votes at all is a wrong answer. Ties go to the
    answer seen first, so the result depends on the samples only, never on hash order."""
    counts: dict[str, int] = {}
    verdict: dict[str, bool] = {}
    for a, ok in zip(answers, correct, strict=True):
        if a is None:
            continue
        counts[a] = counts.get(a, 0) + 1
        verdict.setdefault(a, bool(ok))
    if not counts:
        return False
    best = max(counts.values())
    winner = next(a for a in counts if counts[a] == best)  # dicts keep first-seen order
    return verdict[winner]


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """maj@k of one prompt: the share of its ``n // k`` disjoint blocks of ``k`` consecutive
    samples whose majority answer is correct. The samples are i.i.d., so each block is an
    independent draw of "k samples, then a vote": an unbiased estimate that uses every
    sample (for k = n it is the one vote over all samples)."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n (got k={k}, n={n})")
    blocks = n // k
    wins = sum(
        majority_correct(answers[b * k : (b + 1) * k], correct[b * k : (b + 1) * k])
        for b in range(blocks)
    )
    return wins / blocks


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself: the curve papers plot, in ``n``'s reach."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    ks.append(n)
    return ks
