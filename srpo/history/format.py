"""On-disk format of the history store: frames, column encodings, manifests.

Everything here is pure (bytes in, bytes/arrays out) so that the writer, the reader, the
repair code and ``verify`` share one definition of the format. See ``FORMAT.md``.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

#: Format version byte, written in every segment header and manifest.
FORMAT_VERSION = 1

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

# column encodings
ENC_CONST = 0  # one value, stored uncompressed
ENC_SHUFFLE = 1  # byte planes, zstd
ENC_DELTA_SHUFFLE = 2  # wrapping delta, byte planes, zstd
ENC_DICT = 3  # k <= 16 (256 for bytes) distinct values + packed code bit-planes, zstd
ENC_RLE = 4  # run values + run lengths (both byte planes), zstd
ENC_RAW = 5  # plain little-endian bytes, zstd

DICT_MAX = 16


@dataclass(frozen=True)
class Column:
    """One column of the record schema: id on disk, name, numpy dtype."""

    cid: int
    name: str
    dtype: np.dtype


COLUMNS: tuple[Column, ...] = (
    Column(0, "prompt_id", np.dtype("<u8")),
    Column(1, "epoch", np.dtype("<u4")),
    Column(2, "step", np.dtype("<u4")),
    Column(3, "sample", np.dtype("<u2")),
    Column(4, "domain", np.dtype("u1")),
    Column(5, "reward", np.dtype("<f4")),
    Column(6, "correct", np.dtype("u1")),
    Column(7, "length", np.dtype("<u4")),
    Column(8, "flags", np.dtype("u1")),
    Column(9, "stage", np.dtype("u1")),
    Column(10, "token_count", np.dtype("<u4")),
    Column(11, "token_ids", np.dtype("<i4")),
)
BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
BY_ID: dict[int, Column] = {c.cid: c for c in COLUMNS}
RECORD_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS[:10])
TOKEN_COLUMNS: tuple[str, ...] = ("token_count", "token_ids")
#: Uncompressed bytes of one record (without tokens): the "raw" size for ratios.
RAW_RECORD_BYTES = sum(BY_NAME[n].dtype.itemsize for n in RECORD_COLUMNS)

FLAG_TRUNCATED = 1
FLAG_VERIFIER_ERROR = 2

# Which encodings the writer tries per column (CONST is always tried first).
_POLICY: dict[str, int] = {
    "prompt_id": ENC_RLE,
    "epoch": ENC_DELTA_SHUFFLE,
    "step": ENC_DELTA_SHUFFLE,
    "sample": ENC_SHUFFLE,
    "domain": ENC_DICT,
    "reward": ENC_DICT,
    "correct": ENC_DICT,
    "length": ENC_SHUFFLE,
    "flags": ENC_DICT,
    "stage": ENC_DICT,
    "token_count": ENC_SHUFFLE,
    "token_ids": ENC_SHUFFLE,
}


class HistoryError(Exception):
    """Base of the store's errors."""


class HistoryCorruptError(HistoryError):
    """A checksum or structure check failed (raised in strict mode and by the writer)."""


class NotAStoreError(HistoryError):
    """The directory holds no history store."""


# --------------------------------------------------------------------------- encodings


def _shuffle(a: np.ndarray) -> np.ndarray:
    s = a.dtype.itemsize
    if s == 1:
        return a
    return np.ascontiguousarray(a.view(np.uint8).reshape(-1, s).T)


def _unshuffle(raw: bytes | memoryview, dtype: np.dtype, n: int) -> np.ndarray:
    s = dtype.itemsize
    b = np.frombuffer(raw, np.uint8, count=n * s)
    if s == 1:
        return b.view(dtype).copy()
    return np.ascontiguousarray(b.reshape(s, n).T).view(dtype).reshape(n)


def _uint_view(a: np.ndarray) -> np.ndarray:
    return a.view(np.dtype(f"<u{a.dtype.itemsize}"))


