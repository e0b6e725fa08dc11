"""The contracts every plugin implements. The kernel talks to these roles, never to a plugin.

A plugin is a class registered under an entry-point group (``srpo.samplers``,
``srpo.verifiers``, ``srpo.curricula``, ``srpo.loggers``). It declares its options as a
pydantic model in ``Options`` (validated against the run file before anything runs) and is
constructed as ``cls(options, context)``. Stateful plugins round-trip through
``state_dict()`` / ``load_state_dict()`` so a run can be checkpointed and resumed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict

from srpo.types import Prompt, PromptSummary, RolloutBatch, Score, Scores, StateDict

if TYPE_CHECKING:
    from srpo.kernel.events import Event

#: Bumped when a contract below changes incompatibly; plugins may declare the version they
#: were written for in ``api_version`` and are refused at load time on a mismatch.
PLUGIN_API_VERSION = 1

ROLES = ("sampler", "verifier", "curriculum", "logger")


class NoOptions(BaseModel):
    """Options model of a plugin that takes none: any key given is an error."""

    model_config = ConfigDict(extra="forbid")


class PluginOptions(BaseModel):
    """Base for plugin option models: unknown keys are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class PluginContext:
    """What the kernel hands every plugin at construction."""

    run_dir: Path
    seed: int
    datasets: Mapping[str, Sequence[Prompt]] = field(default_factory=dict)
    tokenizer: Any = None
    policy: Any = None  # srpo.policy.Policy; samplers read its model and tokenizer
    config: Mapping[str, Any] = field(default_factory=dict)  # the resolved run file
    num_workers: int = 1


class Plugin:
    """Common base: options, name, state. Subclasses set ``Options`` to a pydantic model."""

    role: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    api_version: ClassVar[int] = PLUGIN_API_VERSION

    def __init__(self, options: BaseModel, context: PluginContext) -> None:
        self.options = options
        self.context = context

    def state_dict(self) -> StateDict:
        """State needed to resume exactly; empty for stateless plugins."""
        return {}

    def load_state_dict(self, state: StateDict) -> None:
        """Inverse of ``state_dict``."""

    def close(self) -> None:
        """Release processes, files, pools. Called once at run end, also on failure."""


class Sampler(Plugin, ABC):
    """Turns prompts into G rollouts each, with the behaviour policy's log-probs."""

    role = "sampler"

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], n: int, *, greedy: bool = False) -> RolloutBatch:
        """``n`` rollouts per prompt; ``greedy`` is used for evaluation (n is then 1)."""

    def sync(self, policy: Any) -> None:
        """Make the sampler generate with the policy's current weights (after an update)."""


class Verifier(Plugin, ABC):
    """Scores rollouts of one domain. Never raises for a bad response: returns an error Score."""

    role = "verifier"

    @abstractmethod
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[Score]:
        """One Score per (prompt, response) pair; the lists are aligned."""


class HistoryReader(Protocol):
    """What curricula may ask of the history store at an epoch end."""

    def epoch_summary(self, epochs: Sequence[int]) -> PromptSummary: ...


class Curriculum(Plugin, ABC):
    """Decides which prompts come next and what an epoch is.

    The kernel asks for prompts until ``next_prompts`` returns an empty list (epoch end),
    then calls ``end_epoch`` with the history store so the next epoch can be rebuilt.
    """

    role = "curriculum"

    #: Generation rounds a step may use to fill its batch (dynamic sampling refills while
    #: ``accept_groups`` rejects groups). 1 means: take what the first round gives.
    max_generation_rounds: ClassVar[int] = 1

    @property
    def stage(self) -> int:
        """Curriculum stage (0-based); recorded in metrics and history."""
        return 0

    def begin_epoch(self, epoch: int) -> None:
        """Called before the first ``next_prompts`` of each epoch."""

    @abstractmethod
    def next_prompts(self, n: int) -> list[Prompt]:
        """Up to ``n`` prompts for the next step; ``[]`` ends the epoch."""

    def accept_groups(self, batch: RolloutBatch, scores: Scores) -> torch.Tensor | None:
        """Which groups [P] train (dynamic sampling drops zero-variance ones). None: all."""
        return None

    def observe(self, metrics: Mapping[str, float]) -> None:
        """Per-step metrics, for rules such as a plateau-triggered stage switch."""

    def end_epoch(self, epoch: int, history: HistoryReader | None) -> Mapping[str, float]:
        """Rebuild the next epoch (e.g. from history); returns numbers to report."""
        return {}

    def epoch_size(self) -> int | None:
        """Prompts in the current epoch, when known (for progress and ETA)."""
        return None

    def overrides(self) -> Mapping[str, Any]:
        """Run-file sections to override in the current stage, e.g.
        ``{"algorithm": {"clip_high": 0.28}, "sampler": {"temperature": 0.8}}``.
        The kernel applies them whenever ``stage`` changes (and on resume)."""
        return {}


class Logger(Plugin, ABC):
    """Observes events; never changes training."""

    role = "logger"

    @abstractmethod
    def on_event(self, event: Event) -> None:
        """Receive one event (see ``srpo.kernel.events``)."""


ROLE_BASES: dict[str, type[Plugin]] = {
    "sampler": Sampler,
    "verifier": Verifier,
    "curriculum": Curriculum,
    "logger": Logger,
}

ENTRY_POINT_GROUPS: dict[str, str] = {
    "sampler": "srpo.samplers",
    "verifier": "srpo.verifiers",
    "curriculum": "srpo.curricula",
    "logger": "srpo.loggers",
}

__all__ = [
    "ENTRY_POINT_GROUPS",
    "PLUGIN_API_VERSION",
    "ROLES",
    "ROLE_BASES",
    "Curriculum",
    "HistoryReader",
    "Logger",
    "NoOptions",
    "Plugin",
    "PluginContext",
    "PluginOptions",
    "Prompt",
    "RolloutBatch",
    "Sampler",
    "Score",
    "Scores",
    "Verifier",
]
