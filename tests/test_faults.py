"""Real faults: the tiny run is SIGKILLed in every phase (generation, verification, the
optimizer step, the history store's commit, checkpoint writing, epoch end) and at random
moments, then resumed; the result must equal an uninterrupted run, bit for bit. Each trial
also checks, from the run's metrics and the resume's output, that the kill landed before
the training was over and that the resume continued from a checkpoint (a random kill that
came too late is retried earlier, see ``tests.support.faults.trial``)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from tests.support import faults as harness

pytestmark = pytest.mark.skipif(
    not (harness.MODEL / "config.json").exists(), reason="tiny model not built"
)

# The slow tier kills one lineage several times (tests.support.faults.chain): the first kill
# counts occurrences in a fresh process, each later one in the resume it kills. 12 steps.
PHASE_CHAINS = [
    ["step_start:4", "generate:2", "verify:2", "history_append:2", "update:2"],
    ["epoch_end:1", "history_commit:2", "history_committed:2", "step_end:2"],
    ["checkpoint_write:3", "checkpoint_publish:2", "checkpoint_latest:2", "checkpoint_prune:2"],
]
RANDOM_CHAINS = [["kill", "kill", "int"], ["kill", "kill", "term"], ["kill", "kill", "kill"]]
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


def test_the_slow_tier_kills_at_every_fault_point_there_is():
    """A fault point added to the kernel must join a lineage above, or nothing kills there."""
    points = {
        m
        for f in (harness.ROOT / "srpo").rglob("*.py")
        for m in re.findall(r'fault_point\("(\w+)"\)', f.read_text())
    }
    killed = [k.split(":")[0] for c in PHASE_CHAINS for k in c]
    assert len(points) >= 13 and sorted(killed) == sorted(points)


def _ids(chains: list[list]) -> list[str]:
    return ["+".join(k if isinstance(k, str) else k[-1] for k in c) for c in chains]


@pytest.mark.slow
@pytest.mark.parametrize("kills", PHASE_CHAINS, ids=_ids(PHASE_CHAINS))
def test_slow_kill_at_every_phase(workdir, full, kills):
    """SIGKILL at each of the kernel's 13 fault points (the fast tier kills at 3), in three
    lineages: each later kill hits a resumed process, and each resume must continue exactly
    from the newest checkpoint. Proves that no phase, checkpoint publishing and history
    commits included, has a window in which dying loses or duplicates anything."""
    assert len(harness.chain(workdir, full, kills, name="s-" + _ids([kills])[0])) == len(kills)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(len(RANDOM_CHAINS)))
def test_slow_kill_at_random_moments(workdir, full, seed):
    """SIGKILL (and SIGINT/SIGTERM: a graceful stop) at random moments within a step, three
    times per lineage: kills that no named fault point aims at (mid-write of a file, inside
    a library call), and a signal's checkpoint followed by a SIGKILL of the resumed run. The
    fast tier has one random kill and SIGINT; this covers SIGTERM and repeated kills."""
    rng = random.Random(1000 + seed)
    kills = [(rng.uniform(0.0, 0.45), rng.random(), how) for how in RANDOM_CHAINS[seed]]
    done = harness.chain(workdir, full, kills, name=f"s-random-{seed}")
    assert [d["exit"] for d in done] == [harness.EXIT[h] for h in RANDOM_CHAINS[seed]]