def _dict_codes(a: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(sorted distinct values as uint, codes) when few enough distinct values, else None."""
    u = _uint_view(a)
    if u.dtype.itemsize == 1:
        counts = np.bincount(u, minlength=256)
        values = np.flatnonzero(counts).astype(np.uint8)
        lut = np.zeros(256, np.uint8)
        lut[values] = np.arange(values.size, dtype=np.uint8)
        return values, lut[u]
    # sample candidates, then check every value: no full sort of the block
    cand = np.unique(u[:: max(1, u.size // 64)])
    if cand.size > DICT_MAX:
        return None
    codes = np.minimum(np.searchsorted(cand, u), cand.size - 1)
    bad = cand[codes] != u
    if bad.any():
        cand = np.union1d(cand, u[bad])
        if cand.size > DICT_MAX:
            return None
        codes = np.searchsorted(cand, u)
    return cand, codes.astype(np.uint8)


def _pack_codes(codes: np.ndarray, k: int) -> bytes:
    nbits = max(1, (k - 1).bit_length())
    if nbits == 1:
        return np.packbits(codes).tobytes()
    shifts = np.arange(nbits, dtype=np.uint8)[:, None]
    planes = (codes[None, :] >> shifts) & 1
    return np.packbits(planes, axis=1).tobytes()


def _unpack_codes(raw: memoryview, k: int, n: int) -> np.ndarray:
    nbits = max(1, (k - 1).bit_length())
    packed = np.frombuffer(raw, np.uint8).reshape(nbits, -1)
    bits = np.unpackbits(packed, axis=1, count=n)
    codes = bits[0]
    for b in range(1, nbits):
        codes = codes | (bits[b] << b)
    return codes


def encode_column(
    name: str, a: np.ndarray, cctx: zstandard.ZstdCompressor
) -> tuple[int, int, bytes]:
    """Encode one column chunk: returns (encoding, raw_len, chunk bytes)."""
    col = BY_NAME[name]
    a = np.ascontiguousarray(a, dtype=col.dtype)
    n = a.size
    if n and name != "token_ids" and (a == a[0]).all() and not np.isnan(a[0]):
        return ENC_CONST, col.dtype.itemsize, a[:1].tobytes()
    enc = _POLICY[name]
    if enc == ENC_DICT:
        dc = _dict_codes(a)
        if dc is None:
            enc = ENC_SHUFFLE
        else:
            values, codes = dc
            raw = (
                struct.pack("<H", values.size) + values.tobytes() + _pack_codes(codes, values.size)
            )
    if enc == ENC_RLE:
        starts = np.flatnonzero(a[1:] != a[:-1]) + 1
        starts = np.concatenate(([0], starts))
        runs = np.diff(np.append(starts, n)).astype(np.uint32)
        raw = (
            struct.pack("<I", starts.size)
            + _shuffle(a[starts]).tobytes()
            + _shuffle(runs).tobytes()
        )
    elif enc == ENC_DELTA_SHUFFLE:
        d = np.empty_like(a)
        if n:
            d[0] = a[0]
            np.subtract(a[1:], a[:-1], out=d[1:])
        raw = _shuffle(d)
    elif enc == ENC_SHUFFLE:
        raw = _shuffle(a)
    elif enc == ENC_RAW:
        raw = a
    mv = memoryview(raw).cast("B")
    return enc, mv.nbytes, cctx.compress(mv)


def decode_chunk(
    name: str,
    enc: int,
    chunk: memoryview | bytes,
    raw_len: int,
    n: int,
    dctx: zstandard.ZstdDecompressor,
) -> np.ndarray:
    """Inverse of ``encode_column`` (``n`` = items in the column)."""
    dtype = BY_NAME[name].dtype
    if enc == ENC_CONST:
        return np.full(n, np.frombuffer(chunk, dtype, count=1)[0], dtype=dtype)
    if enc == ENC_RLE:
        values, runs = decode_runs(name, enc, chunk, raw_len, n, dctx)
        return np.repeat(values, runs)
    raw = dctx.decompress(chunk, max_output_size=raw_len)
    if len(raw) != raw_len:
        raise HistoryCorruptError(f"column {name}: {len(raw)} bytes decoded, {raw_len} expected")
    if enc == ENC_SHUFFLE:
        return _unshuffle(raw, dtype, n)
    if enc == ENC_DELTA_SHUFFLE:
        return np.cumsum(_unshuffle(raw, dtype, n), dtype=dtype)
    if enc == ENC_RAW:
        return np.frombuffer(raw, dtype, count=n).copy()
    if enc == ENC_DICT:
        mv = memoryview(raw)
        (k,) = struct.unpack_from("<H", mv, 0)
        s = dtype.itemsize
        values = np.frombuffer(mv[2 : 2 + k * s], f"<u{s}").view(dtype)
        codes = _unpack_codes(mv[2 + k * s :], k, n)
        if s == 1 and values[-1] == k - 1:  # values are 0..k-1 (e.g. correct): codes as is
            return codes.view(dtype)
        return values[codes]
    raise HistoryCorruptError(f"column {name}: unknown encoding {enc}")


def decode_runs(
    name: str,
    enc: int,
    chunk: memoryview | bytes,
    raw_len: int,
    n: int,
    dctx: zstandard.ZstdDecompressor,
) -> tuple[np.ndarray, np.ndarray]:
    """A column as (run values, run lengths); cheap for RLE and CONST columns."""
    dtype = BY_NAME[name].dtype
    if enc == ENC_CONST:
        return np.frombuffer(chunk, dtype, count=1).copy(), np.array([n], np.uint32)
    if enc != ENC_RLE:
        a = decode_chunk(name, enc, chunk, raw_len, n, dctx)
        return runs_of(a)
    raw = dctx.decompress(chunk, max_output_size=raw_len)
    if len(raw) != raw_len:
        raise HistoryCorruptError(f"column {name}: {len(raw)} bytes decoded, {raw_len} expected")
    mv = memoryview(raw)
    (k,) = struct.unpack_from("<I", mv, 0)
    s = dtype.itemsize
    values = _unshuffle(mv[4 : 4 + k * s], dtype, k)
    runs = _unshuffle(mv[4 + k * s :], np.dtype("<u4"), k)
    if int(runs.sum(dtype=np.int64)) != n:
        raise HistoryCorruptError(f"column {name}: run lengths do not add up to {n}")
    return values, runs


def runs_of(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run-length view (values, lengths) of a 1-d array."""
    if a.size == 0:
        return a[:0].copy(), np.zeros(0, np.uint32)
    starts = np.concatenate(([0], np.flatnonzero(a[1:] != a[:-1]) + 1))
    return a[starts], np.diff(np.append(starts, a.size)).astype(np.uint32)


# --------------------------------------------------------------------------- frames


def crc32(*parts: bytes | memoryview) -> int:
    c = 0
    for p in parts:
        c = zlib.crc32(p, c)
    return c & 0xFFFFFFFF


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
) -> tuple[bytes, tuple[int, int, int, int, int]]:
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


