"""SRPO's history resampling (HR): after each epoch, drop the prompts the policy always solves.

An epoch is one pass, in a seeded shuffled order, over the current dataset. At its end the
dataset of the next epoch is rebuilt from the history store (``epoch_summary`` over the last
``window`` epochs): prompts whose rollouts were all correct are dropped (they give GRPO no
gradient), mixed and all-wrong ones are kept, and prompts with no rollouts in the window
(not reached, e.g. ``max_steps``) are kept. Beyond the paper, dropped prompts may come back
(``readmit_after``, ``readmit_prob``; a known criticism of HR is that solved prompts are
otherwise gone for good, even if the policy later forgets them) and ``min_dataset_size``
keeps the dataset from collapsing. The rules live in ``_common.ResamplingPool``, shared with
``two_stage``.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from srpo.api import Curriculum, HistoryReader, PluginContext, Prompt, StateDict, warn

from ._common import Cursor, ResamplingPool, ResamplingRules, check_domains


class HistoryResamplingOptions(ResamplingRules):
    domains: list[str] | None = Field(None, description="domains to draw from (default: all)")
    shuffle: bool = True


class HistoryResamplingCurriculum(Curriculum):
    Options = HistoryResamplingOptions

    def __init__(self, options: HistoryResamplingOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        domains = options.domains or sorted(context.datasets)
        check_domains(domains, context.datasets)
        prompts: list[Prompt] = [p for d in domains for p in context.datasets[d]]
        self.pool = ResamplingPool(prompts, options, salt="hr")
        self.cursor = Cursor()
        self._warned_no_history = False

    def begin_epoch(self, epoch: int) -> None:
        if self.cursor.resumed(epoch):
            return  # resumed mid-epoch: keep the restored order and position
        self.cursor.start(epoch, self.pool.shuffled(self.context.seed, epoch, self.options.shuffle))

    def next_prompts(self, n: int) -> list[Prompt]:
        return [self.pool.prompts[i] for i in self.cursor.take(n)]

    def end_epoch(self, epoch: int, history: HistoryReader | None) -> Mapping[str, float]:
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
        return {"cursor": self.cursor.state_dict(), "pool": self.pool.state_dict()}

    def load_state_dict(self, state: StateDict) -> None:
        self.cursor.load_state_dict(state["cursor"])
        self.pool.load_state_dict(state["pool"])
