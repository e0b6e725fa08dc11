"""The history reader releases its files: the kernel opens one reader per epoch end, for the
whole run, so a descriptor left open per query (or per reader) runs a long run out of them.

Uses the real store on real segment files and ``open_history`` exactly as the kernel does:
``with open_reader() as reader: curriculum.end_epoch(epoch, reader)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from srpo.history import HistoryCorruptError, HistoryReader, HistoryStore
from srpo.history.manifest import segment_files
from srpo.history.synth import PromptPool, epoch_batches
from srpo.kernel.history_hook import open_history

EPOCHS = 50
GROUP = 4


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class SummaryCurriculum:
    """Reads the store at each epoch end as history resampling does (epoch_summary)."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def end_epoch(self, epoch: int, history: HistoryReader) -> dict[str, float]:
        summ = history.epoch_summary([epoch])
        history.epoch_summary(list(range(max(0, epoch - 2), epoch + 1)))  # a window, as HR
        history.counts("epoch")
        self.seen.append(int(summ.n.sum()))
        return {"prompts": float(summ.prompt_id.size)}


def _prefill(root: Path) -> int:
    """Epoch 0 written in small segments: the readers have several files to open."""
    step = 0
    with HistoryStore(root, block_records=64, segment_bytes=4 << 10) as w:
        for b in epoch_batches(PromptPool.make(1000), group=GROUP, epoch=0, batch_records=256):
            w.append(**b)
            step = int(b["step"][0])
            w.commit(step)
    assert len(segment_files(root, 0)) >= 4
    return step + 1


def _train(tmp_path: Path, epochs: int, end_epoch) -> tuple[list[int], list[HistoryReader]]:
    """Epochs of a few committed steps each; at each epoch end, ``end_epoch(open_reader,
    epoch)``. Returns the fd count after each epoch end and the readers used."""
    pool = PromptPool.make(64, seed=5)
    step = _prefill(tmp_path / "history")
    cfg = SimpleNamespace(history=SimpleNamespace(store_tokens=False))
    store, open_reader = open_history(tmp_path, cfg)
    after, readers = [], []
    try:
        for epoch in range(1, epochs + 1):
            for b in epoch_batches(pool, group=GROUP, epoch=epoch, batch_records=128):
                store.append(**{**b, "step": np.uint32(step)})
                store.commit(step)
                step += 1
            readers.append(end_epoch(open_reader, epoch))
            after.append(open_fds())
    finally:
        store.close()
    return after, readers


def test_epoch_ends_release_every_descriptor(tmp_path: Path) -> None:
    cur = SummaryCurriculum()
    inside: list[int] = []

    def end_epoch(open_reader, epoch: int) -> HistoryReader:
        with open_reader() as reader:
            cur.end_epoch(epoch, reader)
            inside.append(open_fds())
        return reader  # kept alive: only close() (not garbage collection) can free its files

    after, _readers = _train(tmp_path, EPOCHS, end_epoch)
    assert cur.seen == [64 * GROUP] * EPOCHS  # each reader saw everything committed
    # while open, a reader holds its segments (one descriptor each, and maps)...
    assert min(inside) - after[0] >= len(segment_files(tmp_path / "history", 0))
    # ...and none of it survives the `with`: the count is flat across all epoch ends
    assert after[-1] == after[0], after


def test_unclosed_readers_would_fail_the_check(tmp_path: Path) -> None:
    """The old pattern (a reader per query, never closed) is what the test above catches."""

    def leaky_end_epoch(open_reader, epoch: int) -> HistoryReader:
        reader = open_reader()
        SummaryCurriculum().end_epoch(epoch, reader)
        return reader  # held by the caller, never closed

    after, readers = _train(tmp_path, 10, leaky_end_epoch)
    assert after[-1] - after[0] >= 9 * len(segment_files(tmp_path / "history", 0))
    for r in readers:
        r.close()
    assert open_fds() <= after[0]


def test_close_is_idempotent_and_reopens_on_query(tmp_path: Path) -> None:
    _prefill(tmp_path)
    base = open_fds()
    r = HistoryReader(tmp_path)
    n = r.counts("epoch")
    r.close()
    r.close()
    assert open_fds() == base
    assert r.counts("epoch") == n  # a query after close reopens what it needs
    r.close()
    assert open_fds() == base


def test_failed_open_releases_what_it_opened(tmp_path: Path) -> None:
    """A strict reader that hits corruption while opening closes the segments it opened."""
    _prefill(tmp_path)
    files = segment_files(tmp_path, 0)
    victim = files[min(files) + 1]  # a sealed segment: found damaged while opening
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    base = open_fds()
    errors = []
    for _ in range(20):
        with pytest.raises(HistoryCorruptError) as e:
            HistoryReader(tmp_path, strict=True)
        errors.append(e)  # the tracebacks keep the half-built readers alive
    assert open_fds() == base
