"""Prompt datasets → ``Prompt`` rows with stable u64 ids.

Formats: JSON lines, Parquet (a file or a directory of files) and Hugging Face ``datasets``
directories saved with ``save_to_disk``. The id of a row is derived from its domain and its
id field (or, without one, its prompt), never from the format, so the same dataset row gets
the same id in every run and every format: the history store and history resampling rely on
that. Modules: ``rows`` (row → Prompt), ``jsonl``/``parquet``/``hf`` (readers), ``formats``
(which reader), ``load`` (``load_dataset``: limit, duplicate ids, empty datasets).
"""

from __future__ import annotations

from srpo.data.formats import FORMATS, detect_format
from srpo.data.load import load_dataset, load_jsonl
from srpo.data.rows import ROLES, Keys, Record, lookup, row_to_prompt, stable_prompt_id

__all__ = [
    "FORMATS",
    "ROLES",
    "Keys",
    "Record",
    "detect_format",
    "load_dataset",
    "load_jsonl",
    "lookup",
    "row_to_prompt",
    "stable_prompt_id",
]
