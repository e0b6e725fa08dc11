"""Precision and recall of the math verifier on a hand-written notation set.

A wrong answer rewarded is a reward bug RL will find, so the must-not-match set allows no
false positive at all; recall has a floor below the figure measured when the set was
written (1.0, 111/111 — a math-verify timeout on a loaded machine may cost a pair). The
figures print with ``pytest -s``; benchmarks/RESULTS.md ("Math verifier") quotes them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from srpo_plugins.verifiers.math import MathVerifier, extract_boxed, fast_compare

from srpo.api import PluginContext
from srpo.types import Prompt
from tests.support.math_pairs import MATCH, NO_MATCH

#: Recall of the whole verifier (fast path + math-verify) must stay at or above this.
RECALL_FLOOR = 0.98


@pytest.fixture(scope="module")
def verifier():
    ctx = PluginContext(run_dir=Path("."), seed=0, num_workers=2)
    v = MathVerifier(MathVerifier.Options(timeout_s=5.0), ctx)
    v.warmup()
    yield v
    v.close()


def _verdicts(v: MathVerifier, rows: list[tuple[str, str, str]]) -> list[bool]:
    prompts = [
        Prompt(id=i, domain="math", text="q", reference=g) for i, (_, g, _) in enumerate(rows)
    ]
    return [s.correct for s in v.score(prompts, [r for _, _, r in rows])]


def _fast(rows: list[tuple[str, str, str]]) -> list[bool | None]:
    """The fast path's verdict per row (None: deferred, or no answer to compare)."""
    out: list[bool | None] = []
    for _, gold, response in rows:
        pred = extract_boxed(response)
        out.append(None if pred is None else fast_compare(gold.strip(), pred))
    return out


def test_the_set_is_big_enough_and_unambiguous():
    assert len(MATCH) >= 100 and len(NO_MATCH) >= 100
    assert not {(g, r) for _, g, r in MATCH} & {(g, r) for _, g, r in NO_MATCH}


def test_whole_verifier_no_false_positive_and_recall(verifier):
    false_pos = [row for row, ok in zip(NO_MATCH, _verdicts(verifier, NO_MATCH), strict=True) if ok]
    hits = _verdicts(verifier, MATCH)
    misses = [row for row, ok in zip(MATCH, hits, strict=True) if not ok]
    recall = sum(hits) / len(MATCH)
    print(
        f"\nwhole verifier: recall {recall:.3f} ({sum(hits)}/{len(MATCH)}), "
        f"false positives {len(false_pos)}/{len(NO_MATCH)}"
    )
    assert not false_pos, false_pos  # precision 1.0 on the must-not-match set
    assert recall >= RECALL_FLOOR, misses


def test_fast_path_alone_is_never_wrong_only_undecided():
    """A fast-path False is final (math-verify never sees it), so it must be as exact as
    its True; what it cannot decide it defers."""
    fast_match, fast_no = _fast(MATCH), _fast(NO_MATCH)
    wrong = [r for r, v in zip(MATCH, fast_match, strict=True) if v is False]
    wrong += [r for r, v in zip(NO_MATCH, fast_no, strict=True) if v is True]
    decided_true = sum(v is True for v in fast_match)
    decided_false = sum(v is False for v in fast_no)
    print(
        f"\nfast path: recall {decided_true / len(MATCH):.3f} ({decided_true}/{len(MATCH)} "
        f"decided True), {decided_false}/{len(NO_MATCH)} must-not decided False, "
        f"{len(MATCH) + len(NO_MATCH) - decided_true - decided_false} deferred, "
        f"{len(wrong)} wrong"
    )
    assert not wrong, wrong
