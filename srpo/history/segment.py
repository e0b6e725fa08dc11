"""Read side of one segment file: frame scanning, the visible block index, column reads.

Shared by the reader (queries), the writer (resume, ``truncate_after``) and ``verify``.
Frames are located with ``os.pread`` (never past the end a file has now), payloads are
read through an ``mmap`` of the visible prefix only, so a writer repairing a torn tail
never pulls pages from under a reader.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from srpo.history.codecs import ENC_CONST, decode_chunk, decode_runs
from srpo.history.errors import BlockCorruptError, HistoryCorruptError, Problem
from srpo.history.frames import (
    BLOCK_MAGIC,
    COMMIT_FRAME,
    COMMIT_MAGIC,
    FOOTER_TRAILER,
    INDEX_DTYPE,
    MAX_HEADER,
    SEGMENT_HEADER,
    BlockHeader,
    Commit,
    crc32,
    parse_block_header,
    parse_commit,
    parse_footer,
    parse_segment_header,
)
from srpo.history.manifest import SegmentEntry, segment_path
from srpo.history.schema import BY_NAME

_SCAN_CHUNK = 1 << 20


@dataclass
class ScanResult:
    """What ``scan`` found: blocks (index rows), damaged byte ranges, and every frame in file
    order as ``events``: ("block", offset, row), ("commit", frame end, Commit), ("skip",
    offset, (start, end))."""

    blocks: list[tuple[int, int, int, int, int, int, int]] = field(default_factory=list)
    skipped: list[tuple[int, int]] = field(default_factory=list)  # unparseable byte ranges
    events: list[tuple[str, int, Any]] = field(default_factory=list)


def _frame_at(fd: int, pos: int, end: int) -> tuple[str, int, object] | None:
    """('block'|'commit', frame end, parsed) for a valid frame starting at ``pos``."""
    head = os.pread(fd, min(MAX_HEADER, end - pos), pos)
    if head[:4] == BLOCK_MAGIC:
        bh = parse_block_header(head, pos)
        if bh is not None and bh.end <= end:
            return "block", bh.end, bh
    elif head[:4] == COMMIT_MAGIC:
        c = parse_commit(head)
        if c is not None and pos + COMMIT_FRAME.size <= end:
            return "commit", pos + COMMIT_FRAME.size, c
    return None


def _resync(fd: int, pos: int, end: int) -> int | None:
    """Offset of the next valid frame after a damaged region, or None."""
    while pos < end:
        chunk = os.pread(fd, min(_SCAN_CHUNK, end - pos), pos)
        if not chunk:
            return None
        i = 0
        while True:
            a, b = chunk.find(BLOCK_MAGIC, i), chunk.find(COMMIT_MAGIC, i)
            cands = [x for x in (a, b) if x >= 0]
            if not cands:
                break
            j = min(cands)
            if _frame_at(fd, pos + j, end) is not None:
                return pos + j
            i = j + 1
        pos += max(1, len(chunk) - 3)
    return None


def scan(fd: int, start: int, end: int) -> ScanResult:
    """Walk the frames in ``[start, end)``, skipping (and recording) damaged regions."""
    res = ScanResult()
    pos = start
    while pos < end:
        fr = _frame_at(fd, pos, end)
        if fr is None:
            nxt = _resync(fd, pos + 1, end)
            res.skipped.append((pos, end if nxt is None else nxt))
            res.events.append(("skip", pos, res.skipped[-1]))
            if nxt is None:
                break
            pos = nxt
            continue
        kind, fend, parsed = fr
        if kind == "block":
            bh: BlockHeader = parsed  # type: ignore[assignment]
            res.blocks.append((pos, bh.n, bh.epoch_min, bh.epoch_max, bh.step_min, bh.step_max, 0))
            res.events.append(("block", pos, res.blocks[-1]))
        else:
            res.events.append(("commit", fend, parsed))
        pos = fend
    return res


def _as_index(rows: list[tuple[int, int, int, int, int, int, int]]) -> np.ndarray:
    return np.array(rows, dtype=INDEX_DTYPE) if rows else np.zeros(0, INDEX_DTYPE)


def take_rows(cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Rows ``idx`` (indices or a bool mask) of record columns, flattened token ids included."""
    if idx.dtype == np.bool_:
        idx = np.flatnonzero(idx)
    out = {k: v[idx] for k, v in cols.items() if k != "token_ids"}
    if "token_ids" in cols:
        counts = cols["token_count"].astype(np.int64)
        offsets = np.concatenate(([0], np.cumsum(counts)))
        lens = counts[idx]
        starts = offsets[:-1][idx]
        total = int(lens.sum())
        first = np.concatenate(([0], np.cumsum(lens)[:-1]))
        pos = np.repeat(starts - first, lens) + np.arange(total)
        out["token_ids"] = cols["token_ids"][pos]
    return out


