"""The writer: one per shard (rank), appends a step's rollouts and commits them durably.

The hot path is columnar: ``append`` validates and buffers whole numpy columns, full
blocks are encoded and written as soon as they fill, and ``commit`` writes the rest plus
one commit frame and issues a single ``fsync``. Nothing becomes visible to readers (or
survives a crash) before the commit frame that follows it is on disk.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from srpo.errors import warn
from srpo.history.errors import HistoryCorruptError, HistoryError
from srpo.history.frames import (
    INDEX_DTYPE,
    SEGMENT_HEADER,
    BlockStats,
    Commit,
    commit_frame,
    encode_block,
    footer_bytes,
    segment_header,
)
from srpo.history.inputs import record_columns, token_columns
from srpo.history.manifest import (
    Manifest,
    SegmentEntry,
    lock_path,
    read_manifest,
    segment_files,
    segment_path,
    write_manifest,
)
from srpo.history.repair import repair_shard
from srpo.history.segment import SegmentView, take_rows

_U32_MAX = 2**32 - 1

Frame = tuple[bytes, BlockStats]  # an encoded block and its index stats


def _write_all(fd: int, data: bytes | memoryview) -> None:
    mv = memoryview(data)
    while mv.nbytes:
        k = os.write(fd, mv)
        mv = mv[k:]


def _first_block_after(views: list[SegmentView], step: int) -> tuple[int, int] | None:
    """(segment, block) of the first block holding a record with a step after ``step``."""
    for vi, v in enumerate(views):
        hit = np.flatnonzero(v.index["step_max"] > step)
        if hit.size:
            return vi, int(hit[0])
    return None


def _rows_up_to(
    views: list[SegmentView], first_block: int, step: int
) -> tuple[list[dict[str, np.ndarray]], int]:
    """Rows with step <= ``step`` of ``views`` from block ``first_block`` of the first one
    on, and how many rows that leaves out."""
    kept, dropped = [], 0
    for k, v in enumerate(views):
        if v.problems:
            raise HistoryCorruptError(f"cannot truncate: {v.problems[0]}")
        for bi in range(first_block if k == 0 else 0, len(v.index)):
            cols = v.read_block(bi)
            keep = cols["step"] <= step
            dropped += int(keep.size - keep.sum())
            if keep.any():
                kept.append(take_rows(cols, keep))
    return kept, dropped


class HistoryStore:
    """Append-only writer of one shard of the history store under ``root``.

    Opening an existing shard repairs a torn tail and resumes after its last commit.
    ``durable=False`` skips the fsync in ``commit``: still safe against a killed process
    (the page cache survives), not against power loss.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        shard: int = 0,
        store_tokens: bool = False,
        block_records: int = 65536,
        segment_bytes: int = 64 << 20,
        zstd_level: int = 3,
        durable: bool = True,
    ) -> None:
        if not 0 <= shard < 100000:
            raise ValueError("shard must be in [0, 100000)")
        if block_records < 1:
            raise ValueError("block_records must be >= 1")
        self.root = Path(root)
        self.shard = shard
        self.store_tokens = store_tokens
        self.block_records = block_records
        self.segment_bytes = segment_bytes
        self.durable = durable
        self._cctx = zstandard.ZstdCompressor(level=zstd_level)
        self._fd = -1
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_n = 0
        self._pending_max_step = -1
        self._unsynced_n = 0  # records written into blocks since the last commit
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(lock_path(self.root, shard), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise HistoryError(f"shard {shard} of {self.root} is open by another writer") from None
        try:
            self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- opening -----------------------------------------------------------------------

    def _open(self) -> None:
        m = read_manifest(self.root, self.shard)
        if m is None:
            self._create()
            return
        if m.store_tokens != self.store_tokens:
            raise ValueError(
                f"store_tokens={self.store_tokens} but shard {self.shard} was created with "
                f"store_tokens={m.store_tokens}"
            )
        view = repair_shard(self.root, m)
        try:
            self._adopt(m, view)
        finally:
            view.close()

    def _create(self) -> None:
        for p in segment_files(self.root, self.shard).values():
            p.unlink()  # leftovers of a creation that never wrote its manifest
        self._write_segment(0, [], Commit(None, 0, 0))
        m = Manifest(self.shard, self.store_tokens, 0, (SegmentEntry(0, "active"),))
        write_manifest(self.root, m)
        view = SegmentView(self.root, self.shard, m.segments[-1])
        try:
            self._adopt(m, view)
        finally:
            view.close()

    def _adopt(self, m: Manifest, view: SegmentView) -> None:
        """Make ``view`` (the active segment, repaired) the append target."""
        if self._fd >= 0:
            os.close(self._fd)
        assert view.last_commit is not None
        self._manifest = m
        self._commit = view.last_commit
        self._index = [tuple(int(x) for x in row) for row in view.index.tolist()]
        self._fd = os.open(view.path, os.O_WRONLY | os.O_APPEND)
        self._pos = self._commit_pos = view.visible_end

    def _write_segment(self, seg_id: int, frames: list[Frame], c: Commit) -> None:
        """Create a complete segment file (header, frames, commit), fsynced."""
        path = segment_path(self.root, self.shard, seg_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            head = segment_header(self.shard, seg_id, self.store_tokens)
            _write_all(fd, b"".join([head, *(f for f, _ in frames), commit_frame(c)]))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _next_seg_id(self) -> int:
        ids = [s.seg_id for s in self._manifest.segments]
        ids += list(segment_files(self.root, self.shard))
        return max(ids) + 1

    # -- appending ---------------------------------------------------------------------

    def append(
        self,
        *,
        prompt_id: Any,
        epoch: Any,
        step: Any,
        sample: Any,
        domain: Any,
        reward: Any,
        correct: Any,
        length: Any,
        flags: Any = 0,
        stage: Any = 0,
        tokens: Sequence[Any] | None = None,
    ) -> None:
        """Buffer one step's rollouts, given as columns (numpy, torch CPU, or scalars).

        ``prompt_id`` may be int64 (bitwise u64). ``tokens`` (one 1-d id array per rollout)
        is stored only when the store was opened with ``store_tokens=True``, and required then.
        """
        cols = record_columns(
            {
                "prompt_id": prompt_id,
                "epoch": epoch,
                "step": step,
                "sample": sample,
                "domain": domain,
                "reward": reward,
                "correct": correct,
                "length": length,
                "flags": flags,
                "stage": stage,
            }
        )
        n = cols["prompt_id"].size
        if n == 0:
            return
        if self.store_tokens:
            cols.update(token_columns(tokens, n))
        self._pending.append(cols)
        self._pending_n += n
        self._pending_max_step = max(self._pending_max_step, int(cols["step"].max()))
        if self._pending_n >= self.block_records:
            self._write_frames(self._encode_pending(full_only=True))

    def _encode_pending(self, *, full_only: bool) -> list[Frame]:
        """Encode buffered records into blocks of ``block_records`` (and the rest, unless
        ``full_only``); what is not encoded stays buffered."""
        if not self._pending:
            return []
        p = self._pending
        cat = p[0] if len(p) == 1 else {k: np.concatenate([c[k] for c in p]) for k in p[0]}
        n, b = self._pending_n, self.block_records
        cut = (n // b) * b if full_only else n
        tok_off = None
        if "token_count" in cat:
            tok_off = np.concatenate(([0], np.cumsum(cat["token_count"], dtype=np.int64)))
        frames = []
        for s in range(0, cut, b):
            e = min(s + b, cut)
            blk = {k: v[s:e] for k, v in cat.items() if k != "token_ids"}
            if tok_off is not None:
                blk["token_ids"] = cat["token_ids"][tok_off[s] : tok_off[e]]
            frames.append(encode_block(blk, self._cctx))
        if cut < n:
            rest = {k: v[cut:] for k, v in cat.items() if k != "token_ids"}
            if tok_off is not None:
                rest["token_ids"] = cat["token_ids"][tok_off[cut] :]
            self._pending, self._pending_n = [rest], n - cut
        else:
            self._pending, self._pending_n = [], 0
        self._unsynced_n += cut
        return frames

    def _write_frames(self, frames: list[Frame], tail: bytes = b"") -> None:
        for f, stats in frames:
            self._index.append((self._pos, *stats, 0))
            self._pos += len(f)
        _write_all(self._fd, b"".join([*(f for f, _ in frames), tail]))
        self._pos += len(tail)

    # -- committing --------------------------------------------------------------------

    @property
    def committed_step(self) -> int | None:
        """Step of the last commit (None before the first); survives reopening."""
        return self._commit.step

    @property
    def committed_records(self) -> int:
        """Records of this shard that are committed."""
        return self._commit.records

    @property
    def uncommitted_records(self) -> int:
        return self._pending_n + self._unsynced_n

    def commit(self, step: int) -> None:
        """Make everything appended so far durable and visible, marked as ``step``.

        Steps must not go backwards (use ``truncate_after`` to rewind) and no buffered
        record may carry a step after ``step``.
        """
        step = int(step)
        if not 0 <= step <= _U32_MAX:
            raise ValueError(f"step {step} out of range")
        if self._commit.step is not None and step < self._commit.step:
            raise ValueError(f"commit({step}) after commit({self._commit.step}): steps go forward")
        if self._pending_max_step > step:
            raise ValueError(f"buffered records carry step {self._pending_max_step} > {step}")
        frames = self._encode_pending(full_only=False)
        c = Commit(step, self._commit.records + self._unsynced_n, self._commit.seq + 1)
        self._write_frames(frames, commit_frame(c))
        if self.durable:
            os.fsync(self._fd)
        self._commit = c
        self._commit_pos = self._pos
        self._unsynced_n = 0
        self._pending_max_step = -1
        if self._pos >= self.segment_bytes:
            self._roll()

    def _roll(self) -> None:
        """Seal the active segment (footer) and continue in a new one.

        Order: new segment (header + carried commit) fsynced, footer fsynced, manifest
        swapped. A crash before the swap leaves an unlisted file and a footer after the
        last commit frame: both are dropped on reopen.
        """
        new_id = self._next_seg_id()
        self._write_segment(new_id, [], self._commit)
        index = np.array(self._index, dtype=INDEX_DTYPE)
        footer = footer_bytes(index, self._pos)
        _write_all(self._fd, footer)
        os.fsync(self._fd)
        old = self._manifest.segments[-1]
        segs = (
            *self._manifest.segments[:-1],
            SegmentEntry(old.seg_id, "sealed", self._pos + len(footer)),
            SegmentEntry(new_id, "active"),
        )
        self._swap_manifest(segs)
        os.close(self._fd)
        self._fd = os.open(segment_path(self.root, self.shard, new_id), os.O_WRONLY | os.O_APPEND)
        self._pos = self._commit_pos = SEGMENT_HEADER.size + len(commit_frame(self._commit))
        self._index = []

    def _swap_manifest(self, segs: tuple[SegmentEntry, ...]) -> None:
        m = self._manifest
        self._manifest = Manifest(m.shard, m.store_tokens, m.generation + 1, segs)
        write_manifest(self.root, self._manifest)

    # -- rewinding ---------------------------------------------------------------------

    def truncate_after(self, step: int) -> int:
        """Discard committed records with step > ``step``; returns how many were dropped.

        For resuming from a checkpoint. Crash-safe: surviving records of the first affected
        block onward go to a new segment, then one manifest swap cuts the old ones; a crash
        before the swap changes nothing, after it the next open finishes the cleanup.
        Readers opened before must be reopened afterwards.
        """
        if self.uncommitted_records:
            raise HistoryError("truncate_after with uncommitted appends: commit or reopen first")
        step = int(step)
        old = self._commit
        new_step = old.step if old.step is None else min(old.step, step)
        views = [SegmentView(self.root, self.shard, e) for e in self._manifest.segments]
        try:
            first = _first_block_after(views, step)
            if first is None:  # nothing to drop; at most the committed step goes back
                if new_step != old.step:
                    self._commit_in_place(Commit(new_step, old.records, old.seq + 1))
                return 0
            vi0, bi0 = first
            cut_at = int(views[vi0].index["offset"][bi0])
            kept, dropped = _rows_up_to(views[vi0:], bi0, step)
        finally:
            for v in views:
                v.close()
        frames = self._encode_rows(kept)
        new_id = self._next_seg_id()
        self._write_segment(new_id, frames, Commit(new_step, old.records - dropped, old.seq + 1))
        segs = self._manifest.segments[:vi0]
        if bi0 > 0:
            segs += (SegmentEntry(self._manifest.segments[vi0].seg_id, "cut", cut_at),)
        segs += (SegmentEntry(new_id, "active"),)
        self._swap_manifest(segs)
        view = repair_shard(self.root, self._manifest)  # the physical cut and deletions
        try:
            self._adopt(self._manifest, view)
        finally:
            view.close()
        return dropped

    def _commit_in_place(self, c: Commit) -> None:
        """Append commit frame ``c`` to the active segment, durably."""
        self._write_frames([], commit_frame(c))
        os.fsync(self._fd)
        self._commit, self._commit_pos = c, self._pos

    def _encode_rows(self, parts: list[dict[str, np.ndarray]]) -> list[Frame]:
        """Blocks of the rows ``parts`` (kept by ``truncate_after``), bypassing the buffer."""
        if not parts:
            return []
        cat = {k: np.concatenate([c[k] for c in parts]) for k in parts[0]}
        self._pending, self._pending_n = [cat], int(cat["prompt_id"].size)
        frames = self._encode_pending(full_only=False)
        self._unsynced_n = 0
        return frames

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        """Release the shard. Records appended since the last commit are discarded."""
        if self._fd < 0:
            return
        if self.uncommitted_records:
            warn(
                f"history shard {self.shard}: {self.uncommitted_records} uncommitted records "
                "discarded at close"
            )
            os.ftruncate(self._fd, self._commit_pos)
            self._pending, self._pending_n, self._unsynced_n = [], 0, 0
        if not self.durable:
            os.fsync(self._fd)  # durable=False defers every fsync to here
        os.close(self._fd)
        self._fd = -1
        os.close(self._lock_fd)

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            try:
                os.close(self._fd)
                os.close(self._lock_fd)
            except OSError:
                pass
