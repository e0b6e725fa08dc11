"""Atomic, verifiable checkpoints of a whole run, and finding the one to resume from.

Layout under the run directory::

    checkpoints/
      step-000012/
        model/          HF-format weights + tokenizer (``from_pretrained`` loads it)
        state.pt        optimizer, LR scheduler, RNG states, every role's state, counters,
                        the history store's committed position, the resolved run file
        COMPLETE        JSON manifest: size and sha256 of every other file
      latest            "step-000012" (a hint; written last, via tmp + rename)

A checkpoint is written into ``.tmp-*`` beside its final name, every file and directory is
fsynced, ``COMPLETE`` is written last inside it, and one ``rename`` publishes it. So a
process killed at any instant leaves either no ``step-*`` directory or a complete one: a
reader never has to guess whether a checkpoint was half written. ``find_checkpoint`` still
verifies the manifest (bit rot, a copy cut short by hand) and falls back to the next newest.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srpo.distributed import Dist, say
from srpo.durable import fsync_path
from srpo.errors import SrpoError
from srpo.kernel.signals import fault_point

FORMAT = 1
CKPT_DIR = "checkpoints"
COMPLETE = "COMPLETE"
STATE = "state.pt"
MODEL = "model"
SHARDED = "sharded"  # data-parallel runs: torch.distributed.checkpoint of weights + optimizer
LATEST = "latest"
PREFIX = "step-"
LOCATION_KEYS = frozenset({"run.output_dir"})


class CheckpointError(SrpoError):
    """No usable checkpoint, or one that does not fit this run (exit code 2)."""


# -- RNG ------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every global RNG the run draws from (sampling uses torch's; plugins may use the rest)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- durable file operations ----------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a crash leaves the old or the new content, never a mix."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def step_of(path: Path) -> int | None:
    """The step a ``step-NNNNNN`` directory name stands for (None for anything else)."""
    name = path.name
    if not name.startswith(PREFIX) or not name[len(PREFIX) :].isdigit():
        return None
    return int(name[len(PREFIX) :])


def verify(path: Path) -> str | None:
    """Why the checkpoint at ``path`` is not complete and intact, or None if it is."""
    marker = path / COMPLETE
    if not marker.is_file():
        return "no COMPLETE marker (the write never finished)"
    try:
        manifest = json.loads(marker.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        return f"unreadable COMPLETE manifest ({e})"
    if manifest.get("format") != FORMAT:
        return f"checkpoint format {manifest.get('format')!r}, this srpo reads {FORMAT}"
    for rel, want in files.items():
        p = path / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != want["size"]:
            return f"{rel} has {p.stat().st_size} bytes, the manifest says {want['size']}"
        if _sha256(p) != want["sha256"]:
            return f"{rel} does not match its checksum"
    if STATE not in files:
        return f"{STATE} is not in the manifest"
    return None


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every published checkpoint directory, oldest first (unverified)."""
    root = run_dir / CKPT_DIR
    if not root.is_dir():
        return []
    found = [(step_of(p), p) for p in root.iterdir() if p.is_dir()]
    return sorted((s, p) for s, p in found if s is not None)


