"""The contracts every plugin implements. The kernel talks to these roles, never to a plugin.

A plugin is a class registered under an entry-point group (``srpo.samplers``,
``srpo.verifiers``, ``srpo.curricula``, ``srpo.loggers``). It declares its options as a
pydantic model in ``Options`` (validated against the run file before anything runs) and is
constructed as ``cls(options, context)``. Stateful plugins round-trip through
``state_dict()`` / ``load_state_dict()`` so a run can be checkpointed and resumed.

This module is the whole plugin contract: everything a plugin may use — the role bases,
the data types, the events, the errors and the warnings channel, ``PolicyHandle`` (what a
sampler may use of the policy), ``left_pad``, ``group_has_signal`` and
``render_report_plots`` (for trackers) — is importable from here. Nothing in ``srpo.kernel`` is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from srpo import events
from srpo.algo.groups import group_has_signal
from srpo.errors import OptionError, PluginError, SrpoError, SrpoWarning, warn
from srpo.events import Event
from srpo.seeding import splitmix64
from srpo.types import (
    Prompt,
    PromptSummary,
    RolloutBatch,
    Score,
    Scores,
    StateDict,
    left_pad,
)

#: Bumped when a contract below changes incompatibly; plugins may declare the version they
#: were written for in ``api_version`` and are refused at load time on a mismatch.
PLUGIN_API_VERSION = 1


class PluginOptions(BaseModel):
    """Base for plugin option models: unknown keys are errors, so typos never pass silently.
    A plugin that takes no options keeps this model as is (any key given is an error)."""

    model_config = ConfigDict(extra="forbid")


class PolicyHandle(Protocol):
    """What a sampler may use of the policy: its model, tokenizer and device, and the one way
    prompts become token ids (the chat template), so sampler and trainer agree on them."""

    @property
    def model(self) -> Any: ...  # a transformers causal LM (shares weights with the trainer)

    @property
    def tokenizer(self) -> Any: ...  # its transformers tokenizer (pad token always set)

    @property
    def device(self) -> torch.device: ...

    @property
    def model_dir(self) -> Path: ...  # the HF directory the policy was loaded from

    @property
    def dtype(self) -> str: ...  # the training dtype: "float32" or "bfloat16"

    @property
    def generation_model(self) -> Any:
        """A full model with the current weights to generate with: ``model`` itself in one
        process; in a data-parallel (FSDP-sharded) run a replica the policy refreshes after
        every update, kept only for samplers that set ``generates_with_policy_model``."""
        ...

    def full_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) of every weight, for engines with their own copy; in a
        sharded run each is gathered as it is read (every rank must read to the end)."""
        ...

    def encode_prompt(self, prompt: str | Sequence[Mapping[str, str]]) -> list[int]:
        """Prompt token ids: text or chat messages, through the chat template if any."""
        ...


@dataclass
class PluginContext:
    """What the kernel hands every plugin at construction."""

    run_dir: Path
    seed: int
    datasets: Mapping[str, Sequence[Prompt]] = field(default_factory=dict)
    tokenizer: Any = None
    policy: PolicyHandle | None = None
    config: Mapping[str, Any] = field(default_factory=dict)  # the resolved run file
    num_workers: int = 1
    base_dir: Path | None = None  # the run file's directory: relative paths in options


def validate_override(options: BaseModel, changes: Mapping[str, Any], what: str) -> BaseModel:
    """``options`` with ``changes`` applied, validated by the same model; a one-line
    ``PluginError`` naming ``what.key`` when a change is invalid."""
    try:
        return type(options).model_validate({**options.model_dump(), **changes})
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in (what, *err["loc"]))
        raise PluginError(f"{where}: {err['msg']}") from None


