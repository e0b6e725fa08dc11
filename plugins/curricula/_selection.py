"""Step-level, history-aware prompt selection: draw the prompts likely to give a signal.

A GRPO group of size G teaches nothing when all its rollouts agree (all correct or all
wrong). Each prompt's pass rate p gets a Beta posterior from all its past rollouts (prior
``alpha0``/``beta0``; old counts decay with ``half_life`` steps, so a prompt the policy has
since forgotten or learned is re-estimated), and the chance that its next group is
zero-variance is, in closed form,

    P0 = E[p^G] + E[(1-p)^G] = B(a+G, b) / B(a, b) + B(a, b+G) / B(a, b)

Each step draws its prompts without replacement with probability proportional to the
expected informativeness ``max(min_weight, 1 - P0)``: sampling, not dropping, so solved
prompts come back now and then and the pool never collapses; unseen prompts get the prior.

Counts are learned from each step's groups (``Curriculum.accept_groups`` sees every group's
correctness before training) and kept in curriculum state, so a resumed run draws exactly
the prompts it would have drawn. ``SelectingCursor`` has ``Cursor``'s interface, which is how
``history_resampling`` (``selection: step``) and ``two_stage`` (``resampling: selection``)
use it: an epoch still serves as many prompts as the pool holds, but chosen by weight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from pydantic import Field

from srpo.api import PluginOptions, Prompt, RolloutBatch, Scores, StateDict

from ._common import Cursor, _np_seed


class SelectionRules(PluginOptions):
    """The per-step selection rule (see the module docstring)."""

    alpha0: float = Field(1.0, gt=0.0, description="Beta prior: pseudo-count of correct rollouts")
    beta0: float = Field(1.0, gt=0.0, description="Beta prior: pseudo-count of wrong rollouts")
    half_life: float | None = Field(
        None, gt=0.0, description="steps after which a rollout counts half (None: no decay)"
    )
    min_weight: float = Field(
        0.05,
        gt=0.0,
        le=1.0,
        description="floor on a prompt's weight, so solved prompts still come back",
    )


def _log_beta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def zero_variance_prob(a: np.ndarray, b: np.ndarray, g: int) -> np.ndarray:
    """P(all G correct) + P(all G wrong) for p ~ Beta(a, b), in log space for stability."""
    a_, b_ = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    lb = _log_beta(a_, b_)
    p0 = torch.exp(_log_beta(a_ + g, b_) - lb) + torch.exp(_log_beta(a_, b_ + g) - lb)
    return p0.numpy()


class PassRatePosterior:
    """Decayed per-prompt (correct, wrong) rollout counts, keyed by prompt id.

    Decay is lazy: counts are stored with the step they were last brought up to date at and
    scaled by ``0.5 ** (age / half_life)`` when read, so a step costs only its own prompts.
    """

    def __init__(self, rules: SelectionRules, group_size: int) -> None:
        self.rules = rules
        self.group_size = group_size
        self.t = 0  # steps observed
        self.counts: dict[int, tuple[float, float, int]] = {}  # id -> (correct, wrong, at)

    def _decay(self, age: np.ndarray | int) -> np.ndarray | float:
        if self.rules.half_life is None:
            return np.ones_like(age, dtype=np.float64) if isinstance(age, np.ndarray) else 1.0
        return 0.5 ** (np.asarray(age, np.float64) / self.rules.half_life)

    def observe(self, batch: RolloutBatch, scores: Scores) -> None:
        """Add one step's groups (every group, before any filtering)."""
        self.t += 1
        n_groups = len(batch.prompts)
        if n_groups == 0:
            return
        group = batch.group.to(torch.int64)
        n = torch.bincount(group, minlength=n_groups).tolist()
        nc = torch.bincount(group, weights=scores.correct.to(torch.float64), minlength=n_groups)
        self.group_size = max(1, round(batch.num_rollouts / n_groups))
        for p, k, c in zip(batch.prompts, n, nc.tolist(), strict=True):
            s, f, at = self.counts.get(p.id, (0.0, 0.0, self.t))
            d = float(self._decay(self.t - at))
            self.counts[p.id] = (s * d + c, f * d + (k - c), self.t)

    def beta(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior (a, b) for each id, decayed to now; unseen ids get the prior."""
        s = np.zeros(len(ids))
        f = np.zeros(len(ids))
        at = np.full(len(ids), self.t)
        for j, i in enumerate(ids):
            if (c := self.counts.get(int(i))) is not None:
                s[j], f[j], at[j] = c
        d = self._decay(self.t - at)
        return self.rules.alpha0 + s * d, self.rules.beta0 + f * d

    def weights(self, ids: Sequence[int]) -> np.ndarray:
        """Expected informativeness ``1 - P0``, floored at ``min_weight``."""
        a, b = self.beta(ids)
        p0 = zero_variance_prob(a, b, self.group_size)
        return np.maximum(self.rules.min_weight, 1.0 - p0)

    def state_dict(self) -> StateDict:
        return {
            "t": self.t,
            "group_size": self.group_size,
            "counts": [[i, s, f, at] for i, (s, f, at) in sorted(self.counts.items())],
        }

    def load_state_dict(self, state: StateDict) -> None:
        self.t = int(state["t"])
        self.group_size = int(state["group_size"])
        self.counts = {int(i): (float(s), float(f), int(at)) for i, s, f, at in state["counts"]}


class SelectingCursor(Cursor):
    """A ``Cursor`` whose ``take(n)`` draws n of the epoch's prompts by posterior weight
    (without replacement within the call) instead of the next n in order. The epoch still
    ends after ``len(order)`` prompts. Draws are seeded by (seed, salt, epoch, position), so
    the usual cursor state resumes them exactly."""

    def __init__(
        self,
        posterior: PassRatePosterior,
        key: Callable[[int], int],
        seed: int,
        salt: str,
    ) -> None:
        super().__init__()
        self.posterior = posterior
        self.key = key  # order entry -> prompt id
        self.seed = seed
        self.salt = salt

    def take(self, n: int) -> list[int]:
        k = min(max(0, n), self.remaining, len(self.order))
        if k == 0:
            return []
        w = self.posterior.weights([self.key(i) for i in self.order])
        gen = np.random.default_rng(_np_seed(self.seed, self.salt, "select", self.epoch, self.pos))
        pick = gen.choice(len(self.order), size=k, replace=False, p=w / w.sum())
        self.pos += k
        return [self.order[j] for j in pick.tolist()]


def informative_share(posterior: PassRatePosterior, prompts: Sequence[Prompt]) -> float:
    """Mean expected informativeness (1 - P0, no floor) over ``prompts``; for reports."""
    if not prompts:
        return 0.0
    a, b = posterior.beta([p.id for p in prompts])
    return float(np.mean(1.0 - zero_variance_prob(a, b, posterior.group_size)))
