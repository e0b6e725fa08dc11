"""The per-sample JSONL of an evaluation: what makes it inspectable and resumable.

Line 1 is a header naming what produced the samples (model, sampler and its options, n,
seed, verifiers); every other line is one scored sample. Lines are appended and flushed as
soon as a chunk is scored, so an interrupted evaluation loses at most the chunk in flight,
and a rerun with the same arguments reads the file back and generates only what is
missing. A header that does not match refuses the file instead of mixing two evaluations.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from srpo.errors import SrpoError

#: A sample's key: (dataset, prompt id, sample index); the greedy decode is sample -1.
Key = tuple[str, int, int]
GREEDY = -1
HEADER = "srpo_eval"


def key_of(record: Mapping[str, Any]) -> Key:
    return (str(record["dataset"]), int(record["prompt_id"]), int(record["sample"]))


class SampleStore:
    """Scored samples by key, backed by an append-only JSONL file (or by memory only)."""

    def __init__(self, path: Path | None, header: Mapping[str, Any]) -> None:
        self.path = path
        self.records: dict[Key, dict[str, Any]] = {}
        self.resumed = 0
        self._file: TextIO | None = None
        if path is None:
            return
        if path.exists() and path.stat().st_size > 0:
            self._read(path, header)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({HEADER: dict(header)}) + "\n", encoding="utf-8")
        self._file = path.open("a", encoding="utf-8")

    def _read(self, path: Path, header: Mapping[str, Any]) -> None:
        raw = path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):  # a line cut by the interruption: drop it, it is regenerated
            with path.open("r+b") as f:
                f.truncate(end)
            raw = raw[:end]
        lines = raw.decode("utf-8").splitlines()
        try:
            first = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            first = {}
        if not isinstance(first, dict) or HEADER not in first:
            raise SrpoError(f"{path}: not an srpo eval samples file; pass another --samples")
        if first[HEADER] != json.loads(json.dumps(dict(header))):
            diff = sorted(
                k
                for k in {**header, **first[HEADER]}
                if first[HEADER].get(k) != json.loads(json.dumps(header.get(k)))
            )
            raise SrpoError(
                f"{path}: holds samples of a different evaluation ({', '.join(diff)} "
                "differ); pass another --samples file, or delete it to start over"
            )
        for n, line in enumerate(lines[1:], start=2):
            try:
                rec = json.loads(line)
                self.records[key_of(rec)] = rec
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise SrpoError(f"{path}:{n}: not a sample record") from None
        self.resumed = len(self.records)

    def has(self, key: Key) -> bool:
        return key in self.records

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        """Keep ``records`` and append the new ones to the file, flushed to the OS."""
        fresh = [r for r in records if key_of(r) not in self.records]
        for r in fresh:
            self.records[key_of(r)] = r
        if self._file is not None and fresh:
            self._file.write("".join(json.dumps(r) + "\n" for r in fresh))
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
