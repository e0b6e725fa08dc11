"""The RL update: ``ppo_epochs`` × ``mini_batches`` optimizer steps over a batch, each
accumulating the loss's gradient over micro-batches (``srpo.policy.microbatch``).

``PolicyUpdate`` is the part of ``Policy`` that turns a scored batch into optimizer steps:
old and reference log-probs, skipping micro-batches that cannot change the weights, the
data-parallel share of each rank, the loss and its stats. It is a base class of ``Policy``
(not a separate object) because it works on the policy's own model, optimizer and loss; the
attributes it reads are declared below and set by ``Policy.__init__``; ``response_logprobs``
and ``_refresh_replica`` are ``Policy``'s methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from srpo.algo import ADVANTAGES, LossConfig, correction_weights
from srpo.config import PolicySection
from srpo.distributed import Dist
from srpo.distributed.fsdp import is_sharded
from srpo.policy.microbatch import (
    group_rows,
    loss_share,
    loss_units,
    micro_batches,
    mini_batches,
)
from srpo.policy.optimizer import clip_and_step
from srpo.policy.update_stats import UpdateStats, flat_micro_stats
from srpo.types import RolloutBatch, Scores


class PolicyUpdate:
    """The update of ``Policy`` (its base class); see the module docstring."""

    cfg: PolicySection
    device: torch.device
    dist: Dist
    model: Any
    ref_model: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: Callable[..., Any]
    loss_config: LossConfig

    def update(
        self, batch: RolloutBatch, scores: Scores, loss_mask: torch.Tensor | None = None
    ) -> dict[str, float]:
        """One training batch: ``ppo_epochs`` × ``mini_batches`` optimizer steps, each
        accumulating gradients over group-aligned micro-batches.

        ``loss_mask`` [N, T] (default: the response mask) lets algorithms drop tokens, e.g.
        DAPO's overlong filtering of truncated responses. Host syncs: one per optimizer step
        (the gradient norm decides whether the step is taken) and one for the stats.
        """
        if batch.num_rollouts == 0:
            return {}
        if not batch.temperature > 0:
            raise ValueError("cannot train on greedy rollouts (RolloutBatch.temperature is 0)")
        self.model.train()
        mask = batch.response_mask if loss_mask is None else loss_mask
        minis = mini_batches(len(batch.prompts), self.cfg.mini_batches)
        mine = [g for m in minis for g in self._my_groups(m)]  # every group, in one process
        reuse_logp = self.cfg.ppo_epochs == 1 and len(minis) == 1
        old_logp = None if reuse_logp else self._old_logprobs(batch, mine)
        ref_logp = self._logprobs_all(self.ref_model, batch, mine) if self.ref_model else None
        stats = UpdateStats()
        for _ in range(self.cfg.ppo_epochs):
            for groups in minis:
                self._optimizer_step(batch, scores, mask, groups, old_logp, ref_logp, stats)
        metrics = stats.result(self.dist)
        self._refresh_replica()
        skipped = metrics.pop("skipped_tokens", 0.0)
        metrics["skipped_token_frac"] = skipped / max(metrics.get("tokens", 0.0), 1.0)
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        self.model.eval()
        return metrics

    def _optimizer_step(
        self,
        batch: RolloutBatch,
        scores: Scores,
        mask: torch.Tensor,
        groups: list[int],
        old_logp: torch.Tensor | None,
        ref_logp: torch.Tensor | None,
        stats: UpdateStats,
    ) -> None:
        """Accumulate the gradient of one mini-batch over its micro-batches, then step. Each
        micro-batch's loss is weighted by its share of the mini-batch's tokens (sequences,
        for the seq-mean aggregations), so the step equals one pass over the whole batch.

        A micro-batch whose groups all have zero advantage, under a loss where that means a
        zero gradient, is not run at all: its tokens still count in the shares, and the
        gradient (hence the step) is bit-identical to running it.

        Data-parallel: every rank holds the whole batch and takes its share of the
        mini-batch's groups; shares are of the *global* token (sequence) count, and FSDP sums
        the ranks' gradients, so N ranks step exactly as one process. Ranks run the same
        number of forward/backward passes (FSDP's collectives pair up): one with fewer
        micro-batches to run adds idle ones that contribute a zero gradient.
        """
        flat = self._flat_groups(batch, scores, groups)
        seq_level = self.loss_config.aggregation != "token-mean"
        total = loss_units(mask[group_rows(batch, groups)], seq_level)
        mine = self._my_groups(groups)
        # informative groups first, flat ones in micro-batches of their own (skipped below
        # when that is exact); the same order with or without skipping, so both give the
        # same micro-batches and the same floating-point sums
        size = self.cfg.micro_batch_size
        micro = micro_batches(batch, [g for g in mine if g not in flat], size)
        micro += micro_batches(batch, [g for g in mine if g in flat], size)
        will_run = sum(not self._no_gradient(batch, scores, rows) for rows in micro)
        runs = self.dist.all_max(will_run)
        self.optimizer.zero_grad(set_to_none=True)
        for rows in micro:
            m_host = mask[rows]
            tokens = max(float(m_host.sum()), 1.0)
            if self._no_gradient(batch, scores, rows):
                stats.add(flat_micro_stats(m_host), tokens)
                stats.add({"skipped_tokens": float(m_host.sum())}, 0.0)
                continue
            share = loss_share(m_host, total, seq_level, self.dist.world_size)
            micro_stats = self._micro_step(batch, scores, rows, m_host, old_logp, ref_logp, share)
            stats.add(micro_stats, tokens)
        for _ in range(runs - will_run):
            self._idle_micro_step(batch)
        if runs == 0:  # what backward of an all-zero loss leaves: zero gradients, still a step
            for p in self.model.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
        norm = clip_and_step(
            self.model, self.optimizer, self.scheduler, self.cfg.optimizer.grad_clip
        )
        stats.add({"grad_norm": norm}, 1.0)

    def _flat_groups(self, batch: RolloutBatch, scores: Scores, groups: list[int]) -> set[int]:
        """The groups whose advantages are all exactly 0 under the run's own estimator."""
        rows = group_rows(batch, groups)
        if rows.numel() == 0:
            return set()
        cfg = self.loss_config
        adv = ADVANTAGES.get(cfg.advantage)(scores.reward[rows], batch.group[rows], cfg)
        live = torch.zeros(len(batch.prompts), dtype=torch.bool)
        live[batch.group[rows][adv.advantages != 0]] = True
        return {g for g in groups if not live[g]}

    def _no_gradient(self, batch: RolloutBatch, scores: Scores, rows: torch.Tensor) -> bool:
        """Whether this micro-batch cannot change the weights: every advantage exactly 0
        (by the run's own estimator, on the rows the loss would see) and nothing else in
        the loss gives a gradient."""
        cfg = self.loss_config
        if not (self.cfg.skip_zero_advantage and cfg.zero_advantage_means_zero_gradient):
            return False
        adv = ADVANTAGES.get(cfg.advantage)(scores.reward[rows], batch.group[rows], cfg)
        return bool((adv.advantages == 0).all())

    def _micro_step(
        self,
        batch: RolloutBatch,
        scores: Scores,
        rows: torch.Tensor,
        m_host: torch.Tensor,
        old_logp: torch.Tensor | None,
        ref_logp: torch.Tensor | None,
        share: float,
    ) -> dict[str, torch.Tensor]:
        """Forward, loss and backward of one micro-batch; returns its detached stats.

        Rollout correction (``algorithm.rollout_correction``): the sampler's log-probs
        (``batch.behaviour_logp``) against the trainer's ``old`` give per-token weights on the
        surrogate term (None for mode ``none``) and the ``mismatch_*`` stats."""
        logp, entropy = self.response_logprobs(self.model, batch, rows, True)
        m = m_host.to(self.device)
        old = logp.detach() if old_logp is None else old_logp[rows]
        behaviour = batch.behaviour_logp[rows].to(self.device)
        weight, mismatch = correction_weights(
            old, behaviour, m, self.loss_config.rollout_correction
        )
        out = self.loss_fn(
            scores.reward[rows].to(self.device),
            batch.group[rows].to(self.device),
            logp,
            old,
            m,
            None if ref_logp is None else ref_logp[rows],
            cfg=self.loss_config,
            # only when there is one: a custom loss_fn without the argument keeps working
            **({} if weight is None else {"token_weight": weight}),
        )
        (out.loss * share).backward()
        tokens = float(m_host.sum())
        stats = {k: v.detach() for k, v in out.stats.items()}
        stats["loss"] = out.loss.detach()
        if tokens:
            if entropy is not None:
                stats["entropy"] = (entropy * m).sum() / tokens
            stats["behaviour_logp_gap"] = ((old - behaviour).abs() * m).sum() / tokens
            stats.update(mismatch)
        return stats

    def _my_groups(self, groups: list[int]) -> list[int]:
        """This rank's share of ``groups`` (all of them in one process)."""
        return [groups[i] for i in self.dist.shard(len(groups))]

    def _idle_micro_step(self, batch: RolloutBatch) -> None:
        """A forward/backward that changes no gradient, so this rank joins FSDP's
        collectives of a micro-batch it does not have (one row, loss times zero)."""
        logp, _ = self.response_logprobs(self.model, batch, torch.tensor([0]))
        (logp.sum() * 0.0).backward()

    @torch.no_grad()
    def _logprobs_all(
        self, model: Any, batch: RolloutBatch, groups: list[int] | None = None
    ) -> torch.Tensor:
        """Log-probs of the rows of ``groups`` (default: all) under ``model``, zero elsewhere.
        A sharded model runs as many forwards on every rank (idle ones to fill up)."""
        out = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=self.device)
        groups = list(range(len(batch.prompts))) if groups is None else groups
        micro = micro_batches(batch, groups, self.cfg.micro_batch_size)
        for rows in micro:
            out[rows] = self.response_logprobs(model, batch, rows)[0]
        if is_sharded(model):
            for _ in range(self.dist.all_max(len(micro)) - len(micro)):
                self.response_logprobs(model, batch, torch.tensor([0]))
        return out

    def _old_logprobs(self, batch: RolloutBatch, groups: list[int] | None = None) -> torch.Tensor:
        self.model.eval()
        out = self._logprobs_all(self.model, batch, groups)
        self.model.train()
        return out
