"""One dataset row → one ``Prompt``, the same for every file format.

Every reader (JSON lines, Parquet, ``datasets``) hands plain Python rows to ``row_to_prompt``,
so a row gets the same prompt id whichever format it was stored in: the id is derived from
the domain and the row's id field (or, without one, its prompt), never from the format, the
file or the row's position. The history store and history resampling rely on that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from srpo.errors import DataError
from srpo.types import Prompt

ROLES = ("system", "user", "assistant")
MISSING: Any = object()  # a key that is absent or null (columnar formats store absence as null)


class Record(NamedTuple):
    """A row as read from a file, with where it came from (for one-line errors)."""

    file: Path
    index: int  # 1-based: the line of a JSON-lines file, the row of a Parquet/datasets file
    row: Mapping[str, Any]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.index}"


@dataclass(frozen=True)
class Keys:
    """Where the prompt, the reference and the id are in a row: a key or a dotted path."""

    prompt: str = "prompt"
    reference: str = "answer"
    id: str | None = "id"


def stable_prompt_id(domain: str, key: str) -> int:
    """u64 from blake2b(domain, key): stable across runs, processes and machines."""
    digest = hashlib.blake2b(f"{domain}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def lookup(row: Mapping[str, Any], key: str) -> Any:
    """``row[key]``, or the nested value at a dotted path (``reward_model.ground_truth``);
    ``MISSING`` when absent or null. A key that exists as written wins over the path."""
    value = row.get(key)
    if value is not None or key in row or "." not in key:
        return MISSING if value is None else value
    value = row
    for part in key.split("."):
        if not isinstance(value, Mapping) or value.get(part) is None:
            return MISSING
        value = value[part]
    return value


_PLAIN = (str, int, float, bool, type(None))


def plain(value: Any) -> Any:
    """Python lists, dicts and scalars in place of numpy arrays and scalars (rows that came
    through pandas), so types are checked, and ids hashed, the same way in every format."""
    kind = type(value)
    if kind in _PLAIN:  # the common case first: this runs on every row
        return value
    if kind is list:
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def row_to_prompt(row: Mapping[str, Any], where: str, domain: str, keys: Keys) -> Prompt:
    """The row's ``Prompt``; a bad row is a DataError naming ``where`` and the key."""
    text, messages = _prompt_of(row, where, keys.prompt)
    reference = lookup(row, keys.reference)
    if reference is MISSING:
        hint = _has(row, keys.reference)
        raise DataError(
            f"{where}: record field {keys.reference!r} is missing{f' ({hint})' if hint else ''}"
        )
    key = text if messages is None else json.dumps(messages, sort_keys=True, ensure_ascii=False)
    ident = MISSING if keys.id is None else plain(lookup(row, keys.id))
    if ident is not MISSING:
        if not isinstance(ident, (str, int)) or isinstance(ident, bool):
            raise DataError(
                f"{where}: record field {keys.id!r} must be a string or integer "
                f"(got {type(ident).__name__} {ident!r:.40})"
            )
        key = f"id:{ident}"
    meta = {k: v for k, v in row.items() if k not in (keys.prompt, keys.reference)}
    return Prompt(
        id=stable_prompt_id(domain, key),
        domain=domain,
        text=text,
        reference=plain(reference),
        meta=meta,
        messages=messages,
    )


def _has(row: Mapping[str, Any], key: str) -> str:
    """What the row holds where ``key`` was looked for: a hint for the missing-key error."""
    if key in row:
        return ""
    value: Any = row
    path: list[str] = []
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return f"{'.'.join(path)!r} is {type(value).__name__}, not an object"
        if value.get(part) is None:
            break
        value, path = value[part], [*path, part]
    names = [str(k) for k in value if value[k] is not None][:8]
    owner = f"{'.'.join(path)!r}" if path else "the record"
    return f"{owner} has: {', '.join(names) or 'nothing'}"


def _prompt_of(
    row: Mapping[str, Any], where: str, key: str
) -> tuple[str, tuple[dict[str, str], ...] | None]:
    """(text, messages): a non-empty string, or chat messages ending with a user turn."""
    value = lookup(row, key)
    if isinstance(value, (list, tuple, np.ndarray)):  # numpy: rows that came through pandas
        return _messages_of(list(value), where, key)
    if not isinstance(value, str) or not value.strip():
        got = f"({type(value).__name__} {value!r:.40})"
        if value is MISSING:
            hint = _has(row, key)
            got = f"(missing); {hint}" if hint else "(missing)"
        raise DataError(
            f"{where}: record field {key!r} must be a non-empty string or a list of chat "
            f"messages {got}"
        )
    return value, None


def _messages_of(value: list[Any], where: str, key: str) -> tuple[str, tuple[dict[str, str], ...]]:
    messages = []
    for i, m in enumerate(value):
        at = f"{where}: record field {key!r}[{i}]"
        if isinstance(m, Mapping):  # columnar formats give every message all struct fields
            m = {k: v for k, v in m.items() if v is not None}
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m:
            raise DataError(f"{at} must be an object with 'role' and 'content' only")
        if m["role"] not in ROLES:
            raise DataError(f"{at}: role must be one of {', '.join(ROLES)}, got {m['role']!r}")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise DataError(f"{at}: content must be a non-empty string")
        messages.append({"role": str(m["role"]), "content": str(m["content"])})
    if not messages or messages[-1]["role"] != "user":
        raise DataError(f"{where}: record field {key!r}: the last message must be the user's")
    return messages[-1]["content"], tuple(messages)
