"""Arrow record batches → records, shared by the Parquet and ``datasets`` readers.

Rows are converted to Python a batch at a time, so a large file is never held as Python
objects all at once and a ``limit`` stops the reading early.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from srpo.data.rows import Record
from srpo.errors import DataError

BATCH_ROWS = 1024


def batch_records(file: Path, batches: Iterable[Any], what: str) -> Iterator[Record]:
    """Records of ``file`` from its Arrow batches (anything with ``to_pylist``); a read
    error is one DataError naming the first row that could not be read."""
    import pyarrow as pa

    index = 0
    it = iter(batches)
    while True:
        try:
            batch = next(it)
            rows = batch.to_pylist()
        except StopIteration:
            return
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DataError(
                f"{file}:{index + 1}: cannot read {what} rows from here on ({one_line(e)})"
            ) from None
        for row in rows:
            index += 1
            yield Record(file, index, row)


def one_line(error: BaseException) -> str:
    """An exception as a short single line (library messages can span several)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
