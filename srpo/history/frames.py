"""Segment-file frames: segment header, block frames, commit frames, footer; checksums.

Pure functions (bytes in, bytes/records out), shared by the writer, the reader, the repair
code and ``verify``. See ``FORMAT.md`` ("Segment file").
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import zstandard

from srpo.history.codecs import encode_column
from srpo.history.errors import HistoryCorruptError
from srpo.history.schema import BY_ID, BY_NAME, FORMAT_VERSION

SEGMENT_MAGIC = b"SRPOHIST"
BLOCK_MAGIC = b"HBK1"
COMMIT_MAGIC = b"HCM1"
FOOTER_MAGIC = b"HFT1"

# segment header: magic, version, flags, reserved, shard, seg_id, reserved x2, crc
SEGMENT_HEADER = struct.Struct("<8sBBHIIIII")
# block header: magic, hdr_len, ncols, flags, n, epoch_min, epoch_max, step_min, step_max,
# payload_len, header_crc (crc of these bytes with the crc zeroed + the column directory)
BLOCK_HEADER = struct.Struct("<4sHBBIIIIIII")
# column directory entry: col_id, encoding, reserved, raw_len, comp_len, crc32(chunk)
DIR_ENTRY = struct.Struct("<BBHIII")
# commit frame: magic, flags (bit0: step is set), step, records, seq, crc, reserved
COMMIT_FRAME = struct.Struct("<4sIQQQII")
# footer trailer: magic, n_blocks, index_offset, index_crc, trailer_crc
FOOTER_TRAILER = struct.Struct("<4sIQII")

SEG_FLAG_TOKENS = 1
MAX_HEADER = BLOCK_HEADER.size + 16 * DIR_ENTRY.size

#: One block in a segment's index (the footer of a sealed segment, or found by a scan).
INDEX_DTYPE = np.dtype(
    [
        ("offset", "<u8"),
        ("n", "<u4"),
        ("epoch_min", "<u4"),
        ("epoch_max", "<u4"),
        ("step_min", "<u4"),
        ("step_max", "<u4"),
        ("pad", "<u4"),
    ]
)

#: (n, epoch_min, epoch_max, step_min, step_max) of a block
BlockStats = tuple[int, int, int, int, int]


def crc32(*parts: bytes | memoryview) -> int:
    c = 0
    for p in parts:
        c = zlib.crc32(p, c)
    return c & 0xFFFFFFFF


# --------------------------------------------------------------------------- segment header


def segment_header(shard: int, seg_id: int, store_tokens: bool) -> bytes:
    flags = SEG_FLAG_TOKENS if store_tokens else 0
    body = SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, flags, 0, shard, seg_id, 0, 0, 0)
    c = crc32(body[: SEGMENT_HEADER.size - 4])
    return body[: SEGMENT_HEADER.size - 4] + struct.pack("<I", c)


def parse_segment_header(buf: bytes) -> tuple[int, int, bool]:
    """(shard, seg_id, store_tokens); raises HistoryCorruptError when invalid."""
    if len(buf) < SEGMENT_HEADER.size:
        raise HistoryCorruptError("segment header truncated")
    magic, version, flags, _, shard, seg_id, _, _, c = SEGMENT_HEADER.unpack_from(buf)
    if magic != SEGMENT_MAGIC:
        raise HistoryCorruptError("not a history segment (bad magic)")
    if crc32(buf[: SEGMENT_HEADER.size - 4]) != c:
        raise HistoryCorruptError("segment header checksum mismatch")
    if version != FORMAT_VERSION:
        raise HistoryCorruptError(f"unsupported segment format version {version}")
    return shard, seg_id, bool(flags & SEG_FLAG_TOKENS)


# --------------------------------------------------------------------------- commit frame


@dataclass(frozen=True)
class Commit:
    """A parsed commit frame: the shard's durable state as of this point."""

    step: int | None
    records: int
    seq: int


def commit_frame(c: Commit) -> bytes:
    body = COMMIT_FRAME.pack(
        COMMIT_MAGIC, 0 if c.step is None else 1, c.step or 0, c.records, c.seq, 0, 0
    )
    return body[:32] + struct.pack("<II", crc32(body[:32]), 0)


def parse_commit(buf: bytes | memoryview) -> Commit | None:
    if len(buf) < COMMIT_FRAME.size:
        return None
    magic, flags, step, records, seq, c, _ = COMMIT_FRAME.unpack_from(buf)
    if magic != COMMIT_MAGIC or crc32(bytes(buf[:32])) != c:
        return None
    return Commit(step if flags & 1 else None, records, seq)


