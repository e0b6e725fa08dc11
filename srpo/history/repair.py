"""Bringing a shard back to its committed state after a crash.

The manifest plus the commit frames of the active segment define what is committed;
anything else on disk (a torn tail after the last commit frame, a footer written by a
roll that never reached its manifest, a segment created but never listed, the tail of a
segment that ``truncate_after`` cut) is garbage from an interrupted operation. Removing it
is idempotent, so a crash during repair is repaired by the next open.
"""

from __future__ import annotations

import os
from pathlib import Path

from srpo.durable import fsync_path
from srpo.history.errors import HistoryCorruptError
from srpo.history.manifest import (
    Manifest,
    manifest_path,
    segment_files,
    segment_path,
)
from srpo.history.segment import SegmentView


def repair_shard(root: Path, m: Manifest) -> SegmentView:
    """Drop uncommitted bytes and orphan files of one shard; returns the active segment.

    Must only run under the shard's writer lock.
    """
    listed = {s.seg_id: s for s in m.segments}
    changed = False
    for seg_id, path in segment_files(root, m.shard).items():
        if seg_id not in listed:
            path.unlink(missing_ok=True)  # created by a roll/truncate that never committed
            changed = True
    tmp = manifest_path(root, m.shard).with_suffix(".tmp")
    if tmp.exists():
        tmp.unlink()
        changed = True
    for s in m.segments[:-1]:
        path = segment_path(root, m.shard, s.seg_id)
        if s.length is not None and path.exists() and path.stat().st_size > s.length:
            os.truncate(path, s.length)  # cut by truncate_after
            changed = True
    active = m.segments[-1]
    if active.state != "active":
        raise HistoryCorruptError(f"shard {m.shard}: last segment is {active.state}, not active")
    view = SegmentView(root, m.shard, active)
    if view.fd < 0 or view.last_commit is None:
        msg = "; ".join(str(p) for p in view.problems) or "no commit"
        view.close()
        raise HistoryCorruptError(f"shard {m.shard}: active segment unusable: {msg}")
    if view.tail_bytes:
        fd = os.open(view.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, view.visible_end)
            os.fsync(fd)
        finally:
            os.close(fd)
    if changed:
        fsync_path(root)
    return view
