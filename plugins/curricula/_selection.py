"""Step-level, history-aware prompt selection: draw the prompts likely to give a signal.

A GRPO group of size G teaches nothing when all its rollouts agree (all correct or all
wrong). Each prompt's pass rate p gets a Beta posterior from all its past rollouts (prior
``alpha0``/``beta0``; old counts decay with ``half_life`` steps, so a prompt the policy has
since forgotten or learned is re-estimated), and the chance that its next group is
zero-variance is, in closed form,

    P0 = E[p^G] + E[(1-p)^G] = B(a+G, b) / B(a, b) + B(a, b+G) / B(a, b)

Each step draws its prompts without replacement with probability proportional to the
expected informativeness ``max(min_weight, (1 - P0) ** power)``: sampling, not dropping, so
solved prompts come back now and then and the pool never collapses; unseen prompts get the
prior. ``power`` > 1 sharpens the draw toward the surest prompts: with weights proportional
to (1 - P0) the expected share of informative groups is sum (1 - P0)^2 / sum (1 - P0), which
a large solved majority holds well below 1.

The prior matters more than it looks. Under ``prior: fixed`` (Beta(1, 1) by default) one
all-correct group of 8 leaves P0 = 0.53: a prompt solved once still weighs half a mixed one.
``prior: empirical`` is empirical Bayes: each domain's prior is a Beta fitted, by the
beta-binomial method of moments, to that domain's observed prompts (their decayed counts),
refitted every step. When most prompts are solved and a few are mixed the fitted prior is
U-shaped (a, b < 1), and a single all-correct group then means p is near 1 (P0 ~ 0.9), while
unseen prompts get the domain's current odds. The fit needs ``empirical_min_prompts``
observed prompts of the domain (until then the fixed prior), and its concentration a + b is
capped at the group size, so one group always weighs at least as much as the prior.

Counts are learned from each step's groups (``Curriculum.accept_groups`` sees every group's
correctness before training) and kept in curriculum state, so a resumed run draws exactly
the prompts it would have drawn. ``SelectingCursor`` has ``Cursor``'s interface, which is how
``history_resampling`` (``selection: step``) and ``two_stage`` (``resampling: selection``)
use it: an epoch still serves as many prompts as the pool holds, but chosen by weight.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from srpo.api import PluginOptions, Prompt, RolloutBatch, Scores, StateDict

from ._common import Cursor, _np_seed, group_size


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
    power: float = Field(
        1.0,
        gt=0.0,
        description="weight = (1 - P0) ** power: > 1 draws the surest informative prompts more",
    )
    prior: Literal["fixed", "empirical"] = Field(
        "fixed",
        description="fixed: Beta(alpha0, beta0) for every prompt; empirical: per domain, a Beta "
        "fitted to the domain's observed pass rates (empirical Bayes)",
    )
    empirical_min_prompts: int = Field(
        8, ge=2, description="observed prompts of a domain before its prior is fitted"
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

    def __init__(
        self, rules: SelectionRules, group_size: int, domain_of: Mapping[int, str] | None = None
    ) -> None:
        self.rules = rules
        self.group_size = group_size
        self.domain_of = dict(domain_of or {})  # prompt id -> domain, for empirical priors
        self.t = 0  # steps observed
        self.counts: dict[int, tuple[float, float, int]] = {}  # id -> (correct, wrong, at)
        self._priors: tuple[int, dict[str | None, tuple[float, float]]] | None = None

    @classmethod
    def over(
        cls, rules: SelectionRules, config: Mapping[str, Any], prompts: Sequence[Prompt]
    ) -> PassRatePosterior:
        """A curriculum's posterior over its ``prompts``: the run file's group size (what
        P0 is computed for) and each prompt's domain (the empirical priors are per domain)."""
        return cls(rules, group_size(config), {p.id: p.domain for p in prompts})

    def _decay(self, age: np.ndarray | int) -> np.ndarray | float:
        if self.rules.half_life is None:
            return np.ones_like(age, dtype=np.float64) if isinstance(age, np.ndarray) else 1.0
        return 0.5 ** (np.asarray(age, np.float64) / self.rules.half_life)

    def observe(self, batch: RolloutBatch, scores: Scores) -> None:
        """Add one step's groups (every group, before any filtering)."""
        n_groups = len(batch.prompts)
        if n_groups == 0:
            self.observe_counts([])
            return
        group = batch.group.to(torch.int64)
        n = torch.bincount(group, minlength=n_groups).tolist()
        nc = torch.bincount(group, weights=scores.correct.to(torch.float64), minlength=n_groups)
        self.group_size = max(1, round(batch.num_rollouts / n_groups))
        self.observe_counts(
            [(p.id, p.domain, k, c) for p, k, c in zip(batch.prompts, n, nc.tolist(), strict=True)]
        )

    def observe_counts(self, groups: Sequence[tuple[int, str | None, float, float]]) -> None:
        """One step's groups as (prompt id, domain, rollouts, correct); also how an offline
        replay of a history store feeds it (benchmarks/selection_calibration.py)."""
        self.t += 1
        for pid, domain, k, c in groups:
            s, f, at = self.counts.get(pid, (0.0, 0.0, self.t))
            d = float(self._decay(self.t - at))
            self.counts[pid] = (s * d + c, f * d + (k - c), self.t)
            if domain is not None:
                self.domain_of.setdefault(pid, domain)

    def priors(self) -> dict[str | None, tuple[float, float]]:
        """The prior (a, b) per domain (key None: prompts of no known domain); derived from
        the counts alone, so it needs no state of its own and resumes exactly."""
        if self._priors is not None and self._priors[0] == self.t:
            return self._priors[1]
        fixed = (self.rules.alpha0, self.rules.beta0)
        fits: dict[str | None, tuple[float, float]] = {}
        if self.rules.prior == "empirical" and self.counts:
            ids = list(self.counts)
            table = np.array(list(self.counts.values()), np.float64)  # rows: correct, wrong, at
            s, f, at = table[:, 0], table[:, 1], table[:, 2]
            d = self._decay(self.t - at)
            s, f = s * d, f * d
            domains = np.array([self.domain_of.get(i) for i in ids], dtype=object)
            for dom in {*domains.tolist(), None}:
                rows = np.ones(len(ids), bool) if dom is None else domains == dom
                fits[dom] = self._fit(s[rows], f[rows]) or fixed
        self._priors = (self.t, fits)
        return fits

    def _fit(self, s: np.ndarray, f: np.ndarray) -> tuple[float, float] | None:
        """Beta-binomial method of moments on (correct, wrong) counts; None: too few prompts."""
        n = s + f
        keep = n > 1e-9
        if int(keep.sum()) < self.rules.empirical_min_prompts:
            return None
        s, n = s[keep], n[keep]
        rate = s / n
        m = float(np.clip(rate.mean(), 1e-3, 1 - 1e-3))
        inv_n = float(np.minimum(1.0 / n, 1.0).mean())  # binomial noise in each observed rate
        spread = float(rate.var())
        var_p = (spread - m * (1 - m) * inv_n) / (1.0 - inv_n) if inv_n < 1.0 else spread
        kappa = m * (1 - m) / var_p - 1.0 if var_p > 0 else np.inf
        kappa = float(np.clip(kappa, 0.05, float(self.group_size)))
        return m * kappa, (1 - m) * kappa

    def beta(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior (a, b) for each id, decayed to now; unseen ids get the prior."""
        s = np.zeros(len(ids))
        f = np.zeros(len(ids))
        at = np.full(len(ids), self.t)
        a0 = np.full(len(ids), self.rules.alpha0)
        b0 = np.full(len(ids), self.rules.beta0)
        priors = self.priors()
        fixed = (self.rules.alpha0, self.rules.beta0)
        for j, i in enumerate(ids):
            if (c := self.counts.get(int(i))) is not None:
                s[j], f[j], at[j] = c
            if priors:
                # a domain not observed yet keeps the fixed prior: another domain's odds say
                # nothing about it (stage 1's code must not inherit stage 0's solved math)
                dom = self.domain_of.get(int(i))
                a0[j], b0[j] = priors[None] if dom is None else priors.get(dom, fixed)
        d = self._decay(self.t - at)
        return a0 + s * d, b0 + f * d

    def informative_prob(self, ids: Sequence[int]) -> np.ndarray:
        """The posterior chance ``1 - P0`` that each prompt's next group has a signal."""
        a, b = self.beta(ids)
        return np.clip(1.0 - zero_variance_prob(a, b, self.group_size), 0.0, 1.0)

    def weights(self, ids: Sequence[int]) -> np.ndarray:
        """Draw weights: ``informative_prob ** power``, floored at ``min_weight``."""
        return np.maximum(self.rules.min_weight, self.informative_prob(ids) ** self.rules.power)

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
        self._priors = None


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
    return float(np.mean(posterior.informative_prob([p.id for p in prompts])))