# --------------------------------------------------------------------------- block frame


@dataclass(frozen=True)
class BlockHeader:
    """A parsed block header with its column directory (chunk offsets are absolute)."""

    offset: int
    hdr_len: int
    n: int
    epoch_min: int
    epoch_max: int
    step_min: int
    step_max: int
    payload_len: int
    columns: Mapping[str, tuple[int, int, int, int, int]]  # name -> (enc, raw, comp, crc, off)

    @property
    def end(self) -> int:
        return self.offset + self.hdr_len + self.payload_len


def encode_block(
    cols: Mapping[str, np.ndarray], cctx: zstandard.ZstdCompressor
) -> tuple[bytes, BlockStats]:
    """Encode one block; returns (frame bytes, (n, epoch_min, epoch_max, step_min, step_max))."""
    n = int(cols["prompt_id"].size)
    ep, st = cols["epoch"], cols["step"]
    stats = (n, int(ep.min()), int(ep.max()), int(st.min()), int(st.max()))
    entries, chunks = [], []
    for name, a in cols.items():
        enc, raw_len, chunk = encode_column(name, a, cctx)
        entries.append(DIR_ENTRY.pack(BY_NAME[name].cid, enc, 0, raw_len, len(chunk), crc32(chunk)))
        chunks.append(chunk)
    directory = b"".join(entries)
    hdr_len = BLOCK_HEADER.size + len(directory)
    payload_len = sum(len(c) for c in chunks)
    head = BLOCK_HEADER.pack(BLOCK_MAGIC, hdr_len, len(entries), 0, *stats, payload_len, 0)
    c = crc32(head, directory)
    head = head[:-4] + struct.pack("<I", c)
    return b"".join([head, directory, *chunks]), stats


def parse_block_header(buf: bytes | memoryview, offset: int) -> BlockHeader | None:
    """Parse a block header at ``buf[0:]`` (file offset ``offset``); None if invalid."""
    if len(buf) < BLOCK_HEADER.size:
        return None
    magic, hdr_len, ncols, _, n, e0, e1, s0, s1, payload_len, c = BLOCK_HEADER.unpack_from(buf)
    if magic != BLOCK_MAGIC or hdr_len != BLOCK_HEADER.size + ncols * DIR_ENTRY.size:
        return None
    if len(buf) < hdr_len:
        return None
    zeroed = bytes(buf[: BLOCK_HEADER.size - 4]) + b"\0\0\0\0"
    if crc32(zeroed, bytes(buf[BLOCK_HEADER.size : hdr_len])) != c:
        return None
    cols: dict[str, tuple[int, int, int, int, int]] = {}
    pos = offset + hdr_len
    total = 0
    for i in range(ncols):
        cid, enc, _, raw_len, comp_len, ccrc = DIR_ENTRY.unpack_from(
            buf, BLOCK_HEADER.size + i * DIR_ENTRY.size
        )
        col = BY_ID.get(cid)
        if col is None:
            return None
        cols[col.name] = (enc, raw_len, comp_len, ccrc, pos)
        pos += comp_len
        total += comp_len
    if total != payload_len:
        return None
    return BlockHeader(offset, hdr_len, n, e0, e1, s0, s1, payload_len, cols)


# --------------------------------------------------------------------------- footer


def footer_bytes(index: np.ndarray, index_offset: int) -> bytes:
    body = np.ascontiguousarray(index, dtype=INDEX_DTYPE).tobytes()
    t = FOOTER_TRAILER.pack(FOOTER_MAGIC, len(index), index_offset, crc32(body), 0)
    return body + t[:-4] + struct.pack("<I", crc32(t[:-4]))


def parse_footer(trailer: bytes, length: int) -> tuple[int, int, int] | None:
    """(n_blocks, index_offset, index_crc) from the last bytes of a sealed segment."""
    if len(trailer) != FOOTER_TRAILER.size:
        return None
    magic, nb, idx_off, idx_crc, c = FOOTER_TRAILER.unpack(trailer)
    if magic != FOOTER_MAGIC or crc32(trailer[:-4]) != c:
        return None
    if idx_off + nb * INDEX_DTYPE.itemsize + FOOTER_TRAILER.size != length:
        return None
    return nb, idx_off, idx_crc
