"""``load_dataset``: any supported file → ``Prompt`` rows, every problem found before a run.

The format is picked by ``formats.detect_format``; the reader yields records; this module
turns them into prompts, stops at ``limit``, and refuses duplicate ids and empty datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

from srpo.data.formats import detect_format
from srpo.data.hf import read_hf
from srpo.data.jsonl import read_jsonl
from srpo.data.parquet import read_parquet
from srpo.data.rows import Keys, Record, row_to_prompt
from srpo.errors import DataError
from srpo.types import Prompt

# format → (reader, what its record index counts, for the duplicate-id message)
READERS: dict[str, tuple[Callable[[Path], Iterator[Record]], str]] = {
    "jsonl": (read_jsonl, "line"),
    "parquet": (read_parquet, "row"),
    "hf": (read_hf, "row"),
}


def load_dataset(
    path: Path,
    domain: str,
    *,
    format: str = "auto",
    prompt_key: str = "prompt",
    reference_key: str = "answer",
    id_key: str | None = "id",
    limit: int | None = None,
) -> list[Prompt]:
    """Read a dataset of any supported format; keys may be dotted paths into nested
    records (``reward_model.ground_truth``). Every bad row is a one-line DataError."""
    if not path.exists():
        raise DataError(f"{path}: dataset file not found (domain {domain!r})")
    reader, unit = READERS[detect_format(path, format)]
    keys = Keys(prompt_key, reference_key, id_key)
    prompts: list[Prompt] = []
    first: dict[int, tuple[Path, int]] = {}  # id → where it was first seen (not the row)
    with closing(reader(path)) as records:  # closing: a limit releases the file at once
        for record in records:
            prompt = row_to_prompt(record.row, record.where, domain, keys)
            if prompt.id in first:
                raise DataError(
                    f"{record.where}: duplicate prompt id (same as "
                    f"{_place(first[prompt.id], record, unit)})"
                )
            first[prompt.id] = (record.file, record.index)
            prompts.append(prompt)
            if limit is not None and len(prompts) >= limit:
                break
    if not prompts:
        raise DataError(f"{path}: dataset is empty (domain {domain!r})")
    return prompts


def load_jsonl(
    path: Path,
    domain: str,
    *,
    prompt_key: str = "prompt",
    reference_key: str = "answer",
    id_key: str | None = "id",
    limit: int | None = None,
) -> list[Prompt]:
    """Read a JSON-lines dataset (whatever its file name)."""
    return load_dataset(
        path,
        domain,
        format="jsonl",
        prompt_key=prompt_key,
        reference_key=reference_key,
        id_key=id_key,
        limit=limit,
    )


def _place(earlier: tuple[Path, int], now: Record, unit: str) -> str:
    file, index = earlier
    return f"{unit} {index}" if file == now.file else f"{file}:{index}"
