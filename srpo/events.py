"""Typed events the kernel emits; loggers and other observers receive them in order.

An event is plain data. Observers must not mutate it: they watch training, never steer it.
Part of the plugin contract: loggers import these as ``srpo.api.events``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from srpo.types import RolloutBatch, Scores


@dataclass(frozen=True)
class Event:
    """Base of all events."""

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class RunStart(Event):
    run_dir: Path
    config: Mapping[str, Any]
    total_steps: int | None  # None when the number of steps is not known in advance
    start_step: int = 0


@dataclass(frozen=True)
class EpochStart(Event):
    epoch: int
    stage: int
    dataset_size: int | None


@dataclass(frozen=True)
class StepStart(Event):
    step: int
    epoch: int


@dataclass(frozen=True)
class RolloutsScored(Event):
    step: int
    batch: RolloutBatch
    scores: Scores


@dataclass(frozen=True)
class UpdateDone(Event):
    step: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class StepEnd(Event):
    """All numbers of one step: reward/accuracy, loss stats, timings (``time/*``)."""

    step: int
    epoch: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class Evaluation(Event):
    step: int
    label: str  # "before", "during", "after"
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class EpochEnd(Event):
    epoch: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunEnd(Event):
    step: int
    status: str  # "completed", "interrupted", "failed"
    summary: Mapping[str, float] = field(default_factory=dict)
    error: str = ""  # why a "failed" run failed: logs keep the reason, not only the status
