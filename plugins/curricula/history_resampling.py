"""SRPO's history resampling (HR): after each epoch, drop the prompts the policy always solves.

An epoch is one pass, in a seeded shuffled order, over the current dataset. At its end the
dataset of the next epoch is rebuilt from the history store (``epoch_summary`` over the last
``window`` epochs): prompts whose rollouts were all correct are dropped (they give GRPO no
gradient), mixed and all-wrong ones are kept, and prompts with no rollouts in the window
(not reached, e.g. ``max_steps``) are kept. Beyond the paper, dropped prompts may come back
(``readmit_after``, ``readmit_prob``; a known criticism of HR is that solved prompts are
otherwise gone for good, even if the policy later forgets them) and a floor
(``min_dataset_steps``, ``min_dataset_size``, ``min_dataset_frac``) keeps the dataset from
collapsing. The floor is on by default (one step's prompts, ``run.prompts_per_step``): a
deviation from the paper, whose rule let the pool shrink to a handful of prompts over
several epochs on small data (docs/results.md, "Several epochs"); ``min_dataset_steps: 0`` restores
the paper's rule. The rules live in ``_common.ResamplingPool``, shared with
``two_stage``.

``selection: step`` (not in the paper) replaces the epoch-end drop with a per-step draw: each
step's prompts are sampled by each prompt's chance of giving a non-zero-variance group,
from a Beta posterior on its pass rate (``_selection``; options under ``step``). An epoch
then serves as many prompts as the pool holds, chosen by weight, and nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from pydantic import Field, model_validator

from srpo.api import (
    Curriculum,
    HistoryReader,
    PluginContext,
    Prompt,
    RolloutBatch,
    Scores,
    StateDict,
    warn,
)

from ._common import Cursor, ResamplingPool, ResamplingRules, domain_prompts, prompts_per_step
from ._selection import PassRatePosterior, SelectingCursor, SelectionRules, informative_share


class HistoryResamplingOptions(ResamplingRules):
    domains: list[str] | None = Field(None, description="domains to draw from (default: all)")
    shuffle: bool = Field(True, description="a seeded shuffle of the prompt order each epoch")
    selection: Literal["epoch", "step"] = Field(
        "epoch",
        description="epoch: the paper's rule (drop all-correct prompts at epoch ends); "
        "step: draw each step's prompts by expected informativeness (see ``step``)",
    )
    step: SelectionRules = Field(
        default_factory=SelectionRules, description="the per-step rule, for selection: step"
    )

    @model_validator(mode="after")
    def _rules_match_selection(self) -> HistoryResamplingOptions:
        hr = set(ResamplingRules.model_fields) & self.model_fields_set
        if self.selection == "step" and hr:
            raise ValueError(
                f"{sorted(hr)[0]} applies to selection: epoch only (nothing is dropped)"
            )
        return self


class HistoryResamplingCurriculum(Curriculum):
    Options = HistoryResamplingOptions

    def __init__(self, options: HistoryResamplingOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        prompts = domain_prompts(options.domains, context.datasets)
        self.by_step = options.selection == "step"
        self.pool = ResamplingPool(
            prompts,
            None if self.by_step else options,
            salt="hr",
            step_prompts=prompts_per_step(context.config),
        )
        self.posterior = PassRatePosterior.over(options.step, context.config, prompts)
        self.cursor: Cursor = Cursor()
        if self.by_step:
            self.cursor = SelectingCursor(
                self.posterior, lambda i: self.pool.prompts[i].id, context.seed, "hr/step"
            )
        self._warned_no_history = False

    def begin_epoch(self, epoch: int) -> None:
        if self.cursor.resumed(epoch):
            return  # resumed mid-epoch: keep the restored order and position
        self.cursor.start(epoch, self.pool.shuffled(self.context.seed, epoch, self.options.shuffle))

    def next_prompts(self, n: int) -> list[Prompt]:
        return [self.pool.prompts[i] for i in self.cursor.take(n)]

    def accept_groups(self, batch: RolloutBatch, scores: Scores) -> torch.Tensor | None:
        if self.by_step:
            self.posterior.observe(batch, scores)  # learn from every group; train them all
        return None

    def end_epoch(self, epoch: int, history: HistoryReader | None) -> Mapping[str, float]:
        if self.by_step:
            return {
                "dataset_size": float(self.pool.size()),
                "expected_informative": informative_share(self.posterior, self.pool.prompts),
            }
        if history is None and not self._warned_no_history:
            self._warned_no_history = True
            warn(
                "history_resampling: no history store (history.enabled is off), so the "
                "dataset is not rebuilt: this run is plain GRPO sampling",
                stacklevel=2,
            )
        return self.pool.rebuild(self.context.seed, epoch, history)

    def epoch_size(self) -> int:
        return self.pool.size()

    def state_dict(self) -> StateDict:
        state = {"cursor": self.cursor.state_dict(), "pool": self.pool.state_dict()}
        if self.by_step:
            state["posterior"] = self.posterior.state_dict()
        return state

    def load_state_dict(self, state: StateDict) -> None:
        self.cursor.load_state_dict(state["cursor"])
        self.pool.load_state_dict(state["pool"])
        if "posterior" in state:
            self.posterior.load_state_dict(state["posterior"])
