"""Which reader a dataset path needs: given in the run file, or told by the path itself."""

from __future__ import annotations

from pathlib import Path

from srpo.data import hf, jsonl, parquet
from srpo.errors import DataError

FORMATS = ("jsonl", "parquet", "hf")
_EXPECTED = (
    "expected a .jsonl file, a .parquet file, a directory of .parquet files or a datasets "
    "directory saved with save_to_disk"
)
_SET_FORMAT = "set format: jsonl, parquet or hf in its dataset entry"


def detect_format(path: Path, format: str = "auto") -> str:
    """``format`` unless ``auto``; else the suffix of a file, or what a directory holds.
    A path that says nothing clear is a DataError, never a guess."""
    if format != "auto":
        if format not in FORMATS:
            raise DataError(f"{path}: unknown dataset format {format!r} ({_SET_FORMAT})")
        return format
    if path.is_dir():
        hf.refuse_dataset_dict(path)
        if hf.has_marker(path, hf.STATE):
            return "hf"
        if parquet.parquet_files(path):  # Parquet files win over a lone dataset_info.json
            return "parquet"
        if hf.has_marker(path, hf.INFO):
            return "hf"
        raise DataError(f"{path}: is a directory, {_EXPECTED}")
    suffix = path.suffix.lower()
    if suffix in jsonl.SUFFIXES:
        return "jsonl"
    if suffix in parquet.SUFFIXES:
        return "parquet"
    raise DataError(
        f"{path}: cannot tell the dataset format from the name ({suffix or 'no suffix'}); "
        f"{_EXPECTED}, or {_SET_FORMAT}"
    )
