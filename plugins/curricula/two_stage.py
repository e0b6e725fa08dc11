"""SRPO's two-stage cross-domain curriculum, with history resampling inside each stage.

Stage 0 trains on math only (``stage1_domains``): math elicits long, reflective reasoning
that code alone does not, so it comes first. Stage 1 mixes math and code in fixed ratios
per step batch (``stage2_mix``) to add coding skill without losing the reasoning.

Semantics (chosen here, relied on by tests):

* **Pools.** Each domain has one pool with its own HR state (``resampling: history``); a
  math prompt dropped in stage 0 stays dropped in stage 1 until HR re-admits it. HR rules
  are the ones of ``history_resampling`` (``_common.ResamplingPool``).
* **Step selection.** ``resampling: selection`` drops nothing: each step's prompts are
  drawn by expected informativeness from one pass-rate posterior over all domains
  (``_selection``, options under ``selection``), within the stage's domains and, in
  stage 1, within each domain's share of the batch. Epoch lengths are as above.
* **Epochs.** The kernel's epoch counter runs on across stages (history is keyed by it and
  HR windows span the switch: stage-0 math outcomes are still evidence about math
  prompts). A stage-0 epoch is one pass over the active stage-0 pools (shuffled together).
  A stage-1 epoch draws each step batch by the mix ratios (smooth weighted round robin, so
  ratios hold exactly over steps even with tiny batches) and ends as soon as one mixed
  domain has served its whole pool: every prompt is seen at most once per epoch, the
  larger pools' unserved prompts count as unseen (kept).
* **Switch.** ``after_epochs`` switches at an epoch end. ``after_steps`` and ``plateau``
  fire at a step boundary: with ``switch.mid_epoch`` (default) the current epoch ends right
  there (the next ``next_prompts`` returns ``[]``; HR rebuilds from the partial epoch) and
  stage 1 starts with the next epoch, so every epoch belongs to exactly one stage; with
  ``mid_epoch: false`` the switch waits for the epoch's natural end. The early-ended epoch
  counts toward ``run.epochs``.
* **Overrides.** ``stage_overrides: {0: {...}, 1: {...}}`` is free-form; ``overrides()``
  returns the current stage's dict. The kernel applies it when ``stage`` changes (at an
  epoch start) — the curriculum itself never touches other roles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from srpo.api import (
    Curriculum,
    HistoryReader,
    PluginContext,
    PluginOptions,
    Prompt,
    RolloutBatch,
    Scores,
    StateDict,
    warn,
)

from ._common import (
    CATEGORIES,
    Cursor,
    ResamplingPool,
    ResamplingRules,
    check_domains,
    seeded_rng,
)
from ._selection import PassRatePosterior, SelectingCursor, SelectionRules, informative_share


class PlateauRule(PluginOptions):
    """Switch when ``metric`` stops improving: mean of the last ``window`` stage-0 steps
    minus the mean of the ``window`` before is below ``min_delta`` (after ``min_steps``)."""

    metric: str = Field("reward/mean", description='e.g. "reward/mean", "response_length/mean"')
    window: int = Field(20, ge=1)
    min_delta: float = 0.01
    min_steps: int = Field(50, ge=0, description="stage-0 steps before the rule may fire")


class SwitchRule(PluginOptions):
    """When stage 0 ends; with several rules, the first to fire wins."""

    after_steps: int | None = Field(None, ge=1)
    after_epochs: int | None = Field(None, ge=1)
    plateau: PlateauRule | None = None
    mid_epoch: bool = Field(True, description="a step/plateau switch ends the epoch at once")

    @model_validator(mode="after")
    def _one_rule(self) -> SwitchRule:
        if self.after_steps is None and self.after_epochs is None and self.plateau is None:
            raise ValueError("switch needs after_steps, after_epochs or plateau")
        return self


class TwoStageOptions(PluginOptions):
    stage1_domains: list[str] = Field(
        default_factory=lambda: ["math"], description="stage 0 draws only from these"
    )
    stage2_mix: dict[str, float] = Field(
        default_factory=lambda: {"math": 0.5, "code": 0.5},
        description="stage 1: share of each step batch per domain (normalized)",
    )
    switch: SwitchRule = Field(default_factory=lambda: SwitchRule(after_epochs=1))
    resampling: Literal["history", "none", "selection"] = Field(
        "history",
        description="history: the paper's HR at epoch ends; none; selection: draw each "
        "step's prompts by expected informativeness (rules under ``selection``)",
    )
    hr: ResamplingRules = Field(
        default_factory=ResamplingRules, description="HR rules inside each stage"
    )
    selection: SelectionRules = Field(
        default_factory=SelectionRules, description="per-step rule, for resampling: selection"
    )
    shuffle: bool = True
    stage_overrides: dict[int, dict[str, Any]] = Field(
        default_factory=dict, description="free-form per-stage settings, see overrides()"
    )

    @model_validator(mode="after")
    def _check(self) -> TwoStageOptions:
        if not self.stage1_domains:
            raise ValueError("stage1_domains is empty")
        if any(v < 0 for v in self.stage2_mix.values()) or sum(self.stage2_mix.values()) <= 0:
            raise ValueError("stage2_mix: ratios must be >= 0 with a positive sum")
        bad = [k for k in self.stage_overrides if k not in (0, 1)]
        if bad:
            raise ValueError(f"stage_overrides: stages are 0 and 1, got {bad[0]}")
        return self


class TwoStageCurriculum(Curriculum):
    Options = TwoStageOptions

    def __init__(self, options: TwoStageOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.mix = {d: r for d, r in options.stage2_mix.items() if r > 0}
        domains = list(dict.fromkeys([*options.stage1_domains, *self.mix]))
        check_domains(domains, context.datasets)
        rules = options.hr if options.resampling == "history" else None
        self.pools = {
            d: ResamplingPool(context.datasets[d], rules, salt=f"two_stage/{d}") for d in domains
        }
        self.by_step = options.resampling == "selection"
        group_size = int(context.config.get("algorithm", {}).get("group_size", 8))
        self.posterior = PassRatePosterior(options.selection, group_size)
        self._stage = 0
        self.stage0_steps = 0
        self.stage0_epochs = 0
        self.pending: str | None = None  # why stage 0 ends, once a rule fired
        self.switch_epoch: int | None = None  # first epoch of stage 1
        self.values: list[float] = []  # the plateau metric, last 2*window stage-0 steps
        self.cursor = self._cursor("stage0", self._joint_id)  # stage 0: indices into joint
        self.joint: list[tuple[str, int]] = []
        self.cursors: dict[str, Cursor] = {}  # stage 1: one per mixed domain
        self.credit: dict[str, float] = {}
        self.epoch = -1
        self._warned_empty: set[str] = set()

    def _joint_id(self, j: int) -> int:
        d, i = self.joint[j]
        return self.pools[d].prompts[i].id

    def _cursor(self, salt: str, key: Any) -> Cursor:
        """A plain cursor, or a selecting one under ``resampling: selection``."""
        if not self.by_step:
            return Cursor()
        return SelectingCursor(self.posterior, key, self.context.seed, f"two_stage/{salt}")

    def _domain_cursor(self, d: str) -> Cursor:
        return self._cursor(d, lambda i: self.pools[d].prompts[i].id)

    @property
    def stage(self) -> int:
        return self._stage

    def overrides(self) -> dict[str, Any]:
        """The current stage's ``stage_overrides`` entry (``{}`` if none), for the kernel."""
        return dict(self.options.stage_overrides.get(self._stage, {}))

    # -- epochs ---------------------------------------------------------------------------

    def begin_epoch(self, epoch: int) -> None:
        if epoch == self.epoch:
            return  # resumed mid-epoch: keep the restored orders and positions
        self.epoch = epoch
        seed, shuffle = self.context.seed, self.options.shuffle
        if self._stage == 0:
            joint = [(d, i) for d in self.options.stage1_domains for i in self.pools[d].active()]
            order = list(range(len(joint)))
            if shuffle:
                seeded_rng(seed, "two_stage/stage0", epoch).shuffle(order)
            self.joint = [joint[i] for i in order]
            self.cursor.start(epoch, list(range(len(joint))))
            return
        self.cursors, self.credit = {}, {}
        for d in self.mix:
            order = self.pools[d].shuffled(seed, epoch, shuffle)
            if not order:
                if d not in self._warned_empty:
                    self._warned_empty.add(d)
                    warn(
                        f"two_stage: domain {d!r} has no prompts left in its pool; stage 1 "
                        "mixes the other domains (set hr.min_dataset_size to keep some)",
                        stacklevel=2,
                    )
                continue
            c = self._domain_cursor(d)
            c.start(epoch, order)
            self.cursors[d] = c
            self.credit[d] = 0.0

    def next_prompts(self, n: int) -> list[Prompt]:
        if self._stage == 0:
            if self.pending and self.options.switch.mid_epoch:
                return []  # the switch ends this epoch here; stage 1 starts with the next
            return [
                self.pools[d].prompts[i] for d, i in (self.joint[j] for j in self.cursor.take(n))
            ]
        if not self.cursors or any(c.remaining == 0 for c in self.cursors.values()):
            return []
        total = sum(self.mix[d] for d in self.cursors)
        plan: list[str] = []  # the domain of each slot, by smooth weighted round robin
        for _ in range(n):
            for d in self.cursors:
                self.credit[d] += self.mix[d] / total
            d = max(self.cursors, key=lambda k: self.credit[k])  # ties: first in mix order
            self.credit[d] -= 1.0
            if plan.count(d) >= self.cursors[d].remaining:
                break  # this domain has served its pool: the epoch ends after this batch
            plan.append(d)
        # each domain's slots are taken at once (a selecting cursor draws them together)
        got = {d: iter(self.cursors[d].take(plan.count(d))) for d in dict.fromkeys(plan)}
        return [self.pools[d].prompts[next(got[d])] for d in plan]

    def accept_groups(self, batch: RolloutBatch, scores: Scores) -> torch.Tensor | None:
        if self.by_step:
            self.posterior.observe(batch, scores)  # learn from every group; train them all
        return None

    def observe(self, metrics: Mapping[str, float]) -> None:
        if self._stage != 0:
            return
        self.stage0_steps += 1
        sw = self.options.switch
        if sw.after_steps is not None and self.stage0_steps >= sw.after_steps:
            self.pending = self.pending or f"after_steps={sw.after_steps}"
        if sw.plateau is not None:
            p = sw.plateau
            v = metrics.get(p.metric)
            if v is not None and math.isfinite(float(v)):
                self.values = [*self.values, float(v)][-2 * p.window :]
            if (
                self.pending is None
                and self.stage0_steps >= p.min_steps
                and len(self.values) >= 2 * p.window
            ):
                prev = sum(self.values[: p.window]) / p.window
                last = sum(self.values[p.window :]) / p.window
                if last - prev < p.min_delta:
                    self.pending = (
                        f"plateau: {p.metric} {prev:.4g} -> {last:.4g} over {p.window} steps"
                    )

    def end_epoch(self, epoch: int, history: HistoryReader | None) -> Mapping[str, float]:
        served = self.options.stage1_domains if self._stage == 0 else list(self.cursors)
        report: dict[str, float] = {"stage": float(self._stage)}
        totals = dict.fromkeys((*CATEGORIES, "dropped"), 0.0)
        if self.by_step:
            served_prompts = [p for d in served for p in self.pools[d].prompts]
            report["expected_informative"] = informative_share(self.posterior, served_prompts)
        for d in served:
            part = self.pools[d].rebuild(self.context.seed, epoch, history)
            for k, v in part.items():
                report[f"{d}/{k}"] = v
                if k in totals:
                    totals[k] += v
        report.update(totals)
        if self._stage == 0:
            self.stage0_epochs += 1
            after = self.options.switch.after_epochs
            if after is not None and self.stage0_epochs >= after and self.pending is None:
                self.pending = f"after_epochs={after}"
            if self.pending is not None:
                self._stage = 1
                self.switch_epoch = epoch + 1
                report["stage_switched"] = 1.0
        report["dataset_size"] = float(self.epoch_size())
        return report

    def epoch_size(self) -> int:
        if self._stage == 0:
            return sum(self.pools[d].size() for d in self.options.stage1_domains)
        sizes = {d: self.pools[d].size() for d in self.mix}
        sizes = {d: s for d, s in sizes.items() if s > 0}
        if not sizes:
            return 0
        total = sum(self.mix[d] for d in sizes)
        # the epoch ends when the first domain runs out: at about size_d / share_d prompts
        return int(min(s * total / self.mix[d] for d, s in sizes.items()))

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> StateDict:
        return {
            "stage": self._stage,
            "stage0_steps": self.stage0_steps,
            "stage0_epochs": self.stage0_epochs,
            "pending": self.pending,
            "switch_epoch": self.switch_epoch,
            "values": list(self.values),
            "epoch": self.epoch,
            "joint": [[d, i] for d, i in self.joint],
            "cursor": self.cursor.state_dict(),
            "cursors": {d: c.state_dict() for d, c in self.cursors.items()},
            "credit": dict(self.credit),
            "pools": {d: p.state_dict() for d, p in self.pools.items()},
            **({"posterior": self.posterior.state_dict()} if self.by_step else {}),
        }

    def load_state_dict(self, state: StateDict) -> None:
        self._stage = int(state["stage"])
        self.stage0_steps = int(state["stage0_steps"])
        self.stage0_epochs = int(state["stage0_epochs"])
        self.pending = state["pending"]
        self.switch_epoch = state["switch_epoch"]
        self.values = [float(v) for v in state["values"]]
        self.epoch = int(state["epoch"])
        self.joint = [(str(d), int(i)) for d, i in state["joint"]]
        self.cursor.load_state_dict(state["cursor"])
        self.cursors = {}
        for d, st in state["cursors"].items():
            self.cursors[d] = self._domain_cursor(d)
            self.cursors[d].load_state_dict(st)
        self.credit = {d: float(v) for d, v in state["credit"].items()}
        for d, st in state["pools"].items():
            if d in self.pools:
                self.pools[d].load_state_dict(st)
        if "posterior" in state:
            self.posterior.load_state_dict(state["posterior"])
