"""Boxed-answer extraction: linear time on hostile text, same answers as the plain rule.

Extraction runs in the trainer's process on model output, so time must grow linearly:
the old per-box scan took 11.6 s on 56 KB of unclosed ``\\boxed{`` (issue 14).
"""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st
from srpo_plugins.verifiers.math import extract_boxed
from srpo_plugins.verifiers.math.extract import _BOX_RE, _TOKEN_RE


def _best_time(text: str, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        extract_boxed(text)
        best = min(best, time.perf_counter() - t)
    return best


def test_unclosed_boxes_cost_linear_time():
    # a quadratic scan fails already at the small size (~0.5 s against ~1 ms), before the
    # big one would take minutes; the control is text of the same size whose boxes close
    for size in (5_000, 200_000):
        hostile = "\\boxed{" * (size // 7)
        control = "\\boxed{1}" * (size // 9)
        assert len(hostile) > 0.99 * size - 7 and len(control) > 0.99 * size - 9
        t_hostile, t_control = _best_time(hostile), _best_time(control)
        assert extract_boxed(hostile) is None
        assert t_hostile < 10 * t_control + 0.05, (size, t_hostile, t_control)
    assert t_hostile < 1.0  # generous: ~0.1 s on a loaded 2-core machine


def _reference(text: str) -> str | None:
    """The extraction rule written plainly (quadratic): the last box that closes."""
    for m in reversed(list(_BOX_RE.finditer(text))):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "\\":
                    j += 2
                    continue
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1 : j].strip()
                j += 1
            continue
        if i > m.end() and (tok := _TOKEN_RE.match(text, i)):
            return tok.group(0)
    return None


_PIECES = ("\\boxed", "\\fbox", "\\boxed{", "\\boxed ", "{", "}", " ", "\\", "\\{", "\\}")
_pieces = st.sampled_from([*_PIECES, "\\\\", "x", "1", "$", "\n", "d"])


@settings(max_examples=1000, deadline=None)
@given(st.lists(_pieces, max_size=16).map("".join))
def test_same_answer_as_the_plain_rule(text):
    assert extract_boxed(text) == _reference(text)


def test_rule_last_closed_box_counts():
    assert extract_boxed("\\boxed{3} then \\boxed{5}") == "5"
    assert extract_boxed("\\boxed{5} then \\boxed{6") == "5"  # truncated: earlier box
    assert extract_boxed("\\boxed{\\boxed{6}}") == "6"
    assert extract_boxed("\\boxed 8 not \\boxed{7") == "8"
    assert extract_boxed("{ } } \\boxed{a{b}c} {") == "a{b}c"