def find_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest complete, intact checkpoint of a run, and why newer ones were skipped."""
    skipped = []
    for _, path in reversed(list_checkpoints(run_dir)):
        why = verify(path)
        if why is None:
            return path, skipped
        skipped.append(f"{path.name}: {why}")
    return None, skipped


def resolve_resume(target: str, run_dir: Path) -> Path:
    """``--resume`` (auto) or ``--resume PATH`` (a checkpoint or a run directory) → checkpoint."""
    if target == "auto":
        where = run_dir
    else:
        where = Path(target)
        if not where.exists():
            raise CheckpointError(f"{where}: --resume path does not exist")
        if step_of(where) is not None and where.is_dir():
            why = verify(where)
            if why is not None:
                raise CheckpointError(f"{where}: not a usable checkpoint: {why}")
            if where.resolve().parent.parent != run_dir.resolve():
                raise CheckpointError(
                    f"{where}: checkpoint of another run directory than run.output_dir "
                    f"({run_dir}); set --set run.output_dir=... to its run"
                )
            return where
        if where.resolve() != run_dir.resolve():
            raise CheckpointError(
                f"{where}: --resume PATH must be a checkpoint (…/checkpoints/step-N) or "
                f"run.output_dir ({run_dir})"
            )
    path, skipped = find_checkpoint(where)
    if path is None:
        detail = f" (skipped {'; '.join(skipped)})" if skipped else ""
        raise CheckpointError(
            f"{where}: no complete checkpoint to resume from{detail}; set checkpoint.every "
            "to save periodically, or pass --overwrite to start the run again"
        )
    for s in skipped:
        say(f"srpo: skipping checkpoint {s}")
    return path


def load_state(path: Path) -> dict[str, Any]:
    """``state.pt`` of a verified checkpoint (pickled by srpo itself in the run directory)."""
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=False)
    except Exception as e:  # checksummed, so this is a foreign or incompatible file
        raise CheckpointError(f"{path / STATE}: cannot read: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path / STATE}: not an srpo checkpoint state (format {FORMAT})")
    return state


def load_weights(model: Any, model_dir: Path) -> None:
    """Load HF-format safetensors into the *existing* model in place.

    In place, not ``from_pretrained``: the optimizer holds references to these parameters,
    and building a new model would also draw from the RNG we restore afterwards.
    """
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir}: no *.safetensors weights in the checkpoint")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(str(f)))
    result = model.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(
            f"{model_dir}: weights do not fit the model (unexpected {result.unexpected_keys[:3]})"
        )
    if result.missing_keys:  # only tied weights (e.g. lm_head = embed_tokens) may be absent
        sd = model.state_dict()
        loaded = {sd[k].data_ptr() for k in weights}
        untied = [k for k in result.missing_keys if sd[k].data_ptr() not in loaded]
        if untied:
            raise CheckpointError(f"{model_dir}: weights missing for {untied[:3]}")


# -- config drift ---------------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    if isinstance(value, list) and value and any(isinstance(v, (Mapping, list)) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}.{i}" if prefix else str(i)))
        out[f"{prefix}.#" if prefix else "#"] = len(value)
        return out
    return {prefix: value}


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key.path, old, new) for every leaf that differs; a missing side is ``<absent>``."""
    a, b = _flatten(old), _flatten(new)
    absent = "<absent>"
    return [
        (k, a.get(k, absent), b.get(k, absent))
        for k in sorted(set(a) | set(b))
        if a.get(k, absent) != b.get(k, absent)
    ]


def check_config(
    old: Mapping[str, Any], new: Mapping[str, Any], allowed: Sequence[str], where: Path
) -> list[tuple[str, Any, Any]]:
    """Refuse to resume under a changed run file unless each changed key is allowed.

    A key is allowed when it, or a section above it, is named by ``--allow-config-change``.
    Where the run lives (``run.output_dir``) is not a change: a run directory may be moved.
    Returns the accepted changes (to report them).
    """
    diff = [d for d in config_diff(old, new) if d[0] not in LOCATION_KEYS]

    def ok(key: str) -> bool:
        return any(key == a or key.startswith(a.rstrip(".") + ".") for a in allowed)

    refused = [d for d in diff if not ok(d[0])]
    if refused:
        shown = "; ".join(f"{k}: {o!r} → {n!r}" for k, o, n in refused)
        raise CheckpointError(
            f"{where}: the run file changed since this checkpoint: {shown} (resume with the "
            "same run file, or pass --allow-config-change KEY.PATH for each changed key)"
        )
    return diff


# -- writing --------------------------------------------------------------------------------


