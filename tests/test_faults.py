"""Real faults: the tiny run is SIGKILLed in every phase (generation, verification, the
optimizer step, the history store's commit, checkpoint writing, epoch end) and at random
moments, then resumed; the result must equal an uninterrupted run, bit for bit. Each trial
also checks, from the run's metrics and the resume's output, that the kill landed before
the training was over and that the resume continued from a checkpoint (a random kill that
came too late is retried earlier, see ``tests.support.faults.trial``)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.support import faults as harness

pytestmark = pytest.mark.skipif(
    not (harness.MODEL / "config.json").exists(), reason="tiny model not built"
)

# (fault point, occurrence), chosen so that a checkpoint exists before the kill
PHASES = [
    ("step_start", 4),
    ("generate", 5),
    ("verify", 6),
    ("history_append", 3),
    ("update", 7),
    ("history_commit", 8),
    ("history_committed", 2),
    ("step_end", 9),
    ("epoch_end", 1),
    ("checkpoint_write", 3),
    ("checkpoint_publish", 6),
    ("checkpoint_latest", 7),
    ("checkpoint_prune", 2),
]
# the default suite: 4 steps per epoch, a checkpoint every 2 steps
DEFAULT = [("update", 5), ("checkpoint_publish", 2), ("epoch_end", 1)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def quick(workdir) -> dict:
    return harness.small_config(workdir / "unused", steps_per_epoch=4, **{"checkpoint.every": 2})


@pytest.fixture(scope="module")
def full(workdir) -> dict:
    return harness.small_config(workdir / "unused")


@pytest.mark.parametrize(("point", "n"), DEFAULT, ids=[f"{p}:{n}" for p, n in DEFAULT])
def test_kill_at_phase_then_resume_matches(workdir, quick, point, n):
    info = harness.trial(workdir, quick, fault=f"{point}:{n}", name=f"d-{point}")
    assert info["resumed_from"]


def test_kill_at_random_moment_then_resume_matches(workdir, quick):
    info = harness.trial(workdir, quick, at=random.Random(0).uniform(0.1, 0.85), name="d-random")
    assert info["resumed_step"] <= info["logged_steps"] < 8


@pytest.mark.slow
@pytest.mark.parametrize(("point", "n"), PHASES, ids=[f"{p}:{n}" for p, n in PHASES])
def test_slow_kill_at_every_phase(workdir, full, point, n):
    harness.trial(workdir, full, fault=f"{point}:{n}", name=f"s-{point}-{n}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(8))
def test_slow_kill_at_random_moments(workdir, full, seed):
    rng = random.Random(1000 + seed)
    harness.trial(workdir, full, at=rng.uniform(0.0, 0.9), name=f"s-random-{seed}")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["int", "term"])
def test_slow_signal_at_random_moment(workdir, full, how):
    at = random.Random(how).uniform(0.0, 0.85)
    harness.trial(workdir, full, at=at, how=how, name=f"s-signal-{how}")
