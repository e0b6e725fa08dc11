"""The record schema: one row per rollout, its columns (id on disk, name, dtype), flag bits.

See ``FORMAT.md`` ("Record schema").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Format version byte, written in every segment header and manifest.
FORMAT_VERSION = 1

#: ``flags`` column bits.
FLAG_TRUNCATED = 1  # the response hit max_new_tokens
FLAG_VERIFIER_ERROR = 2  # the verifier failed on the response


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