class Plugin:
    """Common base: options, name, state. Subclasses set ``Options`` to a pydantic model."""

    role: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = PluginOptions
    api_version: ClassVar[int] = PLUGIN_API_VERSION

    def __init__(self, options: BaseModel, context: PluginContext) -> None:
        self.options = options
        self.context = context
        self._run_file_options = options

    @classmethod
    def preflight(cls, options: BaseModel, base_dir: Path) -> None:
        """Checks the schema cannot make — a file the options name exists and imports, an
        optional package is installed — run by ``srpo validate`` and before a run builds
        anything, so a bad setup fails in a second, not after the model loaded. ``base_dir``
        is the run file's directory (relative paths in options are relative to it). Raise
        ``OptionError(key, message)`` to point at an option (reported at its line of the run
        file), or any ``SrpoError`` with its own location (e.g. ``rewards.py:12: ...``).
        The default checks nothing."""

    def override(self, changes: Mapping[str, Any]) -> None:
        """Take a curriculum stage's option changes on top of the run file's options
        (``{}`` restores them). Raises ``PluginError`` for an invalid change. Plugins that
        derive state from their options extend this (and call it first)."""
        base = getattr(self, "_run_file_options", self.options)
        self.options = validate_override(base, changes, f"{self.role}.options")

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

    #: True for a sampler that generates with ``PolicyHandle.generation_model`` (the
    #: policy's own weights) rather than an engine with its own copy: a sharded run then
    #: keeps a full replica of the policy for it.
    generates_with_policy_model: ClassVar[bool] = False

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        *,
        greedy: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> RolloutBatch:
        """``n`` rollouts per prompt; ``greedy`` is used for evaluation (n is then 1).

        The batch says the temperature it was sampled at (``RolloutBatch.temperature``; 0 for
        greedy): the trainer computes its log-probs at that temperature.

        ``seeds``: one int per prompt, given by the kernel (derived from the run seed, the
        step and the prompt's position in the step). A sampler that takes it makes prompt
        i's ``n`` rollouts depend only on ``seeds[i]``, the weights and the prompt, never on
        which other prompts share the call, on batching or on the global RNG: that is how
        data-parallel ranks, each generating a share of a step's prompts, sample exactly
        what one process would. ``None``: the sampler seeds itself. Greedy ignores seeds.
        Optional for third-party samplers: the kernel only passes it to a ``generate`` that
        accepts it."""

    def sync(self, policy: PolicyHandle) -> Mapping[str, float] | None:
        """Make the sampler generate with the policy's current weights: after every update,
        and after a resume loaded a checkpoint's weights into the policy. A sampler that
        shares the policy's model has nothing to do; one with its own copy (an inference
        engine) pushes the weights and should check they arrived. Returns numbers for the
        step's metrics (e.g. ``{"sync/probe_gap": ...}``; the kernel times the call as
        ``time/sync``). Raise ``PluginError`` when the sync fails: the run stops."""
        return None

    def prepare_overlap(self) -> None:
        """Called once before generation first runs beside an update (``run.max_staleness``
        > 0). From then on ``generate`` runs on the kernel's generation thread while the
        policy trains on the main thread, so the sampler must sample from weights that only
        ``sync`` changes (``sync`` and ``generate`` are never called at the same time: the
        kernel pushes weights while the generation thread is idle). A sampler whose
        generation shares the policy's weights makes its own copy here. The default refuses
        (third-party samplers opt in): raise ``PluginError`` with the reason to refuse."""
        raise PluginError(
            f"sampler {type(self).__name__} cannot generate beside the update "
            "(run.max_staleness > 0): it does not implement prepare_overlap; set "
            "run.max_staleness: 0"
        )


class Verifier(Plugin, ABC):
    """Scores rollouts of one domain. Never raises for a bad response: returns an error Score."""

    role = "verifier"

    @abstractmethod
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[Score]:
        """One Score per (prompt, response) pair; the lists are aligned."""

    def normalize(self, response: str) -> str | None:
        """The response's final answer in a canonical form (equal strings: equal answers),
        for majority voting (``srpo eval``'s maj@k); ``None`` when it has none. Optional:
        a verifier whose answers cannot be compared as strings (code) keeps this default,
        and maj@k is then not reported for its domain (see ``normalizes_answers``)."""
        return None


def normalizes_answers(verifier: Verifier) -> bool:
    """Whether ``verifier`` implements ``Verifier.normalize`` (maj@k is defined for it)."""
    return type(verifier).normalize is not Verifier.normalize


class HistoryReader(Protocol):
    """What curricula may ask of the history store at an epoch end (valid during the
    ``end_epoch`` call only: the kernel closes it afterwards)."""

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
        """Receive one event (see ``srpo.api.events``)."""


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


def render_report_plots(run_dir: Path, out_dir: Path) -> list[Path]:
    """The ``srpo report`` figures of one run (its ``metrics.jsonl``) as PNG files in
    ``out_dir``, for loggers that upload them. ImportError without matplotlib (the ``report``
    extra); imported lazily so the contract does not load matplotlib."""
    from srpo.report import load_run
    from srpo.report.plots import write_plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [out_dir / p.file for p in write_plots([load_run(run_dir)], out_dir)]


__all__ = [
    "ENTRY_POINT_GROUPS",
    "PLUGIN_API_VERSION",
    "ROLE_BASES",
    "Curriculum",
    "Event",
    "HistoryReader",
    "Logger",
    "OptionError",
    "Plugin",
    "PluginContext",
    "PluginError",
    "PluginOptions",
    "PolicyHandle",
    "Prompt",
    "PromptSummary",
    "RolloutBatch",
    "Sampler",
    "Score",
    "Scores",
    "SrpoError",
    "SrpoWarning",
    "StateDict",
    "Verifier",
    "events",
    "group_has_signal",
    "left_pad",
    "normalizes_answers",
    "render_report_plots",
    "splitmix64",
    "validate_override",
    "warn",
]