def _quietly(fn: Any, *args: Any) -> None:
    """Run ``fn`` without transformers' progress bars (one per checkpoint is noise)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        fn(*args)
        return
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        fn(*args)
    finally:
        if was:
            hf_logging.enable_progress_bar()


class CheckpointManager:
    """Writes checkpoints of one run directory atomically and keeps the newest ``keep``."""

    def __init__(self, run_dir: Path, keep: int = 2, dist: Dist | None = None) -> None:
        self.root = run_dir / CKPT_DIR
        self.keep = max(1, keep)
        self.last_step: int | None = None  # newest step written by (or resumed into) this run
        self.dist = dist if dist is not None else Dist.local()

    def save(self, step: int, policy: Any, state: dict[str, Any]) -> Path:
        """Publish a checkpoint of ``step``: HF weights from ``policy`` + ``state`` (pickled).

        Data-parallel (every rank calls it): each rank writes its shard of the weights and
        optimizer state with ``torch.distributed.checkpoint`` into ``sharded/``, rank 0
        the HF export of the full weights, ``state.pt`` and the manifest, and publishes
        the directory once every rank's shard is on disk (the run directory must be on a
        file system all ranks share)."""
        d = self.dist
        final = self.root / f"{PREFIX}{step:06d}"
        # one name on every rank (a pid would differ); stale ones are cleaned on rank 0
        tmp = self.root / (f".tmp-{final.name}" if d.active else f".tmp-{final.name}-{os.getpid()}")
        if d.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            self._clean_temporaries()
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        d.barrier()
        if d.active:
            policy.save_sharded(tmp / SHARDED)
        _quietly(policy.save_pretrained, tmp / MODEL)
        fault_point("checkpoint_write")
        d.barrier()  # every shard written before rank 0 checksums and publishes
        if d.is_main:
            self._publish(step, tmp, final, state)
        d.barrier()
        self.last_step = step
        return final

    def _publish(self, step: int, tmp: Path, final: Path, state: dict[str, Any]) -> None:
        torch.save({"format": FORMAT, **state}, tmp / STATE)
        files = {}
        for p in _files(tmp):
            fsync_path(p)
            files[p.relative_to(tmp).as_posix()] = {"size": p.stat().st_size, "sha256": _sha256(p)}
        for d in sorted({p.parent for p in _files(tmp)}, key=lambda p: len(p.parts), reverse=True):
            fsync_path(d)
        manifest = {"format": FORMAT, "step": step, "files": files}
        (tmp / COMPLETE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        fsync_path(tmp / COMPLETE)
        fsync_path(tmp)
        fault_point("checkpoint_publish")
        if final.exists():  # an older checkpoint of the same step (a resumed run re-saving it)
            self._discard(final)
        os.rename(tmp, final)
        fsync_path(self.root)
        fault_point("checkpoint_latest")
        write_text_atomic(self.root / LATEST, final.name + "\n")
        self.prune()

    def prune(self) -> None:
        """Keep the newest ``keep`` complete checkpoints; never the newest complete one."""
        ckpts = list_checkpoints(self.root.parent)
        complete = [(s, p) for s, p in ckpts if (p / COMPLETE).is_file()]
        for _, path in complete[: -self.keep]:
            fault_point("checkpoint_prune")
            self._discard(path)

    def discard_after(self, step: int) -> list[Path]:
        """Delete checkpoints newer than ``step``: after resuming from an older one they
        describe a future the history store no longer holds."""
        gone = []
        for s, path in list_checkpoints(self.root.parent):
            if s > step:
                self._discard(path)
                gone.append(path)
        if gone:
            write_text_atomic(self.root / LATEST, f"{PREFIX}{step:06d}\n")
        return gone

    def _discard(self, path: Path) -> None:
        # rename first: a crash mid-delete must not leave something that looks like a step dir
        trash = self.root / f".trash-{path.name}-{os.getpid()}"
        os.rename(path, trash)
        fsync_path(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def _clean_temporaries(self) -> None:
        for p in self.root.iterdir():
            if p.name.startswith((".tmp-", ".trash-")):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
