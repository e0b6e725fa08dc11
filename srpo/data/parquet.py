"""Parquet datasets: one file, or a directory of ``*.parquet`` files read in name order.

Row numbers in errors are 1-based within each file. pyarrow is the ``parquet`` extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from srpo.data.arrow import BATCH_ROWS, batch_records, one_line
from srpo.data.rows import Record
from srpo.errors import DataError

SUFFIXES = (".parquet", ".pq")


def parquet_files(directory: Path) -> list[Path]:
    """The Parquet files directly in ``directory`` (not in subdirectories), by name."""
    return sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES and p.is_file())


def read_parquet(path: Path) -> Iterator[Record]:
    """The records of a Parquet file, or of every Parquet file in a directory."""
    pq = _pyarrow_parquet(path)
    files = parquet_files(path) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: directory holds no .parquet files")
    for file in files:
        try:
            reader = pq.ParquetFile(file)
        except Exception as e:  # ArrowInvalid, OSError: truncated, empty, not Parquet at all
            raise DataError(f"{file}: not a readable Parquet file ({one_line(e)})") from None
        with reader:
            yield from batch_records(file, _batches(reader), "Parquet")


def _batches(reader: Any) -> Iterator[Any]:
    """Batches that never span two row groups, so a read error names the first row of the
    damaged part and a ``limit`` inside the first row groups never decodes the rest."""
    for group in range(reader.num_row_groups):
        yield from reader.iter_batches(batch_size=BATCH_ROWS, row_groups=[group])


def _pyarrow_parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow: pip install 'srpo[parquet]'"
        ) from None
    return pq
