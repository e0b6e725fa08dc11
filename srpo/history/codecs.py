"""Column encodings: one column chunk of a block, numpy array <-> bytes.

Pure functions (bytes in, arrays out), shared by the writer, the reader and ``verify``.
See ``FORMAT.md`` ("Column encodings").
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard

from srpo.history.errors import HistoryCorruptError
from srpo.history.schema import BY_NAME

ENC_CONST = 0  # one value, stored uncompressed
ENC_SHUFFLE = 1  # byte planes, zstd
ENC_DELTA_SHUFFLE = 2  # wrapping delta, byte planes, zstd
ENC_DICT = 3  # k <= 16 (256 for bytes) distinct values + packed code bit-planes, zstd
ENC_RLE = 4  # run values + run lengths (both byte planes), zstd

DICT_MAX = 16

# Which encoding the writer tries per column (CONST is always tried first).
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


# --------------------------------------------------------------------------- building blocks


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


def _decompress(
    name: str, chunk: memoryview | bytes, raw_len: int, dctx: zstandard.ZstdDecompressor
) -> bytes:
    raw = dctx.decompress(chunk, max_output_size=raw_len)
    if len(raw) != raw_len:
        raise HistoryCorruptError(f"column {name}: {len(raw)} bytes decoded, {raw_len} expected")
    return raw


# --------------------------------------------------------------------------- encoding


def _raw_of(enc: int, a: np.ndarray) -> tuple[int, bytes | np.ndarray]:
    """(encoding actually used, uncompressed chunk) for a non-constant column."""
    n = a.size
    if enc == ENC_DICT:
        dc = _dict_codes(a)
        if dc is None:
            return _raw_of(ENC_SHUFFLE, a)
        values, codes = dc
        return enc, (
            struct.pack("<H", values.size) + values.tobytes() + _pack_codes(codes, values.size)
        )
    if enc == ENC_RLE:
        starts = np.flatnonzero(a[1:] != a[:-1]) + 1
        starts = np.concatenate(([0], starts))
        runs = np.diff(np.append(starts, n)).astype(np.uint32)
        return enc, (
            struct.pack("<I", starts.size)
            + _shuffle(a[starts]).tobytes()
            + _shuffle(runs).tobytes()
        )
    if enc == ENC_DELTA_SHUFFLE:
        d = np.empty_like(a)
        if n:
            d[0] = a[0]
            np.subtract(a[1:], a[:-1], out=d[1:])
        return enc, _shuffle(d)
    return ENC_SHUFFLE, _shuffle(a)


def encode_column(
    name: str, a: np.ndarray, cctx: zstandard.ZstdCompressor
) -> tuple[int, int, bytes]:
    """Encode one column chunk: returns (encoding, raw_len, chunk bytes)."""
    col = BY_NAME[name]
    a = np.ascontiguousarray(a, dtype=col.dtype)
    if a.size and name != "token_ids" and (a == a[0]).all() and not np.isnan(a[0]):
        return ENC_CONST, col.dtype.itemsize, a[:1].tobytes()
    enc, raw = _raw_of(_POLICY[name], a)
    mv = memoryview(raw).cast("B")
    return enc, mv.nbytes, cctx.compress(mv)


# --------------------------------------------------------------------------- decoding


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
    if enc not in (ENC_SHUFFLE, ENC_DELTA_SHUFFLE, ENC_DICT):
        raise HistoryCorruptError(f"column {name}: unknown encoding {enc}")
    raw = _decompress(name, chunk, raw_len, dctx)
    if enc == ENC_SHUFFLE:
        return _unshuffle(raw, dtype, n)
    if enc == ENC_DELTA_SHUFFLE:
        return np.cumsum(_unshuffle(raw, dtype, n), dtype=dtype)
    mv = memoryview(raw)  # ENC_DICT
    (k,) = struct.unpack_from("<H", mv, 0)
    s = dtype.itemsize
    values = np.frombuffer(mv[2 : 2 + k * s], f"<u{s}").view(dtype)
    codes = _unpack_codes(mv[2 + k * s :], k, n)
    if s == 1 and values[-1] == k - 1:  # values are 0..k-1 (e.g. correct): codes as is
        return codes.view(dtype)
    return values[codes]


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
        return runs_of(decode_chunk(name, enc, chunk, raw_len, n, dctx))
    mv = memoryview(_decompress(name, chunk, raw_len, dctx))
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
