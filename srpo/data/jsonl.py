"""JSON-lines datasets: one JSON object per line, read line by line (blank lines skipped)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from srpo.data.rows import Record
from srpo.errors import DataError

SUFFIXES = (".jsonl", ".json", ".ndjson")
_ARRAY_HINT = " (a JSON array? srpo reads JSON lines: one object per line)"


def read_jsonl(path: Path) -> Iterator[Record]:
    """The file's records; an unreadable line is a DataError naming ``FILE:LINE``."""
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .jsonl file")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            first = lineno == 1 and raw.lstrip().startswith(b"[")
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: record is not valid UTF-8 (byte {e.start})") from None
            except json.JSONDecodeError as e:
                hint = _ARRAY_HINT if first else ""
                raise DataError(f"{where}: record is not valid JSON ({e.msg}){hint}") from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{where}: record must be a JSON object, got {type(row).__name__}"
                    f"{_ARRAY_HINT if first else ''}"
                )
            yield Record(path, lineno, row)
