"""DAPO length handling: overlong filter mask and soft overlong penalty, hand-computed."""

from __future__ import annotations

import pydantic
import pytest
import torch

from srpo.algo.dapo import OverlongOptions, overlong_filter_mask, soft_overlong_penalty


def test_overlong_filter_masks_truncated_rows_and_keeps_dtype():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    truncated = torch.tensor([False, True, False])
    out = overlong_filter_mask(mask, truncated)
    assert out.dtype == torch.bool
    assert out.tolist() == [[True, True, False], [False, False, False], [True, False, False]]
    w = overlong_filter_mask(mask.float() * 0.5, truncated)
    assert w.dtype == torch.float32 and w.tolist() == [[0.5, 0.5, 0], [0, 0, 0], [0.5, 0, 0]]
    assert mask.tolist()[1] == [True, True, True]  # input untouched
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        overlong_filter_mask(mask, truncated[:2])


def test_soft_overlong_penalty_by_hand():
    # L_max = 20, L_cache = 4: free up to 16, then -1/4 per token, -1 at 20 and beyond
    lengths = torch.tensor([0, 10, 16, 17, 18, 19, 20, 21, 500])
    got = soft_overlong_penalty(lengths, max_len=20, cache_len=4)
    want = [0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    assert got.dtype == torch.float32
    assert got.tolist() == want
    half = soft_overlong_penalty(lengths, 20, 4, penalty=0.5)
    assert half.tolist() == [v * 0.5 for v in want]
    # no buffer: a step from 0 to -1 past L_max
    assert soft_overlong_penalty(torch.tensor([19, 20, 21]), 20, 0).tolist() == [0, 0, -1]
    # the whole range is the buffer
    assert soft_overlong_penalty(torch.tensor([0, 5, 10]), 10, 10).tolist() == [0, -0.5, -1]
    with pytest.raises(ValueError):
        soft_overlong_penalty(lengths, 20, 21)


def test_overlong_options():
    assert OverlongOptions().filter is False and OverlongOptions().max_len is None
    with pytest.raises(pydantic.ValidationError, match="cache_len"):
        OverlongOptions(max_len=8, cache_len=9)


def test_shaping_returns_new_scores_and_leaves_the_verifiers_alone():
    """The overlong penalty is the algorithm's transform of the verifier's scores: reward
    shaped, correctness untouched, the input ``Scores`` not edited in place."""
    from srpo.algo import loss_mask, shape_scores
    from srpo.types import Prompt, Scores
    from tests.support.batches import make_batch

    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    prompts = [Prompt(1, "math", "q", "1")]
    batch = make_batch(prompts, [0, 0], ["a", "b"], mask=mask, truncated=[True, False])
    scores = Scores(torch.tensor([1.0, 1.0]), torch.tensor([True, True]), [None, None])
    shaped = shape_scores(OverlongOptions(max_len=4, cache_len=2), batch, scores)
    assert shaped.reward.tolist() == [0.0, 1.0]  # length 4 = L_max: -1; length 2: free
    assert shaped.correct.tolist() == [True, True]
    assert shaped.breakdown["overlong_penalty"].tolist() == [-1.0, 0.0]
    assert scores.reward.tolist() == [1.0, 1.0] and "overlong_penalty" not in scores.breakdown
    assert shape_scores(OverlongOptions(), batch, scores) is scores  # off: untouched
    assert loss_mask(OverlongOptions(), batch) is None
    assert loss_mask(OverlongOptions(filter=True), batch).tolist() == [
        [False] * 4,
        mask[1].tolist(),
    ]