class SegmentView:
    """The committed, visible content of one live segment, for reading.

    ``index`` lists visible blocks; ``problems`` what was found damaged while locating them.
    For the active segment, ``visible_end`` is the end of its last valid commit frame and
    ``refresh()`` picks up later commits incrementally.
    """

    def __init__(self, root: Path, shard: int, entry: SegmentEntry) -> None:
        self.shard = shard
        self.entry = entry
        self.path = segment_path(root, shard, entry.seg_id)
        self.name = self.path.name
        self.problems: list[Problem] = []
        self.last_commit: Commit | None = None
        self.index = np.zeros(0, INDEX_DTYPE)
        self.visible_end = SEGMENT_HEADER.size
        self.store_tokens = False
        self._mm: mmap.mmap | None = None
        self._mm_len = 0
        self._dctx = zstandard.ZstdDecompressor()
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            self.fd = -1
            self._problem(None, None, "segment file missing")
            return
        try:
            _, _, self.store_tokens = parse_segment_header(os.pread(self.fd, 32, 0))
        except HistoryCorruptError as e:
            self._problem(None, 0, str(e))
            return
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    # -- locating blocks ---------------------------------------------------------------

    def _problem(self, block: int | None, offset: int | None, msg: str) -> None:
        self.problems.append(Problem(self.shard, self.name, block, offset, msg))

    def _load(self) -> None:
        size = os.fstat(self.fd).st_size
        state, length = self.entry.state, self.entry.length
        if state == "active":
            self.refresh()
            if self.last_commit is None:
                self._problem(None, None, "active segment has no valid commit frame")
            return
        assert length is not None
        if size < length:
            self._problem(None, size, f"segment truncated: {size} bytes, {length} committed")
        if state == "sealed" and size >= length:
            idx = self._read_footer(length)
            if idx is not None:
                self.index, self.visible_end = idx, int(length)
                return
            self._problem(None, length, "footer damaged; falling back to a block scan")
        end = min(size, length)
        res = scan(self.fd, SEGMENT_HEADER.size, end)
        for a, b in res.skipped:
            self._problem(None, a, f"damaged region of {b - a} bytes skipped")
        self.index = _as_index(res.blocks)
        self.visible_end = end

    def _read_footer(self, length: int) -> np.ndarray | None:
        if length < SEGMENT_HEADER.size + FOOTER_TRAILER.size:
            return None
        ft = parse_footer(
            os.pread(self.fd, FOOTER_TRAILER.size, length - FOOTER_TRAILER.size), length
        )
        if ft is None:
            return None
        nb, off, icrc = ft
        raw = os.pread(self.fd, nb * INDEX_DTYPE.itemsize, off)
        if crc32(raw) != icrc:
            return None
        return np.frombuffer(raw, INDEX_DTYPE).copy()

    def refresh(self) -> bool:
        """Active segment: take in commits written since the last look. True if any."""
        if self.fd < 0 or self.entry.state != "active":
            return False
        size = os.fstat(self.fd).st_size
        start = self.visible_end if self.last_commit is not None else SEGMENT_HEADER.size
        if size <= start:
            return False
        res = scan(self.fd, start, size)
        # Accept commit frames only as a chain: seq + 1 and records adding up to the blocks
        # in between (looser across a damaged region). A stale or foreign frame ends it.
        last, pending, damaged, accepted = self.last_commit, [], [], None
        for kind, pos, obj in res.events:
            if kind == "block":
                pending.append(obj)
            elif kind == "skip":
                damaged.append(pos)
            else:
                c: Commit = obj
                if last is None:
                    ok = not damaged  # a segment's first commit (may follow blocks)
                else:
                    added = sum(b[1] for b in pending)
                    ok = c.seq == last.seq + 1 and c.records == last.records + added
                    if not ok and damaged:
                        ok = c.seq > last.seq and c.records >= last.records
                if not ok:
                    break
                accepted = (pos, c, list(pending), list(damaged))
                last, pending, damaged = c, [], []
        if accepted is None:
            return False
        end, self.last_commit, _, _ = accepted
        new = [b for b in res.blocks if b[0] < end]
        for a, _ in res.skipped:
            if a < end:
                self._problem(None, a, "damaged region before a commit skipped")
        if new:
            self.index = np.concatenate([self.index, _as_index(new)])
        self.visible_end = end
        return True

    @property
    def tail_bytes(self) -> int:
        """Bytes after the last commit (active segment): a torn tail or work in progress."""
        return max(0, os.fstat(self.fd).st_size - self.visible_end) if self.fd >= 0 else 0

    # -- reading blocks ----------------------------------------------------------------

    def _buffer(self) -> memoryview:
        if self._mm is None or self._mm_len != self.visible_end:
            self._drop_map()
            self._mm = mmap.mmap(self.fd, self.visible_end, access=mmap.ACCESS_READ)
            self._mm_len = self.visible_end
        return memoryview(self._mm)

    def header(self, i: int) -> BlockHeader:
        off = int(self.index["offset"][i])
        buf = self._buffer()
        bh = parse_block_header(buf[off : off + MAX_HEADER], off)
        if bh is None or bh.end > self.visible_end or bh.n != int(self.index["n"][i]):
            raise BlockCorruptError(Problem(self.shard, self.name, i, off, "bad block header"))
        return bh

    def chunk(self, bh: BlockHeader, name: str, block: int) -> tuple[int, int, memoryview]:
        """(encoding, raw_len, checked chunk bytes) of one column of a block."""
        enc, raw_len, comp, ccrc, off = bh.columns[name]
        mv = self._buffer()[off : off + comp]
        if crc32(mv) != ccrc:
            raise BlockCorruptError(
                Problem(self.shard, self.name, block, bh.offset, f"checksum mismatch in {name}")
            )
        return enc, raw_len, mv

    def column(self, bh: BlockHeader, name: str, block: int) -> np.ndarray:
        enc, raw_len, mv = self.chunk(bh, name, block)
        n = bh.n
        if name == "token_ids":
            n = raw_len // 4 if enc != ENC_CONST else 0
        try:
            return decode_chunk(name, enc, mv, raw_len, n, self._dctx)
        except (zstandard.ZstdError, ValueError, HistoryCorruptError) as e:
            raise BlockCorruptError(
                Problem(self.shard, self.name, block, bh.offset, f"cannot decode {name}: {e}")
            ) from None

    def runs(self, bh: BlockHeader, name: str, block: int) -> tuple[np.ndarray, np.ndarray]:
        enc, raw_len, mv = self.chunk(bh, name, block)
        try:
            return decode_runs(name, enc, mv, raw_len, bh.n, self._dctx)
        except (zstandard.ZstdError, ValueError, HistoryCorruptError) as e:
            raise BlockCorruptError(
                Problem(self.shard, self.name, block, bh.offset, f"cannot decode {name}: {e}")
            ) from None

    def const(self, bh: BlockHeader, name: str, block: int) -> Any:
        """The value of a constant column chunk, or None (then decode the column)."""
        enc, _, mv = self.chunk(bh, name, block)
        if enc != ENC_CONST:
            return None
        return np.frombuffer(mv, BY_NAME[name].dtype, count=1)[0]

    def read_block(self, i: int, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Decode columns of block ``i`` (all it has by default)."""
        bh = self.header(i)
        names = tuple(bh.columns) if names is None else names
        return {nm: self.column(bh, nm, i) for nm in names if nm in bh.columns}

    # -- closing ---------------------------------------------------------------------

    def _drop_map(self) -> None:
        # an mmap holds its own (dup'ed) descriptor: close it now, unless a caller still
        # holds a view of it (then it goes with the last view)
        if self._mm is not None:
            with contextlib.suppress(BufferError):
                self._mm.close()
            self._mm = None

    def close(self) -> None:
        """Release the segment's descriptor and map (idempotent)."""
        self._drop_map()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:  # last resort; owners call close()
        with contextlib.suppress(Exception):
            self.close()
