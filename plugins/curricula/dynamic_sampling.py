"""DAPO's dynamic sampling: train only on groups whose rewards differ, refilling the batch.

A group whose G rewards are all equal (all correct or all wrong) has zero advantage
everywhere: it costs generation and update time and adds no gradient. ``accept_groups``
drops such groups (the same robust rule as ``srpo.api.group_has_signal``) and the
kernel asks ``next_prompts`` again, up to ``max_generation_rounds`` rounds per step. When
the cap is reached before the batch is full the step trains on a smaller batch — it does
not abort — and the curriculum says why: ``last_step_info()``, the ``underfilled_steps``
counter, the epoch report, and one warning naming the share of zero-variance groups split
into all-correct ("data too easy") and all-wrong ("data too hard").

An epoch is one pass over the dataset in a seeded shuffled order; prompts consumed by
refill rounds count, so an epoch may have fewer steps than ``dataset / prompts_per_step``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field

from srpo.api import (
    Curriculum,
    HistoryReader,
    PluginContext,
    PluginOptions,
    Prompt,
    RolloutBatch,
    Scores,
    StateDict,
    group_has_signal,
    warn,
)

from ._common import Cursor, domain_prompts, seeded_rng

_COUNTERS = ("steps", "underfilled", "groups", "kept", "zero_var", "all_correct", "all_wrong")


class DynamicSamplingOptions(PluginOptions):
    max_generation_rounds: int = Field(4, ge=1, description="generation rounds per step")
    domains: list[str] | None = Field(None, description="domains to draw from (default: all)")
    shuffle: bool = Field(True, description="a seeded shuffle of the prompt order each epoch")


class DynamicSamplingCurriculum(Curriculum):
    Options = DynamicSamplingOptions

    def __init__(self, options: DynamicSamplingOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.prompts: list[Prompt] = domain_prompts(options.domains, context.datasets)
        # the kernel reads this per instance: the option overrides the class default of 1
        self.max_generation_rounds = options.max_generation_rounds  # type: ignore[misc]
        self.cursor = Cursor()
        self.underfilled_steps = 0  # over the whole run
        self.epoch_counts = dict.fromkeys(_COUNTERS, 0)
        self._step: dict[str, Any] | None = None  # the step being assembled
        self._last: dict[str, Any] = {}
        self._warned = False

    def begin_epoch(self, epoch: int) -> None:
        if self.cursor.resumed(epoch):
            return
        order = list(range(len(self.prompts)))
        if self.options.shuffle:
            seeded_rng(self.context.seed, "dynamic_sampling", epoch).shuffle(order)
        self.cursor.start(epoch, order)
        self.epoch_counts = dict.fromkeys(_COUNTERS, 0)

    def next_prompts(self, n: int) -> list[Prompt]:
        if self._step is None:  # the first round of a step asks for the full batch
            self._step = {"target": n, "rounds": 0, "exhausted": False}
            self._step.update(dict.fromkeys(_COUNTERS[2:], 0))
        got = [self.prompts[i] for i in self.cursor.take(n)]
        if len(got) < n:
            self._step["exhausted"] = True
        if not got and self._step["rounds"] == 0:
            self._step = None  # epoch end, no step happened
        return got

    def accept_groups(self, batch: RolloutBatch, scores: Scores) -> torch.Tensor:
        P = len(batch.prompts)
        keep = group_has_signal(batch.group, scores.reward, P)
        correct = torch.zeros(P, dtype=torch.int64).index_add_(
            0, batch.group, scores.correct.to(torch.int64)
        )
        size = torch.bincount(batch.group, minlength=P)
        flat = ~keep
        st = self._step if self._step is not None else {k: 0 for k in _COUNTERS[2:]}
        st["rounds"] = st.get("rounds", 0) + 1
        st["groups"] += P
        st["kept"] += int(keep.sum())
        st["zero_var"] += int(flat.sum())
        st["all_correct"] += int((flat & (correct == size)).sum())
        st["all_wrong"] += int((flat & (correct == 0)).sum())
        return keep

    def observe(self, metrics: Mapping[str, float]) -> None:
        st, self._step = self._step, None
        if st is None:
            return
        underfilled = st["kept"] < st["target"]
        if not underfilled:
            reason = ""
        elif st["rounds"] >= self.max_generation_rounds and not st["exhausted"]:
            reason = "round_cap"
        else:
            reason = "epoch_end"
        st["underfilled"] = underfilled
        st["reason"] = reason
        st["zero_var_share"] = st["zero_var"] / max(st["groups"], 1)
        self._last = st
        c = self.epoch_counts
        c["steps"] += 1
        for k in _COUNTERS[2:]:
            c[k] += st[k]
        if reason == "round_cap":
            c["underfilled"] += 1
            self.underfilled_steps += 1
            if not self._warned:
                self._warned = True
                msg = self._explain(st)
                warn(msg)

    def _explain(self, st: Mapping[str, Any]) -> str:
        g = max(st["groups"], 1)
        easy, hard = st["all_correct"] / g, st["all_wrong"] / g
        verdict = "data too easy" if easy >= hard else "data too hard"
        return (
            f"dynamic_sampling: step batch underfilled: kept {st['kept']}/{st['target']} groups "
            f"after {st['rounds']} generation rounds; {st['zero_var'] / g:.0%} of generated "
            f"groups had zero reward variance ({easy:.0%} all correct, {hard:.0%} all wrong: "
            f"{verdict}). Training goes on with the smaller batch; raise "
            "max_generation_rounds, or filter the data (history resampling drops the "
            "all-correct prompts). Reported once; see underfilled_steps in the epoch report."
        )

    def last_step_info(self) -> dict[str, Any]:
        """The last step's accounting: target, kept, groups, rounds, zero_var (all_correct,
        all_wrong), zero_var_share, underfilled and why ("round_cap" or "epoch_end")."""
        return dict(self._last)

    def end_epoch(self, epoch: int, history: HistoryReader | None) -> Mapping[str, float]:
        c = self.epoch_counts
        g = max(c["groups"], 1)
        return {
            "dataset_size": float(len(self.prompts)),
            "steps": float(c["steps"]),
            "underfilled_steps": float(c["underfilled"]),
            "groups_generated": float(c["groups"]),
            "groups_kept": float(c["kept"]),
            "zero_variance_share": c["zero_var"] / g,
            "all_correct_share": c["all_correct"] / g,
            "all_wrong_share": c["all_wrong"] / g,
        }

    def epoch_size(self) -> int:
        return len(self.prompts)

    def state_dict(self) -> StateDict:
        return {
            "cursor": self.cursor.state_dict(),
            "underfilled_steps": self.underfilled_steps,
            "epoch_counts": dict(self.epoch_counts),
            "warned": self._warned,
        }

    def load_state_dict(self, state: StateDict) -> None:
        self.cursor.load_state_dict(state["cursor"])
        self.underfilled_steps = int(state["underfilled_steps"])
        self.epoch_counts = {k: int(state["epoch_counts"].get(k, 0)) for k in _COUNTERS}
        self._warned = bool(state.get("warned", False))
        self._step = None
