"""Prompt datasets: JSON-lines files → ``Prompt`` rows with stable u64 ids.

The id of a row is derived from its domain and its ``id`` field (or, without one, its
prompt text), so the same dataset row gets the same id in every run: the history store and
history resampling rely on that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from srpo.errors import DataError
from srpo.types import Prompt


def stable_prompt_id(domain: str, key: str) -> int:
    """u64 from blake2b(domain, key): stable across runs, processes and machines."""
    digest = hashlib.blake2b(f"{domain}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def load_jsonl(
    path: Path,
    domain: str,
    *,
    prompt_key: str = "prompt",
    reference_key: str = "answer",
    id_key: str | None = "id",
    limit: int | None = None,
) -> list[Prompt]:
    """Read a JSONL dataset; every bad record is a DataError naming file, line and field."""
    if not path.exists():
        raise DataError(f"{path}: dataset file not found (domain {domain!r})")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .jsonl file (domain {domain!r})")
    prompts: list[Prompt] = []
    seen: dict[int, int] = {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: record is not valid UTF-8 (byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: record is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: record must be a JSON object, got {type(row).__name__}")
            prompts.append(_to_prompt(row, where, domain, prompt_key, reference_key, id_key))
            pid = prompts[-1].id
            if pid in seen:
                raise DataError(f"{where}: duplicate prompt id (same as line {seen[pid]})")
            seen[pid] = lineno
            if limit is not None and len(prompts) >= limit:
                break
    if not prompts:
        raise DataError(f"{path}: dataset is empty (domain {domain!r})")
    return prompts


def _to_prompt(
    row: Mapping[str, Any],
    where: str,
    domain: str,
    prompt_key: str,
    reference_key: str,
    id_key: str | None,
) -> Prompt:
    text = row.get(prompt_key)
    if not isinstance(text, str) or not text.strip():
        got = "missing" if prompt_key not in row else f"{type(text).__name__} {text!r:.40}"
        raise DataError(f"{where}: record field {prompt_key!r} must be a non-empty string ({got})")
    if reference_key not in row or row[reference_key] is None:
        raise DataError(f"{where}: record field {reference_key!r} is missing")
    key = text
    if id_key is not None and id_key in row:
        if not isinstance(row[id_key], (str, int)) or isinstance(row[id_key], bool):
            raise DataError(f"{where}: record field {id_key!r} must be a string or integer")
        key = f"id:{row[id_key]}"
    meta = {k: v for k, v in row.items() if k not in (prompt_key, reference_key)}
    return Prompt(
        id=stable_prompt_id(domain, key),
        domain=domain,
        text=text,
        reference=row[reference_key],
        meta=meta,
    )
