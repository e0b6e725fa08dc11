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
    text, messages = _prompt_of(row, where, prompt_key)
    if reference_key not in row or row[reference_key] is None:
        raise DataError(f"{where}: record field {reference_key!r} is missing")
    key = text if messages is None else json.dumps(messages, sort_keys=True, ensure_ascii=False)
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
        messages=messages,
    )


ROLES = ("system", "user", "assistant")


def _prompt_of(
    row: Mapping[str, Any], where: str, key: str
) -> tuple[str, tuple[dict[str, str], ...] | None]:
    """(text, messages): a non-empty string, or chat messages ending with a user turn."""
    value = row.get(key)
    if isinstance(value, list):
        return _messages_of(value, where, key)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if key not in row else f"{type(value).__name__} {value!r:.40}"
        raise DataError(
            f"{where}: record field {key!r} must be a non-empty string or a list of chat "
            f"messages ({got})"
        )
    return value, None


def _messages_of(value: list[Any], where: str, key: str) -> tuple[str, tuple[dict[str, str], ...]]:
    messages = []
    for i, m in enumerate(value):
        at = f"{where}: record field {key!r}[{i}]"
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m:
            raise DataError(f"{at} must be an object with 'role' and 'content' only")
        if m["role"] not in ROLES:
            raise DataError(f"{at}: role must be one of {', '.join(ROLES)}, got {m['role']!r}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise DataError(f"{at}: content must be a non-empty string")
        messages.append({"role": m["role"], "content": m["content"]})
    if not messages or messages[-1]["role"] != "user":
        raise DataError(f"{where}: record field {key!r}: the last message must be the user's")
    return messages[-1]["content"], tuple(messages)
