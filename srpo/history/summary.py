"""The per-prompt epoch summary: what each block contributes, and the streaming merge.

A group's rollouts are adjacent, so a block's prompt ids are a few runs: the summary works
on runs (decoded cheaply from the RLE ``prompt_id`` column) and on constant chunks without
decoding them.
"""

from __future__ import annotations

import numpy as np

from srpo.history.codecs import runs_of
from srpo.history.segment import SegmentView
from srpo.types import PromptSummary

#: One block's partial summary: prompt ids (runs), n, n_correct, reward sum, last step.
Part = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _starts(n: np.ndarray) -> np.ndarray:
    starts = np.zeros(n.size, np.int64)
    np.cumsum(n[:-1], out=starts[1:])
    return starts


def block_summary(v: SegmentView, i: int, want: np.ndarray) -> Part | None:
    """Block ``i`` of ``v`` summarized per run of prompt ids, over the epochs ``want``
    (sorted); None when the block holds none of them. Raises ``BlockCorruptError``."""
    bh = v.header(i)
    if bh.epoch_min == bh.epoch_max:
        ids, runs = v.runs(bh, "prompt_id", i)
        n = runs.astype(np.int64)
        const = {k: v.const(bh, k, i) for k in ("correct", "reward", "step")}
        cols = {k: v.column(bh, k, i) for k, c in const.items() if c is None}
    else:
        ep = v.column(bh, "epoch", i)
        mask = np.isin(ep, want)
        if not mask.any():
            return None
        cols = {k: v.column(bh, k, i)[mask] for k in ("prompt_id", "correct", "reward", "step")}
        ids, runs = runs_of(cols.pop("prompt_id"))
        n = runs.astype(np.int64)
        const = {k: None for k in cols}
    starts = _starts(n)
    c, r, s = const["correct"], const["reward"], const["step"]
    nc = n * int(c) if c is not None else np.add.reduceat(cols["correct"], starts, dtype=np.int64)
    rs = (
        n * float(r) if r is not None else np.add.reduceat(cols["reward"], starts, dtype=np.float64)
    )
    last = (
        np.full(n.size, int(s), np.int64)
        if s is not None
        else np.maximum.reduceat(cols["step"], starts).astype(np.int64)
    )
    return ids, n, nc, rs, last


class SummaryAcc:
    """Streaming per-prompt aggregation: partial rows per block, merged by sorting in bulk.

    Memory stays O(prompts + flush_rows) however many epochs are read.
    """

    def __init__(self, flush_rows: int = 1 << 22) -> None:
        self.flush_rows = flush_rows
        self.parts: list[Part] = []
        self.rows = 0

    def add(self, part: Part) -> None:
        self.parts.append(part)
        self.rows += part[0].size
        if self.rows >= self.flush_rows and len(self.parts) > 1:
            self._merge()

    def _merge(self) -> None:
        # one sort by id, then one column at a time (frees each input as it goes): peak
        # memory stays a few arrays of the output's length
        parts = [list(p) for p in self.parts]
        self.parts = []
        ids = np.concatenate([p[0] for p in parts])
        order = np.argsort(ids)
        ids = ids[order]
        starts = np.concatenate(([0], np.flatnonzero(ids[1:] != ids[:-1]) + 1))
        out = [ids[starts]]
        del ids
        for j, op in ((1, np.add), (2, np.add), (3, np.add), (4, np.maximum)):
            col = np.concatenate([p[j] for p in parts])
            for p in parts:
                p[j] = None
            out.append(op.reduceat(col[order], starts))
            del col
        self.parts = [tuple(out)]  # type: ignore[list-item]
        self.rows = out[0].size

    def result(self) -> PromptSummary:
        if not self.parts:
            z = np.zeros(0, np.int64)
            return PromptSummary(np.zeros(0, np.uint64), z, z.copy(), np.zeros(0), z.copy())
        self._merge()
        ids, n, nc, rs, last = self.parts[0]
        return PromptSummary(
            prompt_id=ids,
            n=n,
            n_correct=nc,
            reward_mean=rs / np.maximum(n, 1),
            last_step=last,
        )
