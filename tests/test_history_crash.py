"""kill -9 tests of the history store, for real: a child process appends and commits in a
loop and is SIGKILLed at random moments (or at a deterministic syscall); the store is then
reopened and checked record by record against what the child had committed."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from srpo.history import HistoryReader
from tests.support.history_crash import step_records as _step_records

REPO = Path(__file__).resolve().parents[1]
CHILD = "tests.support.history_crash"  # run as a module from the repository root

SEED = 7
_CACHE: dict[int, dict] = {}


def step_records(seed: int, step: int) -> dict:
    assert seed == SEED
    if step not in _CACHE:
        _CACHE[step] = _step_records(seed, step)
    return _CACHE[step]


def expected(upto: int | None) -> dict[str, np.ndarray]:
    steps = [] if upto is None else [step_records(SEED, s) for s in range(upto + 1)]
    out = {}
    for k in steps[0] if steps else []:
        if k == "tokens":
            toks = [t for s in steps for t in s["tokens"]]
            out["token_count"] = np.array([t.size for t in toks], np.uint32)
            out["token_ids"] = np.concatenate(toks) if toks else np.zeros(0, np.int32)
        else:
            out[k] = np.concatenate([s[k] for s in steps])
    return out


def check_store(root: Path) -> int | None:
    """Assert the store holds exactly the records of steps 0..committed; returns committed."""
    if not (root / "shard-00000.manifest.json").exists():
        return None  # killed before the store was first created
    with HistoryReader(root, strict=True) as r:
        committed = r.committed_steps()[0]
        got: dict[str, list[np.ndarray]] = {}
        for e in r.epochs():
            for blk in r.iter_epoch(e):
                for k, v in blk.items():
                    got.setdefault(k, []).append(v)
        want = expected(committed)
        if committed is None:
            assert not got
            return None
        for k, v in want.items():
            g = np.concatenate(got[k])
            assert g.shape == v.shape, (k, g.shape, v.shape, committed)
            assert np.array_equal(g, v), (k, committed)
        assert r.verify() == []
    return committed


class Child:
    def __init__(self, root: Path, *args: str) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", CHILD, str(root), "--seed", str(SEED), *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.strip())

    def kill(self) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait()
        self.t.join()

    def last_committed(self) -> int | None:
        steps = [int(x) for x in self.lines if x.isdigit()]
        return steps[-1] if steps else None

    def opened(self) -> int | str | None:
        for x in self.lines:
            if x.startswith("open "):
                v = x.split()[1]
                return None if v == "None" else int(v)
        return "not-open"


def run_trials(root: Path, trials: int, rng: random.Random) -> int:
    floor: int | None = None  # lowest committed step the store may now hold
    kinds = 0
    now = check_store(root)
    for t in range(trials):
        before = now
        assert floor is None or (before is not None and before >= floor), (t, before, floor)
        args = [
            "--block-records",
            str(rng.choice([16, 64, 1000])),
            "--segment-bytes",
            str(rng.choice([4 << 10, 32 << 10, 1 << 20])),
        ]
        rewind = rng.random() < 0.25 and before is not None
        if rewind:
            k = rng.randint(0, 4)
            args += ["--rewind", str(k)]
            floor = max(0, before - k) if k else before
        else:
            floor = before
        failpoint = rng.random() < 0.4
        if failpoint:
            kinds += 1
            args += ["--crash-after", str(rng.randint(1, 120))]
            if rng.random() < 0.5:
                args.append("--torn")
        c = Child(root, *args)
        if failpoint:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.p.wait(timeout=20)
        else:
            deadline = time.monotonic() + rng.uniform(0.05, 0.45)
            while time.monotonic() < deadline and c.p.poll() is None:
                time.sleep(0.005)
        c.kill()
        assert c.p.returncode == -signal.SIGKILL, c.p.stderr.read() if c.p.stderr else ""
        last = c.last_committed()
        if last is not None:
            floor = last
        now = check_store(root)
        assert floor is None or (now is not None and now >= floor), (t, now, floor, c.lines[-3:])
    return kinds


def test_kill9_random_moments_lose_nothing_committed(tmp_path: Path) -> None:
    rng = random.Random(1234)
    root = tmp_path / "history"
    kinds = run_trials(root, 24, rng)
    assert kinds >= 3
    # appending resumes correctly after the last kill
    c = Child(root, "--steps", "5")
    c.p.wait(timeout=60)
    c.kill()
    assert c.lines[-1] == "done"
    assert check_store(root) == c.last_committed()


def test_reader_during_writes_sees_whole_steps(tmp_path: Path) -> None:
    root = tmp_path / "history"
    c = Child(root, "--segment-bytes", str(8 << 10), "--block-records", "32")
    try:
        deadline = time.monotonic() + 20
        while c.opened() == "not-open" and time.monotonic() < deadline:
            time.sleep(0.01)
        seen = []
        with HistoryReader(root, strict=True) as r:
            for _ in range(15):
                time.sleep(0.03)
                steps = [b["step"] for e in r.epochs() for b in r.iter_epoch(e, ["step"])]
                steps = np.concatenate(steps) if steps else np.zeros(0, np.uint32)
                seen.append(steps)
        for steps in seen:  # nothing half-visible: every visible step is complete
            counts = np.bincount(steps)
            want = [len(step_records(SEED, s)["step"]) for s in range(counts.size)]
            assert counts.tolist() == want
        assert seen[-1].size > 0
    finally:
        c.kill()
    check_store(root)


@pytest.mark.slow
def test_kill9_many_trials(tmp_path: Path) -> None:
    """100 kill -9 trials in a row on one store (the fast tier runs 24): random block and
    segment sizes, rewinds, torn writes at syscall failpoints. What it adds is breadth: the
    rare interleavings (a kill during a segment roll-over right after a rewind, a torn footer
    of a tiny block) that 24 draws rarely reach; each trial checks every committed record."""
    run_trials(tmp_path / "history", 100, random.Random(99))


@pytest.mark.slow
def test_kill9_at_every_syscall_of_a_rewind(tmp_path: Path) -> None:
    """Deterministic failpoints across open + truncate_after + the first commits: a kill at
    each of the first 59 syscalls of a rewinding open (the path ``--resume`` takes), torn
    writes included. No fast test walks every syscall of a rewind; random trials hit few."""
    root = tmp_path / "history"
    c = Child(root, "--steps", "60", "--segment-bytes", str(4 << 10))
    c.p.wait(timeout=60)
    c.kill()
    for k in range(1, 60):
        before = check_store(root)
        c = Child(
            root,
            "--rewind",
            "3",
            "--crash-after",
            str(k),
            "--torn",
            "--segment-bytes",
            str(4 << 10),
        )
        c.p.wait(timeout=60)
        c.kill()
        now = check_store(root)
        assert now is not None and before is not None and now >= before - 3
