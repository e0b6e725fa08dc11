"""The reader: merges every shard, sees only committed data, streams block by block.

Readers never lock anything; they can run beside the writers (each query first picks up
commits made since the last one). Damaged blocks are reported (``problems``) and skipped,
or raise in ``strict`` mode; the rest of the store stays readable.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from srpo.errors import warn
from srpo.history.errors import (
    BlockCorruptError,
    HistoryCorruptError,
    NotAStoreError,
    Problem,
)
from srpo.history.manifest import Manifest, list_shards, manifest_path, parse_manifest
from srpo.history.schema import BY_NAME, RAW_RECORD_BYTES, RECORD_COLUMNS, TOKEN_COLUMNS
from srpo.history.segment import SegmentView, take_rows
from srpo.history.summary import SummaryAcc, block_summary
from srpo.types import PromptSummary

COUNT_KEYS = ("domain", "stage", "epoch", "step", "flags", "correct", "sample")


def _concat(parts: list[dict[str, np.ndarray]], names: Sequence[str]) -> dict[str, np.ndarray]:
    return {
        k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, BY_NAME[k].dtype)
        for k in names
    }


def _verify_blocks(v: SegmentView, problems: list[Problem]) -> int:
    """Decode every column of every block of ``v``: returns the readable records, adds the
    damaged blocks to ``problems``."""
    visible = 0
    for i in range(len(v.index)):
        try:
            bh = v.header(i)
            for name in bh.columns:
                v.column(bh, name, i)
            visible += bh.n
        except BlockCorruptError as err:
            problems.append(err.problem)
    return visible


def _token_raw_bytes(v: SegmentView) -> int:
    """Uncompressed bytes of the token columns of a segment's readable blocks."""
    total = 0
    for i in range(len(v.index)):
        try:
            bh = v.header(i)
        except BlockCorruptError:
            continue
        total += sum(bh.columns[k][1] for k in TOKEN_COLUMNS if k in bh.columns)
    return total


def _epoch_stats(summ: PromptSummary) -> dict[str, Any]:
    """Records, prompts, pass rate, reward and the pass-rate distribution of one epoch."""
    n, nc = summ.n, summ.n_correct
    hist, _ = np.histogram(nc / np.maximum(n, 1), bins=10, range=(0.0, 1.0))
    return {
        "records": int(n.sum()),
        "prompts": int(n.size),
        "pass_rate": float(nc.sum() / max(1, n.sum())),
        "reward_mean": float((summ.reward_mean * n).sum() / max(1, n.sum())),
        "all_correct": float((nc == n).mean()) if n.size else 0.0,
        "all_wrong": float((nc == 0).mean()) if n.size else 0.0,
        "mixed": float(((nc > 0) & (nc < n)).mean()) if n.size else 0.0,
        "pass_rate_hist": hist.tolist(),
    }


@dataclass
class _Shard:
    key: tuple[int, int, int]
    manifest: Manifest
    views: list[SegmentView]


