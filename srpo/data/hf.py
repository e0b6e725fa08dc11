"""Hugging Face ``datasets`` directories written by ``Dataset.save_to_disk``.

The ``datasets`` library is the optional ``datasets`` extra, imported only when such a
directory is read. Rows are read as Arrow (no feature decoding), like a Parquet file, so a
row gets the same values, and the same prompt id, in both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from srpo.data.arrow import BATCH_ROWS, batch_records, one_line
from srpo.data.rows import Record
from srpo.errors import DataError

STATE = "state.json"  # save_to_disk writes it (and dataset_info.json) for one Dataset
INFO = "dataset_info.json"  # also found beside Parquet files downloaded from the Hub
DICT_MARKER = "dataset_dict.json"  # save_to_disk of a DatasetDict: one subdirectory per split


def has_marker(path: Path, name: str) -> bool:
    return (path / name).is_file()


def refuse_dataset_dict(path: Path) -> None:
    """A DatasetDict holds several splits: ask for the one to train on."""
    if not has_marker(path, DICT_MARKER):
        return
    try:
        splits = json.loads((path / DICT_MARKER).read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
    example = path / (splits[0] if splits else "train")
    raise DataError(
        f"{path}: is a DatasetDict saved with save_to_disk (splits: "
        f"{', '.join(map(str, splits)) or 'none'}); set path to one split, e.g. {example}"
    )


def read_hf(path: Path) -> Iterator[Record]:
    """The records of a ``save_to_disk`` directory, in the dataset's order."""
    if not path.is_dir():
        raise DataError(f"{path}: expected a directory saved with save_to_disk, got a file")
    refuse_dataset_dict(path)
    datasets = _datasets(path)
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # the library raises many types for a missing or broken directory
        raise DataError(
            f"{path}: not a readable datasets directory ({type(e).__name__}: {one_line(e)})"
        ) from None
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"{path}: expected one dataset split, got {type(ds).__name__}")
    batches = ds.with_format("arrow").iter(batch_size=BATCH_ROWS)
    yield from batch_records(path, batches, "datasets")


def _datasets(path: Path) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{path}: reading a datasets directory needs the datasets library: "
            "pip install 'srpo[datasets]'"
        ) from None
    return datasets
