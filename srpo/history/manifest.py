"""A shard's files: their names, and the manifest that lists its live segments.

The manifest is replaced atomically (tmp file, fsync, rename, fsync dir); see ``FORMAT.md``
("Files", "Manifest").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from srpo.durable import fsync_path
from srpo.history.errors import HistoryCorruptError
from srpo.history.frames import crc32
from srpo.history.schema import FORMAT_VERSION

# --------------------------------------------------------------------------- file names


def manifest_path(root: Path, shard: int) -> Path:
    return root / f"shard-{shard:05d}.manifest.json"


def segment_path(root: Path, shard: int, seg_id: int) -> Path:
    return root / f"shard-{shard:05d}-{seg_id:08d}.seg"


def lock_path(root: Path, shard: int) -> Path:
    return root / f"shard-{shard:05d}.lock"


def segment_files(root: Path, shard: int) -> dict[int, Path]:
    """Segment files of one shard present on disk, by id."""
    out = {}
    for p in root.glob(f"shard-{shard:05d}-*.seg"):
        try:
            out[int(p.stem.rsplit("-", 1)[1])] = p
        except ValueError:
            continue
    return out


def list_shards(root: Path) -> list[int]:
    shards = []
    for p in root.glob("shard-*.manifest.json"):
        try:
            shards.append(int(p.name.split("-")[1].split(".")[0]))
        except (IndexError, ValueError):
            continue
    return sorted(shards)


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class SegmentEntry:
    """A live segment as the manifest lists it.

    ``state``: ``active`` (the last; visible up to its last commit frame), ``sealed``
    (complete, footer at ``length``), ``cut`` (every block before ``length`` is visible).
    """

    seg_id: int
    state: str
    length: int | None = None


@dataclass(frozen=True)
class Manifest:
    shard: int
    store_tokens: bool
    generation: int
    segments: tuple[SegmentEntry, ...]


def manifest_bytes(m: Manifest) -> bytes:
    body = {
        "format": "srpo-history",
        "version": FORMAT_VERSION,
        "shard": m.shard,
        "store_tokens": m.store_tokens,
        "generation": m.generation,
        "segments": [
            {"id": s.seg_id, "state": s.state, **({"length": s.length} if s.length else {})}
            for s in m.segments
        ],
    }
    raw = json.dumps(body, sort_keys=True, separators=(",", ":"))
    body["crc32"] = crc32(raw.encode())
    return (json.dumps(body, sort_keys=True, indent=1) + "\n").encode()


def parse_manifest(data: bytes) -> Manifest:
    try:
        body = json.loads(data)
        c = body.pop("crc32")
        raw = json.dumps(body, sort_keys=True, separators=(",", ":"))
    except (ValueError, KeyError, TypeError) as e:
        raise HistoryCorruptError(f"unreadable manifest: {e}") from None
    if crc32(raw.encode()) != c:
        raise HistoryCorruptError("manifest checksum mismatch")
    if body.get("format") != "srpo-history" or body.get("version") != FORMAT_VERSION:
        raise HistoryCorruptError(f"unsupported manifest version {body.get('version')!r}")
    segs = tuple(SegmentEntry(s["id"], s["state"], s.get("length")) for s in body["segments"])
    return Manifest(body["shard"], bool(body["store_tokens"]), body["generation"], segs)


def read_manifest(root: Path, shard: int) -> Manifest | None:
    try:
        data = manifest_path(root, shard).read_bytes()
    except FileNotFoundError:
        return None
    return parse_manifest(data)


def write_manifest(root: Path, m: Manifest) -> None:
    """Atomically replace the shard's manifest (tmp file, fsync, rename, fsync dir)."""
    path = manifest_path(root, m.shard)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(manifest_bytes(m))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(root)