class HistoryReader:
    """Read-only view of a history store (all shards); see the module docstring.

    It holds a descriptor (and a map) per live segment: ``close()`` it, or use it as a
    context manager (``with HistoryReader(root) as r: ...``).
    """

    def __init__(self, root: str | os.PathLike[str], *, strict: bool = False) -> None:
        self.root = Path(root)
        self.strict = strict
        self._shards: dict[int, _Shard] = {}
        self._problems: dict[tuple[Any, ...], Problem] = {}
        if not self.root.is_dir():
            raise NotAStoreError(f"{self.root}: no such directory")
        try:
            self._refresh()
            if not self._shards and not self._problems:
                raise NotAStoreError(f"{self.root}: not a history store (no shard manifest)")
        except BaseException:
            self.close()
            raise

    # -- bookkeeping -------------------------------------------------------------------

    @property
    def problems(self) -> list[Problem]:
        """Corruption found so far by this reader (scans and decoded blocks)."""
        return list(self._problems.values())

    def _report(self, p: Problem) -> None:
        key = (p.shard, p.segment, p.block, p.offset, p.message)
        if key not in self._problems:
            self._problems[key] = p
            if not self.strict:
                warn(f"history store: {p} (skipped)", stacklevel=3)
        if self.strict:
            raise HistoryCorruptError(str(p))

    def _refresh(self) -> None:
        for shard in list_shards(self.root):
            path = manifest_path(self.root, shard)
            try:
                st = path.stat()
                key = (st.st_mtime_ns, st.st_ino, st.st_size)
                old = self._shards.get(shard)
                if old is not None and old.key == key:
                    if old.views:
                        old.views[-1].refresh()
                        for p in old.views[-1].problems:
                            self._report(p)
                    continue
                m = parse_manifest(path.read_bytes())
            except FileNotFoundError:
                continue
            except HistoryCorruptError as e:
                self._report(Problem(shard, path.name, None, None, str(e)))
                continue
            reuse = {
                (v.entry.seg_id, v.entry.state, v.entry.length): v
                for v in (old.views if old else [])
            }
            views = []
            for e in m.segments:
                v = reuse.pop((e.seg_id, e.state, e.length), None) or SegmentView(
                    self.root, shard, e
                )
                v.refresh()
                views.append(v)
            for v in reuse.values():
                v.close()
            self._shards[shard] = _Shard(key, m, views)
            for v in views:
                for p in v.problems:
                    self._report(p)

    def refresh(self) -> None:
        """Pick up commits made since the last query (queries do this themselves)."""
        self._refresh()

    def _blocks(self, epochs: np.ndarray | None = None) -> Iterator[tuple[SegmentView, int]]:
        """(segment, block) pairs in shard, segment, block order, pruned by epoch range."""
        for shard in sorted(self._shards):
            for v in self._shards[shard].views:
                idx = v.index
                if epochs is None:
                    sel = range(len(idx))
                else:
                    lo = np.searchsorted(epochs, idx["epoch_min"], side="left")
                    hi = np.searchsorted(epochs, idx["epoch_max"], side="right")
                    sel = np.flatnonzero(hi > lo).tolist()
                for i in sel:
                    yield v, i

    # -- queries -----------------------------------------------------------------------

    def epochs(self) -> list[int]:
        """Epochs with at least one committed record."""
        self._refresh()
        found: set[int] = set()
        for v, i in self._blocks():
            row = v.index[i]
            if row["epoch_min"] == row["epoch_max"]:
                found.add(int(row["epoch_min"]))
                continue
            try:
                found.update(np.unique(v.column(v.header(i), "epoch", i)).tolist())
            except BlockCorruptError as e:
                self._report(e.problem)
        return sorted(found)

    def iter_epoch(
        self, epoch: int, columns: Sequence[str] | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """The records of one epoch, one dict of aligned columns per block.

        Default columns: all record columns, plus ``token_count``/``token_ids`` (flattened)
        when the store keeps tokens.
        """
        self._refresh()
        want = np.array([epoch], np.int64)
        for v, i in self._blocks(want):
            names = self._names(v, columns)
            try:
                bh = v.header(i)
                pure = bh.epoch_min == bh.epoch_max
                dec = names if pure or "epoch" in names else (*names, "epoch")
                cols = {n: v.column(bh, n, i) for n in dec}
                if "token_ids" in cols and "token_count" not in cols:
                    cols["token_count"] = v.column(bh, "token_count", i)
            except BlockCorruptError as e:
                self._report(e.problem)
                continue
            if not pure:
                cols = take_rows(cols, cols["epoch"] == epoch)
            yield {n: cols[n] for n in names}

    def _names(self, v: SegmentView, columns: Sequence[str] | None) -> tuple[str, ...]:
        if columns is None:
            return RECORD_COLUMNS + (TOKEN_COLUMNS if v.store_tokens else ())
        bad = [c for c in columns if c not in BY_NAME]
        if bad:
            raise ValueError(f"unknown columns {bad}; known: {list(BY_NAME)}")
        if not v.store_tokens and any(c in TOKEN_COLUMNS for c in columns):
            raise ValueError("this store keeps no tokens")
        return tuple(columns)

    def epoch_summary(self, epochs: Sequence[int]) -> PromptSummary:
        """Per prompt over ``epochs``: rollouts, correct ones, mean reward, last step.

        Streams block by block over run-length runs of prompt ids (a group's rollouts are
        adjacent), so cost is ~linear in records and memory ~linear in prompts.
        """
        self._refresh()
        want = np.unique(np.asarray(list(epochs), dtype=np.int64))
        acc = SummaryAcc()
        for v, i in self._blocks(want):
            try:
                part = block_summary(v, i, want)
            except BlockCorruptError as e:
                self._report(e.problem)
                continue
            if part is not None:
                acc.add(part)
        return acc.result()

    def prompt_history(self, prompt_id: int) -> dict[str, np.ndarray]:
        """Every committed rollout of one prompt, sorted by (epoch, step, sample)."""
        self._refresh()
        pid = np.uint64(int(prompt_id) & (2**64 - 1))
        parts, names = [], RECORD_COLUMNS
        for v, i in self._blocks():
            names = self._names(v, None)
            try:
                bh = v.header(i)
                ids, _ = v.runs(bh, "prompt_id", i)
                if not (ids == pid).any():
                    continue
                cols = v.read_block(i, names)
            except BlockCorruptError as e:
                self._report(e.problem)
                continue
            parts.append(take_rows(cols, cols["prompt_id"] == pid))
        out = _concat(parts, names)
        order = np.lexsort((out["sample"], out["step"], out["epoch"]))
        return take_rows(out, order)

    def counts(self, by: str = "domain") -> dict[int, int]:
        """Committed records per value of ``by`` (domain, stage, epoch, step, flags, ...)."""
        if by not in COUNT_KEYS:
            raise ValueError(f"counts(by={by!r}): choose one of {COUNT_KEYS}")
        self._refresh()
        out: dict[int, int] = {}
        for v, i in self._blocks():
            row = v.index[i]
            try:
                if by == "epoch" and row["epoch_min"] == row["epoch_max"]:
                    vals, cnts = [int(row["epoch_min"])], [int(row["n"])]
                else:
                    bh = v.header(i)
                    c = v.const(bh, by, i)
                    if c is not None:
                        vals, cnts = [int(c)], [bh.n]
                    else:
                        u, k = np.unique(v.column(bh, by, i), return_counts=True)
                        vals, cnts = u.tolist(), k.tolist()
            except BlockCorruptError as e:
                self._report(e.problem)
                continue
            for a, b in zip(vals, cnts, strict=True):
                out[int(a)] = out.get(int(a), 0) + int(b)
        return dict(sorted(out.items()))

    def committed_steps(self) -> dict[int, int | None]:
        """Last committed step per shard."""
        self._refresh()
        out = {}
        for shard, s in sorted(self._shards.items()):
            c = s.views[-1].last_commit if s.views else None
            out[shard] = None if c is None else c.step
        return out

    def stats(self) -> dict[str, Any]:
        """Size, compression and per-epoch pass-rate distribution of the store."""
        self._refresh()
        sizes = self._sizes()
        per_epoch: dict[int, dict[str, Any]] = {}
        prompts = np.zeros(0, np.uint64)
        for e in self.epochs():
            summ = self.epoch_summary([e])
            prompts = np.union1d(prompts, summ.prompt_id)
            per_epoch[e] = _epoch_stats(summ)
        records, disk, raw = sizes["records"], sizes["bytes_on_disk"], sizes["raw_bytes"]
        return {
            "records": records,
            "epochs": sorted(per_epoch),
            "prompts": int(prompts.size),
            "shards": len(self._shards),
            "segments": sizes["segments"],
            "blocks": sizes["blocks"],
            "bytes_on_disk": disk,
            "raw_bytes": raw,
            "compression_ratio": raw / disk if disk else 0.0,
            "bytes_per_record": disk / records if records else 0.0,
            "committed_steps": self.committed_steps(),
            "per_epoch": per_epoch,
            "problems": len(self._problems),
        }

    def _sizes(self) -> dict[str, int]:
        """Records, segments, blocks, bytes on disk and raw (uncompressed) bytes."""
        records = blocks = segments = disk = token_raw = 0
        for shard, s in self._shards.items():
            disk += manifest_path(self.root, shard).stat().st_size
            for v in s.views:
                segments += 1
                blocks += len(v.index)
                records += int(v.index["n"].sum(dtype=np.int64))
                if v.fd >= 0:
                    disk += os.fstat(v.fd).st_size
                if v.store_tokens:
                    token_raw += _token_raw_bytes(v)
        return {
            "records": records,
            "segments": segments,
            "blocks": blocks,
            "bytes_on_disk": disk,
            "raw_bytes": records * RAW_RECORD_BYTES + token_raw,
        }

    def verify(self) -> list[Problem]:
        """Check every checksum and structure from disk (fresh scan); [] when intact."""
        problems: list[Problem] = []
        for shard in list_shards(self.root):
            path = manifest_path(self.root, shard)
            try:
                m = parse_manifest(path.read_bytes())
            except (HistoryCorruptError, OSError) as e:
                problems.append(Problem(shard, path.name, None, None, str(e)))
                continue
            visible, last = 0, None
            for e in m.segments:
                with contextlib.closing(SegmentView(self.root, shard, e)) as v:
                    problems += v.problems
                    visible += _verify_blocks(v, problems)
                    if e.state == "active":
                        last = v.last_commit
            if last is not None and last.records != visible:
                msg = f"{visible} readable records, {last.records} committed"
                problems.append(Problem(shard, path.name, None, None, msg))
        return problems

    # -- closing -----------------------------------------------------------------------

    def close(self) -> None:
        """Release every segment's descriptor and map (idempotent); queries after it
        reopen what they need."""
        for s in self._shards.values():
            for v in s.views:
                v.close()
        self._shards.clear()

    def __enter__(self) -> HistoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; owners call close()
        with contextlib.suppress(Exception):
            self.close()
