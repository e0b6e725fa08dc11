"""Plain GRPO's curriculum: every prompt once per epoch, in a seeded shuffled order."""

from __future__ import annotations

import random

from pydantic import Field

from srpo.api import Curriculum, PluginContext, PluginOptions, Prompt, StateDict

from ._common import domain_prompts


class UniformOptions(PluginOptions):
    shuffle: bool = Field(True, description="a seeded shuffle of the prompt order each epoch")
    domains: list[str] | None = Field(None, description="domains to draw from (default: all)")


class UniformCurriculum(Curriculum):
    Options = UniformOptions

    def __init__(self, options: UniformOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.prompts: list[Prompt] = domain_prompts(options.domains, context.datasets)
        self.order: list[int] = []
        self.cursor = 0
        self.epoch = -1

    def begin_epoch(self, epoch: int) -> None:
        if epoch == self.epoch and self.order:
            return  # resumed mid-epoch: keep the restored order and cursor
        self.epoch = epoch
        self.order = list(range(len(self.prompts)))
        if self.options.shuffle:
            random.Random(self.context.seed * 1_000_003 + epoch).shuffle(self.order)
        self.cursor = 0

    def next_prompts(self, n: int) -> list[Prompt]:
        chosen = self.order[self.cursor : self.cursor + n]
        self.cursor += len(chosen)
        return [self.prompts[i] for i in chosen]

    def epoch_size(self) -> int:
        return len(self.prompts)

    def state_dict(self) -> StateDict:
        return {"epoch": self.epoch, "order": list(self.order), "cursor": self.cursor}

    def load_state_dict(self, state: StateDict) -> None:
        self.epoch, self.order, self.cursor = state["epoch"], list(state["order"]), state["cursor"]
