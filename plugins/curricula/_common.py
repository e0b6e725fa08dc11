"""Shared by the SRPO curricula: history-resampling rules over a prompt pool, seeded orders.

``ResamplingPool`` is SRPO's history resampling (HR) for one pool of prompts: it keeps only
*curriculum state* (which prompts are out, since which epoch, and from which epoch a
re-admitted prompt's rollouts count again); outcomes are always read back from the history
store's vectorized ``epoch_summary``, never shadowed here, so a resumed run decides from the
same records the store holds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from srpo.api import HistoryReader, PluginOptions, Prompt, PromptSummary, StateDict, warn

#: Report keys (``end_epoch``) of one rebuild; the report CLI plots these per epoch.
CATEGORIES = ("all_correct", "mixed", "all_wrong", "unseen", "readmitted")


class ResamplingRules(PluginOptions):
    """How HR rebuilds a pool at an epoch end (paper: window 1, no floor, no re-admission).

    Deviation from the paper, on by default: ``min_dataset_steps: 1`` keeps at least one
    step's prompts (``run.prompts_per_step``) in the pool. Over several epochs on a small
    dataset the paper's rule shrank the pool to 5-15 of 256 prompts and held-out accuracy
    fell from ~0.8 to 0.42-0.73 (docs/results.md, "Several epochs"); a floor kept it near GRPO's.
    ``min_dataset_steps: 0`` (with the other floors at 0) is the paper's exact rule.
    """

    window: int = Field(1, ge=1, description="epochs of history a decision looks at")
    min_dataset_size: int = Field(
        0, ge=0, description="floor on the rebuilt pool; dropped prompts are re-admitted to it"
    )
    min_dataset_frac: float = Field(
        0.0, ge=0.0, le=1.0, description="floor as a share of the full pool (max with size)"
    )
    min_dataset_steps: float = Field(
        1.0,
        ge=0.0,
        description="floor in step batches: keep at least this many times the prompts one "
        "step draws from the pool (run.prompts_per_step; max with the other floors). Not in "
        "the paper: without it the pool collapsed below one step over several epochs on "
        "small data; 0 gives the paper's rule",
    )
    floor_order: Literal["oldest", "random"] = Field(
        "oldest",
        description="which dropped prompts the floor re-admits first: dropped longest ago "
        "(ties in seeded random order) or seeded random",
    )
    readmit_after: int | None = Field(
        None, ge=0, description="a dropped prompt sits out this many epochs, then returns"
    )
    readmit_prob: float = Field(
        0.0, ge=0.0, le=1.0, description="per-epoch chance each dropped prompt returns"
    )


def seeded_rng(seed: int, *parts: int | str) -> random.Random:
    """A ``random.Random`` that depends only on the seed and ``parts`` (no hidden state)."""
    key = ":".join([str(seed), *(str(p) for p in parts)])
    return random.Random(key)


def check_domains(domains: Sequence[str], datasets: Mapping[str, Sequence[Prompt]]) -> None:
    unknown = [d for d in domains if d not in datasets]
    if unknown:
        raise ValueError(f"unknown domain {unknown[0]!r} (datasets: {sorted(datasets)})")


def domain_prompts(
    chosen: Sequence[str] | None, datasets: Mapping[str, Sequence[Prompt]]
) -> list[Prompt]:
    """The prompts of the ``chosen`` domains (None or empty: every dataset, by name) as one
    pool, domain after domain: what the one-pool curricula draw from, checked so that a
    misspelt domain fails at startup, not as an empty epoch."""
    domains = list(chosen or sorted(datasets))
    check_domains(domains, datasets)
    return [p for d in domains for p in datasets[d]]


class ResamplingPool:
    """One pool of prompts with HR state; ``active()`` is the next epoch's dataset.

    Arrays are aligned with ``prompts``: ``dropped_at[i]`` is the epoch at whose end prompt
    i was dropped (-1: in the pool); ``since[i]`` is the first epoch whose rollouts count for
    it (0, or the epoch it was re-admitted for, so old all-correct records inside the window
    cannot drop a re-admitted prompt again before it is retried).
    """

    def __init__(
        self,
        prompts: Sequence[Prompt],
        rules: ResamplingRules | None,
        salt: str,
        step_prompts: int = 0,
    ):
        self.prompts = list(prompts)
        self.rules = rules
        self.salt = salt
        self.step_prompts = step_prompts  # prompts one step draws from this pool (0: unknown)
        self.ids = np.array([p.id for p in self.prompts], dtype=np.uint64)
        self.dropped_at = np.full(len(self.prompts), -1, dtype=np.int64)
        self.since = np.zeros(len(self.prompts), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.prompts)

    def size(self) -> int:
        """Prompts in the pool (the next epoch's dataset size)."""
        return int((self.dropped_at < 0).sum())

    def active(self) -> list[int]:
        """Indices (into ``prompts``) of the prompts in the pool, in dataset order."""
        return np.flatnonzero(self.dropped_at < 0).tolist()

    def shuffled(self, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
        order = self.active()
        if shuffle:
            seeded_rng(seed, self.salt, "order", epoch).shuffle(order)
        return order

    # -- the rebuild ------------------------------------------------------------------------

    def _align(self, s: PromptSummary, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, n_correct) of the summary for ``ids[rows]``; 0 where the summary lacks one."""
        sid = np.asarray(s.prompt_id, dtype=np.uint64)
        ids = self.ids[rows]
        n = np.zeros(rows.size, np.int64)
        nc = np.zeros(rows.size, np.int64)
        if sid.size and rows.size:
            pos = np.minimum(np.searchsorted(sid, ids), sid.size - 1)
            hit = sid[pos] == ids
            n[hit] = np.asarray(s.n)[pos[hit]]
            nc[hit] = np.asarray(s.n_correct)[pos[hit]]
        return n, nc

    def outcomes(self, epoch: int, history: HistoryReader) -> tuple[np.ndarray, np.ndarray]:
        """Per prompt (all rows): rollouts and correct ones over the window ending at
        ``epoch``, counting only epochs >= ``since``. One summary call for the window, plus
        one per distinct later start (re-admitted prompts), so it stays vectorized."""
        window = self.rules.window if self.rules else 1
        start = max(0, epoch - window + 1)
        all_rows = np.arange(len(self.prompts))
        n, nc = self._align(history.epoch_summary(list(range(start, epoch + 1))), all_rows)
        for s in np.unique(self.since[self.since > start]).tolist():
            rows = np.flatnonzero(self.since == s)
            if s > epoch:
                n[rows], nc[rows] = 0, 0
                continue
            n[rows], nc[rows] = self._align(history.epoch_summary(list(range(s, epoch + 1))), rows)
        return n, nc

    def rebuild(self, seed: int, epoch: int, history: HistoryReader | None) -> dict[str, float]:
        """Apply HR at the end of ``epoch``: drop all-correct prompts, keep mixed, all-wrong
        and unseen ones, then re-admit (by age, by chance, then up to the floor)."""
        was_active = self.dropped_at < 0
        report = {k: 0.0 for k in CATEGORIES}
        if history is None or self.rules is None:  # nothing to decide from, or HR is off
            report["dataset_size"] = float(was_active.sum())
            report["dropped"] = float((~was_active).sum())
            return report
        rules = self.rules
        n, nc = self.outcomes(epoch, history)
        seen = was_active & (n > 0)
        all_correct = seen & (nc == n)
        all_wrong = seen & (nc == 0)
        mixed = seen & ~all_correct & ~all_wrong
        report["all_correct"] = float(all_correct.sum())
        report["mixed"] = float(mixed.sum())
        report["all_wrong"] = float(all_wrong.sum())
        report["unseen"] = float((was_active & (n == 0)).sum())

        previously_out = ~was_active
        self.dropped_at[all_correct] = epoch
        back = np.zeros(len(self.prompts), dtype=bool)
        if rules.readmit_after is not None:
            back |= previously_out & (epoch - self.dropped_at >= rules.readmit_after)
        if rules.readmit_prob > 0:
            gen = np.random.default_rng(_np_seed(seed, self.salt, "readmit", epoch))
            back |= previously_out & (gen.random(len(self.prompts)) < rules.readmit_prob)
        report["readmitted/age_or_prob"] = float(back.sum())
        self._readmit(back, epoch)

        floor = min(self.floor(), len(self))
        short = floor - int((self.dropped_at < 0).sum())
        n_floor = 0
        if short > 0:
            out = np.flatnonzero(self.dropped_at >= 0)
            gen = np.random.default_rng(_np_seed(seed, self.salt, "floor", epoch))
            tiebreak = gen.permutation(out.size)
            if rules.floor_order == "oldest":
                pick = out[np.lexsort((tiebreak, self.dropped_at[out]))][:short]
            else:
                pick = out[tiebreak][:short]
            mask = np.zeros(len(self.prompts), dtype=bool)
            mask[pick] = True
            self._readmit(mask, epoch)
            n_floor = int(pick.size)
        report["readmitted/floor"] = float(n_floor)
        report["readmitted"] = float(back.sum() + n_floor)
        report["dataset_size"] = float((self.dropped_at < 0).sum())
        report["dropped"] = float((self.dropped_at >= 0).sum())
        return report

    def floor(self) -> int:
        """The least pool size a rebuild leaves (before capping at the whole pool)."""
        if self.rules is None:
            return 0
        r = self.rules
        return max(
            r.min_dataset_size,
            math.ceil(r.min_dataset_frac * len(self)),
            math.ceil(r.min_dataset_steps * self.step_prompts),
        )

    def _readmit(self, mask: np.ndarray, epoch: int) -> None:
        self.dropped_at[mask] = -1
        self.since[mask] = epoch + 1

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> StateDict:
        out = np.flatnonzero(self.dropped_at >= 0)
        late = np.flatnonzero(self.since > 0)
        return {
            "dropped": [[int(self.ids[i]), int(self.dropped_at[i])] for i in out],
            "since": [[int(self.ids[i]), int(self.since[i])] for i in late],
        }

    def load_state_dict(self, state: StateDict) -> None:
        self.dropped_at[:] = -1
        self.since[:] = 0
        self._set(self.dropped_at, state.get("dropped", []))
        self._set(self.since, state.get("since", []))

    def _set(self, arr: np.ndarray, pairs: Sequence[Sequence[int]]) -> None:
        if not pairs:
            return
        ids = np.array([p[0] for p in pairs], dtype=np.uint64)
        vals = np.array([p[1] for p in pairs], dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        ids, vals = ids[order], vals[order]
        pos = np.minimum(np.searchsorted(ids, self.ids), ids.size - 1)
        hit = ids[pos] == self.ids
        arr[hit] = vals[pos[hit]]
        missing = ids.size - np.unique(self.ids[hit]).size
        if missing > 0:
            warn(
                f"curriculum state names {missing} prompt ids not in the dataset; ignored",
                stacklevel=3,
            )


def prompts_per_step(config: Mapping[str, Any]) -> int:
    """``run.prompts_per_step`` of the resolved run file; 0 when absent (bare contexts)."""
    run = config.get("run") or {}
    return int(run.get("prompts_per_step") or 0)


def group_size(config: Mapping[str, Any]) -> int:
    """``algorithm.group_size`` of the resolved run file; 8 (its default) when absent."""
    return int(config.get("algorithm", {}).get("group_size", 8))


def _np_seed(seed: int, *parts: Any) -> int:
    return seeded_rng(seed, *parts).getrandbits(63)


class Cursor:
    """A seeded epoch order and a position in it: the part of a curriculum that must resume
    mid-epoch exactly (``state_dict`` keeps the order itself, not just the seed)."""

    def __init__(self) -> None:
        self.epoch = -1
        self.order: list[int] = []
        self.pos = 0

    def start(self, epoch: int, order: list[int]) -> None:
        self.epoch, self.order, self.pos = epoch, order, 0

    def resumed(self, epoch: int) -> bool:
        """True when a restored state already holds this epoch's order (keep it)."""
        return epoch == self.epoch and bool(self.order)

    def take(self, n: int) -> list[int]:
        got = self.order[self.pos : self.pos + max(0, n)]
        self.pos += len(got)
        return got

    @property
    def remaining(self) -> int:
        return len(self.order) - self.pos

    def state_dict(self) -> StateDict:
        return {"epoch": self.epoch, "order": list(self.order), "pos": self.pos}

    def load_state_dict(self, state: StateDict) -> None:
        self.epoch, self.order, self.pos = state["epoch"], list(state["order"]), state["pos"]
