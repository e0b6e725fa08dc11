"""Checkpoint files: atomic publication, the COMPLETE manifest catches damage, the newest
complete checkpoint is found (never a half-written one), keep-K pruning, config diffs, RNG."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from srpo.kernel import checkpoint as ck


class FakePolicy:
    """Stands in for srpo.policy.Policy: writes a small 'HF' directory."""

    def __init__(self, payload: bytes = b"weights") -> None:
        self.payload = payload

    def save_pretrained(self, path: Path) -> None:
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        (path / "model.safetensors").write_bytes(self.payload * 100)


def save(m: ck.CheckpointManager, step: int) -> Path:
    return m.save(step, FakePolicy(f"step{step}".encode()), {"step": step, "x": list(range(5))})


def test_layout_manifest_latest_and_keep(tmp_path):
    m = ck.CheckpointManager(tmp_path, keep=2)
    for s in (1, 2, 3):
        path = save(m, s)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [2, 3]
    assert path == tmp_path / "checkpoints" / "step-000003"
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-000003\n"
    manifest = json.loads((path / "COMPLETE").read_text())
    assert set(manifest["files"]) == {"state.pt", "model/config.json", "model/model.safetensors"}
    assert ck.verify(path) is None
    assert ck.load_state(path)["x"] == [0, 1, 2, 3, 4]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_keep_one_never_deletes_the_newest(tmp_path):
    m = ck.CheckpointManager(tmp_path, keep=1)
    save(m, 1)
    save(m, 2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [2]


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda p: (p / "COMPLETE").unlink(), "no COMPLETE marker"),
        (lambda p: (p / "COMPLETE").write_text("{not json"), "unreadable COMPLETE manifest"),
        (lambda p: (p / "state.pt").unlink(), "state.pt is missing"),
        (lambda p: _flip(p / "model" / "model.safetensors"), "does not match its checksum"),
        (lambda p: _cut(p / "state.pt"), "bytes, the manifest says"),
    ],
)
def test_damaged_newest_is_skipped_for_the_previous_one(tmp_path, damage, why, capsys):
    m = ck.CheckpointManager(tmp_path, keep=3)
    save(m, 1)
    newest = save(m, 2)
    damage(newest)
    assert why in (ck.verify(newest) or "")
    found, skipped = ck.find_checkpoint(tmp_path)
    assert found == tmp_path / "checkpoints" / "step-000001"
    assert skipped and why in skipped[0]
    assert ck.resolve_resume("auto", tmp_path) == found
    assert "skipping checkpoint step-000002" in capsys.readouterr().out
    with pytest.raises(ck.CheckpointError, match="not a usable checkpoint"):
        ck.resolve_resume(str(newest), tmp_path)


def _flip(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x40
    p.write_bytes(bytes(b))


def _cut(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-7])


def test_leftovers_of_a_killed_write_are_ignored_then_cleaned(tmp_path):
    m = ck.CheckpointManager(tmp_path, keep=2)
    save(m, 1)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-000002-999").mkdir()
    (root / ".tmp-step-000002-999" / "state.pt").write_bytes(b"half")
    (root / ".trash-step-000000-999").mkdir()
    (root / ".tmp-latest-999").write_text("step-000002")
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [1]
    assert ck.find_checkpoint(tmp_path)[0] == root / "step-000001"
    save(m, 2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001", "step-000002"]


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ck.CheckpointError, match="no complete checkpoint to resume from"):
        ck.resolve_resume("auto", tmp_path)
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.resolve_resume(str(tmp_path / "nope"), tmp_path)


def test_discard_after_removes_the_future(tmp_path):
    m = ck.CheckpointManager(tmp_path, keep=5)
    for s in (2, 4, 6):
        save(m, s)
    gone = m.discard_after(4)
    assert [p.name for p in gone] == ["step-000006"]
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [2, 4]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-000004\n"


def test_config_diff_names_each_changed_key():
    old = {"run": {"seed": 0, "output_dir": "a"}, "loggers": [{"name": "console"}], "x": [1, 2]}
    new = {"run": {"seed": 1, "output_dir": "b"}, "loggers": [{"name": "jsonl"}, {"name": "c"}]}
    diff = {k: (o, n) for k, o, n in ck.config_diff(old, new)}
    assert diff["run.seed"] == (0, 1)
    assert diff["loggers.0.name"] == ("console", "jsonl")
    assert diff["loggers.1.name"] == ("<absent>", "c")
    assert diff["x"] == ([1, 2], "<absent>")
    with pytest.raises(ck.CheckpointError) as e:
        ck.check_config(old, new, ["loggers"], Path("ck"))
    msg = str(e.value)
    assert "run.seed: 0 → 1" in msg and "x: [1, 2] → '<absent>'" in msg
    assert "loggers" not in msg.split("changed since this checkpoint:")[1].split("(")[0]
    assert "output_dir" not in msg  # where the run lives is not a change
    accepted = ck.check_config(old, new, ["run.seed", "loggers", "x"], Path("ck"))
    assert {k for k, _, _ in accepted} >= {"run.seed", "loggers.0.name", "x"}


def test_rng_state_round_trip():
    state = ck.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    ck.set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
