"""Reasoning-behaviour metrics of a step's rollouts: how long, how often cut, how reflective.

The SRPO paper's analysis (Kwai, 2025, section "Reasoning behaviour") follows how the
policy's reasoning changes during training: response length per stage (it grows in the
math-first stage, which is the curriculum's point) and how often reflective phrases —
"recheck", "wait", "alternatively", ... — appear. Averages hide both stories, so lengths are
summarized by mean, median, 90th percentile and maximum, and every number is split by
domain and by correct / incorrect: a long tail of wrong, truncated answers and a growing
share of correct ones that re-check themselves are different trainings with the same mean.

Keys (every one a share or a token count, per step):

- ``behaviour/<stat>``: all of the step's rollouts;
- ``behaviour/correct/<stat>``, ``behaviour/incorrect/<stat>``: split by the verifier;
- ``behaviour/<domain>/<stat>``, ``behaviour/<domain>/correct/<stat>``, ...: per domain;
- ``reflection/<pattern>``: share of all the step's rollouts in which the pattern occurs.

with ``<stat>`` one of ``responses``, ``length_mean``, ``length_p50``, ``length_p90``,
``length_max``, ``truncated`` (share cut at max_new_tokens), ``reflection`` (share with at
least one pattern) and ``reflections`` (pattern occurrences per response). A split with no
rollouts this step is left out rather than reported as 0. Percentiles interpolate linearly
(numpy's default). Matching is per pattern (overlaps between patterns count for each) and
case-insensitive; the text is the decoded response, special tokens stripped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from srpo.types import RolloutBatch, Scores

#: The reflection words of the SRPO paper's analysis and their common spellings; a run
#: file's ``behaviour.patterns`` replaces this list, ``behaviour.extra_patterns`` adds to it.
DEFAULT_PATTERNS: dict[str, str] = {
    "recheck": r"\bre-?check",
    "rethink": r"\bre-?think",
    "reassess": r"\bre-?assess",
    "reevaluate": r"\bre-?evaluat",
    "reexamine": r"\bre-?examin",
    "double_check": r"\bdouble[- ]?check",
    "let_me_check": r"\blet me (?:re-?)?check\b",
    "verify": r"\bverif(?:y|ied|ies|ying|ication)\b",
    "wait": r"\bwait\b",
    "alternatively": r"\balternatively\b",
    "however": r"\bhowever\b",
    "mistake": r"\bmistakes?\b",
}

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
STATS = (
    "responses",
    "length_mean",
    "length_p50",
    "length_p90",
    "length_max",
    "truncated",
    "reflection",
    "reflections",
)


def check_patterns(patterns: Mapping[str, str]) -> None:
    """Raise ``ValueError`` (one line, naming the pattern) for a name that cannot be a
    metric key, a regex that does not compile, or one that matches the empty string (it
    would "occur" in every response and drown the others)."""
    for name, regex in patterns.items():
        if not _NAME.match(name):
            raise ValueError(
                f"pattern name {name!r}: use letters, digits, '_' and '-' (it becomes the "
                "metric reflection/NAME)"
            )
        try:
            compiled = re.compile(regex, re.IGNORECASE)
        except re.error as e:
            raise ValueError(f"pattern {name!r}: bad regex {regex!r}: {e}") from None
        if compiled.search("") is not None:
            raise ValueError(
                f"pattern {name!r}: regex {regex!r} matches the empty string (it would "
                "count in every response)"
            )


def compile_patterns(patterns: Mapping[str, str]) -> dict[str, re.Pattern[str]]:
    check_patterns(patterns)
    return {name: re.compile(regex, re.IGNORECASE) for name, regex in patterns.items()}


def behaviour_metrics(
    texts: Sequence[str],
    lengths: Sequence[int],
    truncated: Sequence[bool],
    domains: Sequence[str],
    correct: Sequence[bool],
    patterns: Mapping[str, re.Pattern[str]],
) -> dict[str, float]:
    """The metrics of one step's responses (one entry per response in each sequence)."""
    n = len(texts)
    if not n:
        return {}
    counts = np.zeros((n, len(patterns)), dtype=np.int64)
    for j, rx in enumerate(patterns.values()):
        for i, text in enumerate(texts):
            counts[i, j] = sum(1 for _ in rx.finditer(text))
    length = np.asarray(lengths, dtype=np.float64)
    cut = np.asarray(truncated, dtype=bool)
    ok = np.asarray(correct, dtype=bool)
    dom = np.asarray(domains, dtype=object)
    total = counts.sum(axis=1)
    out: dict[str, float] = {}
    scopes: list[tuple[str, np.ndarray]] = [("", np.ones(n, dtype=bool))]
    for d in sorted(set(domains)):
        scopes.append((f"{d}/", dom == d))
    for prefix, rows in scopes:
        for split, where in (("", rows), ("correct/", rows & ok), ("incorrect/", rows & ~ok)):
            if where.any():
                out.update(
                    _stats(f"behaviour/{prefix}{split}", length[where], cut[where], total[where])
                )
    for j, name in enumerate(patterns):
        out[f"reflection/{name}"] = float((counts[:, j] > 0).mean())
    return out


def _stats(prefix: str, length: np.ndarray, cut: np.ndarray, total: np.ndarray) -> dict[str, float]:
    p50, p90 = np.percentile(length, [50, 90])
    return {
        f"{prefix}responses": float(length.size),
        f"{prefix}length_mean": float(length.mean()),
        f"{prefix}length_p50": float(p50),
        f"{prefix}length_p90": float(p90),
        f"{prefix}length_max": float(length.max()),
        f"{prefix}truncated": float(cut.mean()),
        f"{prefix}reflection": float((total > 0).mean()),
        f"{prefix}reflections": float(total.mean()),
    }


class BehaviourMetrics:
    """The kernel's per-step hook: the run file's ``behaviour`` section, compiled once."""

    def __init__(self, config: Mapping[str, object] | None = None) -> None:
        from srpo.config import BehaviourSection

        section = BehaviourSection.model_validate(dict(config or {}))
        self.enabled = section.enabled
        self.patterns = compile_patterns(section.all_patterns())

    def __call__(self, batch: RolloutBatch, scores: Scores) -> dict[str, float]:
        if not self.enabled or batch.num_rollouts == 0:
            return {}
        return behaviour_metrics(
            batch.response_text,
            batch.lengths.tolist(),
            batch.truncated.tolist(),
            [batch.prompt_of(i).domain for i in range(batch.num_rollouts)],
            scores.correct.tolist(),
            self.patterns,
        )