# --------------------------------------------------------------------------- manifests


def manifest_path(root: Path, shard: int) -> Path:
    return root / f"shard-{shard:05d}.manifest.json"


def segment_path(root: Path, shard: int, seg_id: int) -> Path:
    return root / f"shard-{shard:05d}-{seg_id:08d}.seg"


def segment_files(root: Path, shard: int) -> dict[int, Path]:
    """Segment files of one shard present on disk, by id."""
    out = {}
    for p in root.glob(f"shard-{shard:05d}-*.seg"):
        try:
            out[int(p.stem.rsplit("-", 1)[1])] = p
        except ValueError:
            continue
    return out


def list_shards(root: Path) -> list[int]:
    shards = []
    for p in root.glob("shard-*.manifest.json"):
        try:
            shards.append(int(p.name.split("-")[1].split(".")[0]))
        except (IndexError, ValueError):
            continue
    return sorted(shards)


@dataclass(frozen=True)
class SegmentEntry:
    """A live segment as the manifest lists it.

    ``state``: ``active`` (the last; visible up to its last commit frame), ``sealed``
    (complete, footer at ``length``), ``cut`` (every block before ``length`` is visible).
    """

    seg_id: int
    state: str
    length: int | None = None


@dataclass(frozen=True)
class Manifest:
    shard: int
    store_tokens: bool
    generation: int
    segments: tuple[SegmentEntry, ...]


def manifest_bytes(m: Manifest) -> bytes:
    body = {
        "format": "srpo-history",
        "version": FORMAT_VERSION,
        "shard": m.shard,
        "store_tokens": m.store_tokens,
        "generation": m.generation,
        "segments": [
            {"id": s.seg_id, "state": s.state, **({"length": s.length} if s.length else {})}
            for s in m.segments
        ],
    }
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"))
    body["crc32"] = crc32(raw.encode())
    return (json.dumps(body, sort_keys=True, indent=1) + "\n").encode()


def parse_manifest(data: bytes) -> Manifest:
    try:
        body = json.loads(data)
        c = body.pop("crc32")
        raw = json.dumps(body, sort_keys=True, separators=(",", ":"))
    except (ValueError, KeyError, TypeError) as e:
        raise HistoryCorruptError(f"unreadable manifest: {e}") from None
    if crc32(raw.encode()) != c:
        raise HistoryCorruptError("manifest checksum mismatch")
    if body.get("format") != "srpo-history" or body.get("version") != FORMAT_VERSION:
        raise HistoryCorruptError(f"unsupported manifest version {body.get('version')!r}")
    segs = tuple(SegmentEntry(s["id"], s["state"], s.get("length")) for s in body["segments"])
    return Manifest(body["shard"], bool(body["store_tokens"]), body["generation"], segs)


def read_manifest(root: Path, shard: int) -> Manifest | None:
    try:
        data = manifest_path(root, shard).read_bytes()
    except FileNotFoundError:
        return None
    return parse_manifest(data)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(root: Path, m: Manifest) -> None:
    """Atomically replace the shard's manifest (tmp file, fsync, rename, fsync dir)."""
    path = manifest_path(root, m.shard)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(manifest_bytes(m))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(root)


def write_all(fd: int, data: bytes | memoryview) -> None:
    mv = memoryview(data)
    while mv.nbytes:
        k = os.write(fd, mv)
        mv = mv[k:]
