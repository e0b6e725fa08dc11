"""The RL update: ``ppo_epochs`` × ``mini_batches`` optimizer steps over a batch, each
accumulating the loss's gradient over micro-batches (``srpo.policy.microbatch``): the
mini-batch's advantages once, then one forward/backward per micro-batch whose loss is its
share of the mini-batch's (``srpo.ops.grpo_loss(advantages=, denominator=)``).

``PolicyUpdate`` is the part of ``Policy`` that turns a scored batch into optimizer steps:
old and reference log-probs, skipping micro-batches that cannot change the weights, the
data-parallel share of each rank, the loss and its stats. It is a base class of ``Policy``
(not a separate object) because it works on the policy's own model, optimizer and loss; the
attributes it reads are declared below and set by ``Policy.__init__``; ``response_logprobs``
and ``_refresh_replica`` are ``Policy``'s methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from srpo.algo import LossConfig, correction_weights
from srpo.config import PolicySection
from srpo.distributed import Dist
from srpo.distributed.fsdp import is_sharded
from srpo.ops import advantage_pass
from srpo.policy.memory import PeakMemory, release_freed_host_memory
from srpo.policy.microbatch import (
    budget_micro_batches,
    count_micro_batches,
    group_rows,
    mini_batches,
    row_tokens,
    split_across_ranks,
)
from srpo.policy.optimizer import clip_and_step
from srpo.policy.packing import token_slots
from srpo.policy.recompute import ActivationRecompute
from srpo.policy.update_stats import UpdateStats, flat_micro_stats
from srpo.types import RolloutBatch, Scores


@dataclass
class MiniBatchPlan:
    """One optimizer step, decided once per update (the rewards do not change between PPO
    epochs): the mini-batch's advantages, its loss denominator and this rank's passes."""

    advantages: torch.Tensor  # [N] float64 on the device (the mini-batch's rows; 0 elsewhere)
    denominator: float  # the mini-batch's tokens (sequences) ÷ world size
    micro: list[torch.Tensor]  # this rank's passes (row indices), live rows first
    dead: list[bool]  # per pass: every advantage exactly 0 (skippable when that is exact)
    adv_stats: dict[str, float]  # adv_abs_mean, zero_adv_group_frac of the mini-batch


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
    recompute: ActivationRecompute

    def update(
        self, batch: RolloutBatch, scores: Scores, loss_mask: torch.Tensor | None = None
    ) -> dict[str, float]:
        """One training batch: ``ppo_epochs`` × ``mini_batches`` optimizer steps, each
        accumulating gradients over the micro-batches ``srpo.policy.microbatch`` plans.

        ``loss_mask`` [N, T] (default: the response mask) lets algorithms drop tokens, e.g.
        DAPO's overlong filtering of truncated responses. Host syncs: one per optimizer step
        (the gradient norm decides whether the step is taken) and one for the stats.
        """
        if batch.num_rollouts == 0:
            return {}
        if not batch.temperature > 0:
            raise ValueError("cannot train on greedy rollouts (RolloutBatch.temperature is 0)")
        release_freed_host_memory(self.device)  # what generation freed, before the peak
        peak = PeakMemory(self.device)
        self.recompute.begin_update(self.device)
        self.model.train()
        mask = batch.response_mask if loss_mask is None else loss_mask
        lengths = row_tokens(batch)
        plans = [
            self._plan(batch, scores, mask, lengths, groups)
            for groups in mini_batches(len(batch.prompts), self.cfg.mini_batches)
        ]
        mine = torch.cat([rows for p in plans for rows in p.micro] or [torch.zeros(0).long()])
        reuse_logp = self.cfg.ppo_epochs == 1 and len(plans) == 1
        old_logp = None if reuse_logp else self._old_logprobs(batch, mine, lengths)
        ref_logp = (
            self._logprobs_all(self.ref_model, batch, mine, lengths) if self.ref_model else None
        )
        stats = UpdateStats()
        for _ in range(self.cfg.ppo_epochs):
            for plan in plans:
                self._optimizer_step(batch, scores, mask, plan, old_logp, ref_logp, stats)
        metrics = stats.result(self.dist)
        self._refresh_replica()
        steps = self.cfg.ppo_epochs * len(plans)
        # each rank's passes add up to world × its share of the step's loss (FSDP averages)
        metrics["loss"] = metrics.pop("loss_sum", 0.0) / (steps * self.dist.world_size)
        for key in ("adv_abs_mean", "zero_adv_group_frac"):
            metrics[key] = sum(p.adv_stats[key] for p in plans) / len(plans)
        skipped = metrics.pop("skipped_tokens", 0.0)
        metrics["skipped_token_frac"] = skipped / max(metrics.get("tokens", 0.0), 1.0)
        slots, real = metrics.pop("token_slots", 0.0), metrics.pop("real_tokens", 0.0)
        metrics["update/pad_frac"] = slots / real - 1.0 if real else 0.0
        passes = metrics.pop("passes", 0.0)
        metrics["memory/recompute_frac"] = metrics.pop("recomputed", 0.0) / max(passes, 1.0)
        metrics["memory/selective_frac"] = metrics.pop("selective", 0.0) / max(passes, 1.0)
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["memory/update_peak_gb"] = peak.read_gb()  # machine-dependent, like time/*
        self.model.eval()
        release_freed_host_memory(self.device)  # the passes' activations, before generation
        return metrics

    # -- planning --------------------------------------------------------------------------

    def _plan(
        self,
        batch: RolloutBatch,
        scores: Scores,
        mask: torch.Tensor,
        lengths: torch.Tensor,
        groups: list[int],
    ) -> MiniBatchPlan:
        """Advantages of the mini-batch's whole groups (one pass), its denominator over every
        rank's rows, and this rank's passes: live rows (some advantage) and dead ones (every
        advantage exactly 0) planned apart, so skipping the dead changes no other pass."""
        cfg = self.loss_config
        rows = group_rows(batch, groups)
        passed = advantage_pass(scores.reward[rows], batch.group[rows], cfg)
        adv_rows = passed.advantages.cpu()
        advantages = torch.zeros(batch.num_rollouts, dtype=torch.float64)
        advantages[rows] = adv_rows
        seq_level = cfg.aggregation != "token-mean"
        m = mask[rows]
        units = float((m.any(1) if seq_level else m).double().sum())
        denominator = max(units, 1.0) / self.dist.world_size
        dead_rows = set(rows[adv_rows == 0].tolist())
        budget = self.cfg.max_tokens_per_micro_batch
        micro: list[torch.Tensor] = []
        dead: list[bool] = []
        if budget is None:  # whole groups, about micro_batch_size rows, as before
            mine = self._my_groups(groups)
            flat = [g for g in mine if dead_rows.issuperset(group_rows(batch, [g]).tolist())]
            for is_dead, part in ((False, [g for g in mine if g not in flat]), (True, flat)):
                for mb in count_micro_batches(batch, part, self.cfg.micro_batch_size):
                    micro.append(torch.tensor(mb, dtype=torch.long))
                    dead.append(is_dead)
        else:
            tokens = {int(r): int(lengths[r]) for r in rows}
            ranks = split_across_ranks(tokens, self.dist.world_size)
            my_rows = ranks[self.dist.rank]
            padded = not self.cfg.padding_free
            for is_dead in (False, True):
                part = {r: tokens[r] for r in my_rows if (r in dead_rows) == is_dead}
                for mb in budget_micro_batches(part, budget, padded):
                    micro.append(torch.tensor(mb, dtype=torch.long))
                    dead.append(is_dead)
        return MiniBatchPlan(
            advantages.to(self.device),
            denominator,
            micro,
            dead,
            {
                "adv_abs_mean": float(passed.adv_abs_mean),
                "zero_adv_group_frac": float(passed.zero_adv_group_frac),
            },
        )

    # -- one optimizer step ----------------------------------------------------------------

    def _optimizer_step(
        self,
        batch: RolloutBatch,
        scores: Scores,
        mask: torch.Tensor,
        plan: MiniBatchPlan,
        old_logp: torch.Tensor | None,
        ref_logp: torch.Tensor | None,
        stats: UpdateStats,
    ) -> None:
        """Accumulate the gradient of one mini-batch over its passes, then step. Each pass's
        loss is divided by the mini-batch's token (sequence) count, so the passes add up to
        one pass over the whole mini-batch.

        A pass whose rows all have zero advantage, under a loss where that means a zero
        gradient, is not run at all: its tokens still count in the denominator, and the
        gradient (hence the step) is bit-identical to running it.

        Data-parallel: every rank holds the whole batch and takes its share of the
        mini-batch's rows; the denominator counts every rank's, ÷ world size because FSDP
        averages the ranks' gradients, so N ranks step exactly as one process. Ranks run the
        same number of forward/backward passes (FSDP's collectives pair up): one with fewer
        passes to run adds idle ones that contribute a zero gradient.
        """
        skip = self.cfg.skip_zero_advantage and self.loss_config.zero_advantage_means_zero_gradient
        will_run = sum(not (skip and d) for d in plan.dead)
        runs = self.dist.all_max(will_run)
        self.optimizer.zero_grad(set_to_none=True)
        for rows, is_dead in zip(plan.micro, plan.dead, strict=True):
            m_host = mask[rows]
            tokens = max(float(m_host.sum()), 1.0)
            if skip and is_dead:
                stats.add(flat_micro_stats(m_host), tokens)
                stats.add({"skipped_tokens": float(m_host.sum())}, 0.0)
                continue
            layout = self._layout(batch, rows)
            level = self.recompute.use_for(int(layout["token_slots"]))
            micro_stats = self._micro_step(batch, scores, rows, m_host, plan, old_logp, ref_logp)
            stats.add(micro_stats, tokens)
            recompute = {
                "recomputed": float(level == "full"),
                "selective": float(level == "selective"),
            }
            stats.add({**layout, "passes": 1.0, **recompute}, 0.0)
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

    def _layout(self, batch: RolloutBatch, rows: torch.Tensor) -> dict:
        """Token slots the pass's forward held and the real tokens among them."""
        s = token_slots(batch, rows)
        slots = s.packed if self.cfg.padding_free else s.padded
        return {"token_slots": float(slots), "real_tokens": float(s.tokens)}

    def _micro_step(
        self,
        batch: RolloutBatch,
        scores: Scores,
        rows: torch.Tensor,
        m_host: torch.Tensor,
        plan: MiniBatchPlan,
        old_logp: torch.Tensor | None,
        ref_logp: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """Forward, loss and backward of one pass; returns its detached stats.

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
            advantages=plan.advantages[rows.to(self.device)],
            denominator=plan.denominator,
            # only when there is one: a custom loss_fn without the argument keeps working
            **({} if weight is None else {"token_weight": weight}),
        )
        out.loss.backward()
        tokens = float(m_host.sum())
        stats = {
            k: v.detach()
            for k, v in out.stats.items()
            if k not in ("adv_abs_mean", "zero_adv_group_frac")  # the plan's (whole groups)
        }
        stats["loss_sum"] = out.loss.detach()
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
        self.recompute.use_for(token_slots(batch, torch.tensor([0])).padded)
        logp, _ = self.response_logprobs(self.model, batch, torch.tensor([0]))
        (logp.sum() * 0.0).backward()

    @torch.no_grad()
    def _logprobs_all(
        self, model: Any, batch: RolloutBatch, rows: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Log-probs of ``rows`` under ``model``, zero elsewhere, in passes of
        ``max_tokens_per_logprob_batch`` tokens (no activations kept: they may be larger
        than the training passes) or of ``micro_batch_size`` rows. A sharded model runs as
        many forwards on every rank (idle ones to fill up)."""
        out = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=self.device)
        budget = self.cfg.max_tokens_per_logprob_batch or self.cfg.max_tokens_per_micro_batch
        if budget is None:
            size = self.cfg.micro_batch_size
            micro = [rows[i : i + size] for i in range(0, len(rows), size)]
        else:
            tokens = {int(r): int(lengths[r]) for r in rows}
            plan = budget_micro_batches(tokens, budget, padded=not self.cfg.padding_free)
            micro = [torch.tensor(mb, dtype=torch.long) for mb in plan]
        for part in micro:
            out[part] = self.response_logprobs(model, batch, part)[0]
        if is_sharded(model):
            for _ in range(self.dist.all_max(len(micro)) - len(micro)):
                self.response_logprobs(model, batch, torch.tensor([0]))
        return out

    def _old_logprobs(
        self, batch: RolloutBatch, rows: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        self.model.eval()
        out = self._logprobs_all(self.model, batch, rows, lengths)
        self.model.train()
        return out
