"""SRPO's two-stage cross-domain curriculum, with history resampling inside each stage.

Stage 0 trains on math only (``stage1_domains``): math elicits long, reflective reasoning
that code alone does not, so it comes first. Stage 1 mixes math and code in fixed ratios
per step batch (``stage2_mix``) to add coding skill without losing the reasoning.

Semantics (chosen here, relied on by tests):

* **Pools.** Each domain has one pool with its own HR state (``resampling: history``); a
  math prompt dropped in stage 0 stays dropped in stage 1 until HR re-admits it. HR rules
  are the ones of ``history_resampling`` (``_common.ResamplingPool``), floor included: by
  default each pool keeps one step's worth of its prompts (``hr.min_dataset_steps: 1``, not
  in the paper) — ``run.prompts_per_step`` for a stage-0 domain, its ``stage2_mix`` share
  of it for the others.
* **Step selection.** ``resampling: selection`` drops nothing: each step's prompts are
  drawn by expected informativeness from one pass-rate posterior over all domains
  (``_selection``, options under ``selection``), within the stage's domains and, in
  stage 1, within each domain's share of the batch. Epoch lengths are as above. With
  ``stage2_shares: informative`` (not in the paper) those shares follow the expected
  informative mass too: ``stage2_mix`` ratio × the domain pool's summed selection weights,
  recomputed every step, so a solved domain stops taking half the batch.
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
  counts toward ``run.epochs``. ``plateau`` is early stopping on a per-step *training*
  metric (held-out evaluation does not reach curricula): by default ``accuracy``, which in
  stage 0 is the stage-1 domains' accuracy, as a moving mean of ``window`` steps; it fires
  when that mean has not beaten its best by more than ``min_delta`` for ``patience`` steps
  (and stage 0 ran ``min_steps``). Rules combine, first to fire wins, so ``after_steps`` /
  ``after_epochs`` beside ``plateau`` cap stage 0. ``end_epoch`` reports the switch
  (``stage_switched``, ``switch_step``: stage-0 steps when the rule fired,
  ``switch/<rule>``); the reason string is ``pending``. All of it is checkpointed (the
  moving window, best and patience count too), so a resumed run switches at the same step.
  With generation ahead (``run.max_staleness: k``) a step's prompts are drawn k steps before
  its update: ``after_steps`` counts batches drawn, so stage 0 still has exactly that many
  steps; ``plateau`` needs each step's metric, so stage 0 runs up to k steps past the step
  where it fires (their batches were drawn already).
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
    prompts_per_step,
    seeded_rng,
)
from ._selection import PassRatePosterior, SelectingCursor, SelectionRules, informative_share


class PlateauRule(PluginOptions):
    """Switch when stage 0 stops improving ``metric``, early-stopping style.

    The kernel hands ``observe`` each step's *training* metrics (held-out evaluation does not
    reach curricula), so the rule watches training accuracy: ``accuracy`` in stage 0 is the
    accuracy of the stage-1 domains' rollouts (only they are served). Each step with the
    metric, its mean over the last ``window`` such steps is the smoothed value; a step
    improves when that value beats the best so far by more than ``min_delta`` (``mode: min``:
    falls below it). The rule fires once ``patience`` steps in a row did not improve and
    stage 0 has run ``min_steps`` steps. Steps without the metric do not count.
    """

    metric: str = Field(
        "accuracy",
        description='per-step training metric: "accuracy" (stage 0: the stage-1 domains), '
        '"accuracy/math", "reward/mean", "response_length/mean", ...',
    )
    mode: Literal["max", "min"] = Field("max", description="max: higher is better")
    window: int = Field(10, ge=1, description="steps in the moving mean (1: raw values)")
    patience: int = Field(20, ge=1, description="steps without improvement before it fires")
    min_delta: float = Field(0.01, ge=0.0, description="smallest gain that counts")
    min_steps: int = Field(50, ge=0, description="stage-0 steps before the rule may fire")


class SwitchRule(PluginOptions):
    """When stage 0 ends; with several rules, the first to fire wins (so ``after_steps`` or
    ``after_epochs`` beside ``plateau`` caps stage 0's length)."""

    after_steps: int | None = Field(None, ge=1, description="end stage 0 after this many steps")
    after_epochs: int | None = Field(None, ge=1, description="end stage 0 after this many epochs")
    plateau: PlateauRule | None = Field(
        None, description="end stage 0 when a training metric stops improving"
    )
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
    stage2_shares: Literal["fixed", "informative"] = Field(
        "fixed",
        description="fixed: stage2_mix as is (the paper); informative (resampling: selection "
        "only): each domain's stage2_mix ratio times its pool's expected informative mass",
    )
    switch: SwitchRule = Field(
        default_factory=lambda: SwitchRule(after_epochs=1),
        description="when stage 0 ends; the first rule to fire wins",
    )
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
    shuffle: bool = Field(True, description="a seeded shuffle of the prompt order each epoch")
    stage_overrides: dict[int, dict[str, Any]] = Field(
        default_factory=dict, description="free-form per-stage settings, see overrides()"
    )

    @model_validator(mode="after")
    def _check(self) -> TwoStageOptions:
        if not self.stage1_domains:
            raise ValueError("stage1_domains is empty")
        if any(v < 0 for v in self.stage2_mix.values()) or sum(self.stage2_mix.values()) <= 0:
            raise ValueError("stage2_mix: ratios must be >= 0 with a positive sum")
        if self.stage2_shares == "informative" and self.resampling != "selection":
            raise ValueError("stage2_shares: informative needs resampling: selection")
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
        pps = prompts_per_step(context.config)
        total = sum(self.mix.values())
        # prompts one step draws from a domain at most: all of it in stage 0, its share in 1
        step = {
            d: pps if d in options.stage1_domains else math.ceil(pps * self.mix[d] / total)
            for d in domains
        }
        self.pools = {
            d: ResamplingPool(context.datasets[d], rules, f"two_stage/{d}", step[d])
            for d in domains
        }
        self.by_step = options.resampling == "selection"
        self.posterior = PassRatePosterior.over(
            options.selection, context.config, [p for d in domains for p in context.datasets[d]]
        )
        self._stage = 0
        self.stage0_steps = 0
        self.stage0_drawn = 0  # stage-0 step batches handed out (ahead of stage0_steps by k)
        self.stage0_epochs = 0
        self.pending: str | None = None  # why stage 0 ends, once a rule fired
        self.switch_epoch: int | None = None  # first epoch of stage 1
        self.switch_rule: str | None = None  # after_steps, after_epochs or plateau
        self.switch_step: int | None = None  # stage-0 steps when that rule fired
        self.values: list[float] = []  # the plateau metric, last `window` steps with it
        self.best: float | None = None  # best smoothed plateau metric so far
        self.best_step = 0  # stage-0 step of that best
        self.stale = 0  # steps with the metric since the best
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
                        "mixes the other domains (keep some with a floor: hr.min_dataset_steps "
                        "or hr.min_dataset_size)",
                        stacklevel=2,
                    )
                continue
            c = self._domain_cursor(d)
            c.start(epoch, order)
            self.cursors[d] = c
            self.credit[d] = 0.0

    def next_prompts(self, n: int) -> list[Prompt]:
        if self._stage == 0:
            if self.options.switch.mid_epoch and (self.pending or self._steps_all_drawn()):
                return []  # the switch ends this epoch here; stage 1 starts with the next
            got = [
                self.pools[d].prompts[i] for d, i in (self.joint[j] for j in self.cursor.take(n))
            ]
            self.stage0_drawn += bool(got)
            return got
        if not self.cursors or any(c.remaining == 0 for c in self.cursors.values()):
            return []
        ratios = self._stage1_ratios()
        total = sum(ratios.values())
        plan: list[str] = []  # the domain of each slot, by smooth weighted round robin
        for _ in range(n):
            for d in self.cursors:
                self.credit[d] += ratios[d] / total
            d = max(self.cursors, key=lambda k: self.credit[k])  # ties: first in mix order
            self.credit[d] -= 1.0
            if plan.count(d) >= self.cursors[d].remaining:
                break  # this domain has served its pool: the epoch ends after this batch
            plan.append(d)
        # each domain's slots are taken at once (a selecting cursor draws them together)
        got = {d: iter(self.cursors[d].take(plan.count(d))) for d in dict.fromkeys(plan)}
        return [self.pools[d].prompts[next(got[d])] for d in plan]

    def _steps_all_drawn(self) -> bool:
        """Whether ``after_steps`` stage-0 batches were handed out already. ``observe`` fires
        the rule after a step's update, but with generation ahead (``run.max_staleness``) the
        next step's prompts are drawn before that: counting draws, not updates, keeps stage 0
        at exactly ``after_steps`` steps whatever the staleness (one draw per step: this
        curriculum never asks for a refill round)."""
        after = self.options.switch.after_steps
        return after is not None and self.stage0_drawn >= after

    def _stage1_ratios(self) -> dict[str, float]:
        """Each mixed domain's share of a stage-1 batch. ``informative`` scales the mix by the
        summed selection weights of the domain's pool (its expected informative prompts, as
        the draw inside the domain sees them): once code is solved, math gets the batch,
        instead of half the batch going to zero-variance groups. The weights' floor keeps
        every domain's share above zero."""
        if self.options.stage2_shares == "fixed":
            return {d: self.mix[d] for d in self.cursors}
        return {
            d: self.mix[d]
            * float(self.posterior.weights([self.pools[d].prompts[i].id for i in c.order]).sum())
            for d, c in self.cursors.items()
        }

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
            self._fire("after_steps", f"after_steps={sw.after_steps}")
        if sw.plateau is not None:
            self._plateau(sw.plateau, metrics)

    def _plateau(self, p: PlateauRule, metrics: Mapping[str, float]) -> None:
        v = metrics.get(p.metric)
        if v is None or not math.isfinite(float(v)):
            return  # this step says nothing about the metric
        self.values = [*self.values, float(v)][-p.window :]
        if len(self.values) < p.window:
            return
        smooth = sum(self.values) / p.window
        gain = (smooth - self.best) * (1 if p.mode == "max" else -1) if self.best is not None else 0
        if self.best is None or gain > p.min_delta:  # the first smoothed value is the best
            self.best, self.best_step, self.stale = smooth, self.stage0_steps, 0
        else:
            self.stale += 1
        if self.stale >= p.patience and self.stage0_steps >= p.min_steps:
            self._fire(
                "plateau",
                f"plateau: {p.metric} (mean of {p.window}) best {self.best:.4g} at stage-0 "
                f"step {self.best_step}, no gain > {p.min_delta:g} in {self.stale} steps",
            )

    def _fire(self, rule: str, reason: str) -> None:
        """The first rule to fire ends stage 0; later ones change nothing."""
        if self.pending is None:
            self.pending, self.switch_rule = reason, rule
            self.switch_step = self.stage0_steps

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
            if after is not None and self.stage0_epochs >= after:
                self._fire("after_epochs", f"after_epochs={after}")
            if self.pending is not None:
                self._stage = 1
                self.switch_epoch = epoch + 1
                report["stage_switched"] = 1.0
                # stage-0 steps trained when the rule fired, and which rule (1.0 = it)
                report["switch_step"] = float(self.switch_step or self.stage0_steps)
                if self.switch_rule is not None:  # None: resumed from an older checkpoint
                    report[f"switch/{self.switch_rule}"] = 1.0
                report["stage0_steps"] = float(self.stage0_steps)
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
            "stage0_drawn": self.stage0_drawn,
            "stage0_epochs": self.stage0_epochs,
            "pending": self.pending,
            "switch_epoch": self.switch_epoch,
            "switch_rule": self.switch_rule,
            "switch_step": self.switch_step,
            "values": list(self.values),
            "best": self.best,
            "best_step": self.best_step,
            "stale": self.stale,
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
        # a checkpoint from before the field: on policy, every drawn batch was trained on
        self.stage0_drawn = int(state.get("stage0_drawn", self.stage0_steps))
        self.stage0_epochs = int(state["stage0_epochs"])
        self.pending = state["pending"]
        self.switch_epoch = state["switch_epoch"]
        self.switch_rule = state.get("switch_rule")
        self.switch_step = state.get("switch_step")
        self.values = [float(v) for v in state["values"]]
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.best_step = int(state.get("best_step", 0))
        self.stale = int(state.get("stale", 0))
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
