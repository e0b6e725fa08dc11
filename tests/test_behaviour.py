"""Reasoning-behaviour metrics on hand-made responses (patterns counted, splits by domain
and correct/incorrect, length percentiles against numpy's), and the run file's patterns and
sampled-evaluation keys rejected with one located line and exit 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from srpo.api import Prompt, Scores
from srpo.cli import main
from srpo.config import BehaviourSection
from srpo.kernel.behaviour import DEFAULT_PATTERNS, BehaviourMetrics, behaviour_metrics
from srpo.kernel.behaviour import compile_patterns as compiled
from tests.support.batches import make_batch

RESPONSES = [
    # (domain, correct, truncated, length, text)
    ("math", True, False, 10, "7 + 5 = 12. Wait, let me recheck: 7 + 5 = 12. \\boxed{12}"),
    ("math", True, False, 20, "Alternatively, count up from 7. Re-check: 12. \\boxed{12}"),
    ("math", False, True, 40, "Hmm, however the carry... WAIT. wait. I made a mistake"),
    ("math", False, False, 30, "\\boxed{11}"),
    ("code", True, False, 50, "def f(x):\n    return x * x - 7  # verified by hand"),
    ("code", False, True, 64, "def f(x):\n    # double-check the sign, then re-evaluate"),
]


def _metrics(patterns: dict[str, str] | None = None) -> dict[str, float]:
    dom, ok, cut, length, text = zip(*RESPONSES, strict=True)
    return behaviour_metrics(
        text, length, cut, dom, ok, compiled(patterns if patterns else DEFAULT_PATTERNS)
    )


def test_default_patterns_are_counted_per_response() -> None:
    m = _metrics()
    # response 0: wait, recheck, let_me_check; 1: alternatively, recheck ("Re-check");
    # 2: however, wait x2 (case-insensitive), mistake; 3: none; 4: verify ("verified");
    # 5: double_check, reevaluate
    assert m["reflection/wait"] == pytest.approx(2 / 6)
    assert m["reflection/recheck"] == pytest.approx(2 / 6)
    assert m["reflection/let_me_check"] == pytest.approx(1 / 6)
    assert m["reflection/alternatively"] == m["reflection/however"] == pytest.approx(1 / 6)
    assert m["reflection/mistake"] == pytest.approx(1 / 6)
    assert m["reflection/verify"] == pytest.approx(1 / 6)
    assert m["reflection/double_check"] == m["reflection/reevaluate"] == pytest.approx(1 / 6)
    assert m["reflection/rethink"] == m["reflection/reexamine"] == 0.0
    counts = [3, 2, 4, 0, 1, 2]  # occurrences per response, all patterns
    assert m["behaviour/reflections"] == pytest.approx(np.mean(counts))
    assert m["behaviour/reflection"] == pytest.approx(5 / 6)
    assert m["behaviour/correct/reflections"] == pytest.approx((3 + 2 + 1) / 3)
    assert m["behaviour/incorrect/reflection"] == pytest.approx(2 / 3)
    assert m["behaviour/math/incorrect/reflections"] == pytest.approx((4 + 0) / 2)
    assert m["behaviour/code/correct/reflection"] == 1.0


def test_lengths_and_truncation_by_domain_and_correctness() -> None:
    m = _metrics()
    lengths = [10, 20, 40, 30, 50, 64]
    assert m["behaviour/responses"] == 6
    assert m["behaviour/length_mean"] == pytest.approx(np.mean(lengths))
    assert m["behaviour/length_p50"] == pytest.approx(35.0)
    assert m["behaviour/length_p90"] == pytest.approx(np.percentile(lengths, 90))
    assert m["behaviour/length_max"] == 64
    assert m["behaviour/truncated"] == pytest.approx(2 / 6)
    assert m["behaviour/math/length_mean"] == pytest.approx(25.0)
    assert m["behaviour/math/length_p90"] == pytest.approx(np.percentile([10, 20, 40, 30], 90))
    assert m["behaviour/math/correct/length_max"] == 20
    assert m["behaviour/math/incorrect/truncated"] == 0.5
    assert m["behaviour/correct/length_mean"] == pytest.approx((10 + 20 + 50) / 3)
    assert m["behaviour/incorrect/truncated"] == pytest.approx(2 / 3)
    assert m["behaviour/code/responses"] == 2 and m["behaviour/code/correct/responses"] == 1


def test_empty_splits_are_left_out_and_own_patterns_replace_or_add() -> None:
    rows = RESPONSES[:2]  # math, all correct
    dom, ok, cut, length, text = zip(*rows, strict=True)
    own = BehaviourSection(patterns={"boxed": r"\\boxed\{"}, extra_patterns={"seven": r"\b7\b"})
    m = behaviour_metrics(text, length, cut, dom, ok, compiled(own.all_patterns()))
    assert not any("incorrect" in k or "code" in k for k in m)
    assert {k for k in m if k.startswith("reflection/")} == {"reflection/boxed", "reflection/seven"}
    assert m["reflection/boxed"] == 1.0 and m["reflection/seven"] == 1.0
    assert m["behaviour/reflections"] == pytest.approx((1 + 2 + 1 + 1) / 2)
    assert behaviour_metrics([], [], [], [], [], compiled(DEFAULT_PATTERNS)) == {}
    assert BehaviourSection().all_patterns() == DEFAULT_PATTERNS


def test_the_kernel_hook_reads_a_rollout_batch() -> None:
    prompts = [Prompt(1, "math", "2+2?", "4"), Prompt(2, "code", "f?", "")]
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    texts = ["wait, 4", "4", "hmm, however", "recheck recheck"]
    batch = make_batch(prompts, [0, 0, 1, 1], texts, mask=mask, truncated=[0, 0, 1, 0])
    ok = torch.tensor([True, False, False, True])
    m = BehaviourMetrics()(batch, Scores(ok.float(), ok, [None] * 4))
    assert m["behaviour/responses"] == 4 and m["behaviour/math/responses"] == 2
    assert m["behaviour/code/correct/reflections"] == 2.0
    assert m["behaviour/length_max"] == 3 and m["behaviour/math/length_mean"] == 1.5
    assert m["behaviour/code/incorrect/truncated"] == 1.0
    assert BehaviourMetrics({"enabled": False})(batch, Scores(ok.float(), ok, [None] * 4)) == {}


# -- bad run files: one located line, exit 2 ------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "where", "what"),
    [
        ({"behaviour.extra_patterns": {"oops": "re-("}}, "behaviour.extra_patterns", "bad regex"),
        ({"behaviour.patterns": {"any": "x*"}}, "behaviour.patterns", "matches the empty"),
        ({"behaviour.patterns": {"a/b": "x"}}, "behaviour.patterns", "pattern name 'a/b'"),
        (
            {"eval.n_samples": 4, "eval.pass_k": [1, 8]},
            "eval.pass_k",
            "pass@8 needs eval.n_samples >= 8",
        ),
        ({"eval.pass_k": [1]}, "eval.pass_k", "n_samples is 0"),
        ({"eval.n_samples": 4, "eval.temperature": 0}, "eval.temperature", "greater than 0"),
    ],
)
def test_bad_patterns_and_sampling_keys_are_one_line_exit_2(
    write_config, capsys, overrides: dict, where: str, what: str
) -> None:
    path = write_config(**overrides)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"{path}:" in err and where in err and what in err, err
    key = where.split(".")[-1]
    line = next(i for i, x in enumerate(path.read_text().splitlines(), 1) if f"{key}:" in x)
    assert f"{path}:{line}:" in err, err
