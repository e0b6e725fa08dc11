"""The kernel's side of bounded staleness (``run.max_staleness``): when to push weights, what
to submit ahead, and the staleness of what it trains on. A mixin of ``Kernel``, kept apart so
the loop reads as the loop; the schedule and its guarantees are ``srpo.kernel.pipeline``'s.

With ``max_staleness: 0`` (the default) none of this runs: the step is today's sequence and
its metrics are unchanged.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from srpo import algo
from srpo.api import Prompt, RolloutBatch, Scores
from srpo.distributed import Dist
from srpo.errors import PluginError
from srpo.kernel.pipeline import Pending, RolloutPipeline
from srpo.kernel.roles import sync_sampler
from srpo.kernel.signals import fault_point
from srpo.seeding import prompt_seeds

if TYPE_CHECKING:
    from srpo.kernel.checkpointing import Counters
    from srpo.kernel.loop import KernelSettings
    from srpo.kernel.roles import Roles


class Overlap:
    """Bounded-staleness generation for ``Kernel`` (which provides the attributes below)."""

    roles: Roles
    policy: Any
    dist: Dist
    counters: Counters
    pipeline: RolloutPipeline
    stop_requested: str | None
    s: KernelSettings
    _seeded: bool

    if TYPE_CHECKING:  # Kernel's

        def verify(self, batch: RolloutBatch) -> Scores: ...

    @property
    def _staleness(self) -> int:
        return self.pipeline.max_staleness

    def _start_overlap(self) -> None:
        """Before the first generation: the sampler promises to generate beside the update
        (it may refuse, with one line); the engine holds the policy's current weights."""
        if not self._staleness:
            return
        sampler = self.roles.sampler
        try:
            sampler.prepare_overlap()
        except PluginError:
            raise
        except Exception as e:
            name = type(sampler).__name__
            raise PluginError(
                f"sampler {name} cannot generate beside the update: {type(e).__name__}: {e}"
            ) from e
        self.pipeline.engine_version = self.counters.step
        self.pipeline.engine_idle()  # its idle time counts from here

    def _engine_current(self, timing: dict[str, float]) -> dict[str, float]:
        """Push the policy's weights to an idle engine if it is behind the trainer: before
        any generation from the main thread and before each submission. Sync metrics."""
        p = self.pipeline
        timing["wait_rollouts"] += p.wait()
        if p.engine_version == self.counters.step:
            return {}
        t = time.perf_counter()
        metrics = sync_sampler(self.roles.sampler, self.policy)
        timing["sync"] += time.perf_counter() - t
        p.engine_version = self.counters.step
        return metrics

    def _generate_share(self, prompts: list[Prompt], seeds: list[int]) -> RolloutBatch:
        """This rank's share of a step's prompts, generated (on the generation thread when
        submitted ahead); scoring stays on the main thread (verifiers may use signals)."""
        share = self.dist.shard(len(prompts))
        extra = {"seeds": [seeds[i] for i in share]} if self._seeded else {}
        sampler = self.roles.sampler
        try:
            batch = sampler.generate([prompts[i] for i in share], self.s.group_size, **extra)
        except Exception as e:
            raise PluginError(
                f"sampler {type(sampler).__name__} failed: {type(e).__name__}: {e}"
            ) from e
        fault_point("generate")
        return batch

    def _score_share(
        self, batch: RolloutBatch, timing: dict[str, float]
    ) -> tuple[RolloutBatch, Scores]:
        """Score this rank's share, then gather every rank's (in order)."""
        t = time.perf_counter()
        # the algorithm shapes rewards (not correctness) before history and group filtering
        scores = algo.shape_scores(self.policy.algo.overlong, batch, self.verify(batch))
        timing["verify"] += time.perf_counter() - t
        fault_point("verify")
        if self.dist.active:
            parts = self.dist.all_gather((batch, scores))
            pad = int(self.policy.tokenizer.pad_token_id)
            batch = RolloutBatch.concat([b for b, _ in parts], pad)
            scores = Scores.concat([sc for _, sc in parts])
        return batch, scores

    def _take_ahead(
        self, timing: dict[str, float], stats: dict[str, float]
    ) -> tuple[list[Prompt], RolloutBatch, Scores] | None:
        """The rollouts generated ahead for this step, scored; None when there are none.
        A batch older than ``max_staleness`` versions (a resume with a smaller bound) is
        regenerated from its prompts and seeds by the current weights, and counted; so is
        one whose generation failed before a checkpoint (not counted: nothing was dropped)."""
        step = self.counters.step
        p = self.pipeline.take(step)
        if p is None:
            return None
        stale = p.batch is not None and self.pipeline.too_stale(p, step)
        if stale or p.batch is None:
            if p.batch is not None:
                self.pipeline.dropped += p.batch.num_rollouts * self.dist.world_size
            stats.update(self._engine_current(timing))
            t = time.perf_counter()
            batch = self._generate_share(p.prompts, p.seeds)
            timing["generate"] += time.perf_counter() - t
            version = self.counters.step
        else:
            batch, version = p.batch, p.version
            stats["time/generate_ahead"] = p.seconds
        batch = stamp(batch, version)
        batch, scores = self._score_share(batch, timing)
        return p.prompts, batch, scores

    def _submit_ahead(self, timing: dict[str, float], stats: dict[str, float]) -> None:
        """Submit the generations of the next steps, up to ``max_staleness`` ahead, with the
        policy's weights of now (before this step's update): they run beside it."""
        k, p, c = self._staleness, self.pipeline, self.counters
        if not k or self.stop_requested:
            return
        t = p.next_step if p.next_step is not None else c.step + 1
        limit = c.step + k
        if (m := self.s.max_steps) is not None:
            limit = min(limit, m - 1)
        cur = self.roles.curriculum
        while t <= limit and not p.exhausted:
            want = self.s.prompts_per_step
            prompts = self.dist.decide(functools.partial(cur.next_prompts, want))
            if not prompts:
                p.exhausted = True
                break
            stats.update(self._engine_current(timing))
            seeds = prompt_seeds(self.s.seed, t, 0, len(prompts))
            p.submit(Pending(t, p.engine_version, list(prompts), seeds), self._generate_share)
            t += 1

    def _staleness_metrics(self, batch: RolloutBatch) -> dict[str, float]:
        """Versions behind the trainer of the rollouts trained on this step, rollouts dropped
        as too stale, and how long the generation thread had nothing to do."""
        if not self._staleness:
            return {}
        out = {
            "staleness/dropped": float(self.pipeline.take_dropped()),
            "time/engine_idle": self.pipeline.engine_idle(),
        }
        versions = batch.policy_version
        if versions is not None and versions.numel():  # none when every group was rejected
            lag = (self.counters.step - versions).double()
            out |= {"staleness/mean": float(lag.mean()), "staleness/max": float(lag.max())}
        return out

    def _pipeline_state(self) -> dict[str, Any]:
        """The checkpoint's share: generated, untrained rollouts (only when there can be).
        Each rank holds its share of a step's rollouts; the checkpoint holds the whole step
        (gathered: every rank takes a snapshot at the same point), so a resume splits it
        again, also over another number of ranks."""
        if not self._staleness and not self.pipeline.pending:
            return {}
        state = self.pipeline.state_dict()
        if self.dist.active:
            pad = int(self.policy.tokenizer.pad_token_id)
            for p in state["pending"]:
                parts = self.dist.all_gather(p["batch"])
                failed = any(b is None for b in parts)  # generated again on resume
                p["batch"] = None if failed else RolloutBatch.concat(parts, pad)
        return {"pipeline": state}

    def _load_pipeline_state(self, state: Mapping[str, Any]) -> None:
        saved = state.get("pipeline")
        if saved and self.dist.active:  # this rank's share of each step's rollouts
            saved = {**saved, "pending": [dict(p) for p in saved["pending"]]}
            for p in saved["pending"]:
                if p["batch"] is not None:
                    keep = torch.zeros(len(p["prompts"]), dtype=torch.bool)
                    keep[list(self.dist.shard(len(p["prompts"])))] = True
                    p["batch"] = p["batch"].select_groups(keep)
        self.pipeline.load_state_dict(saved)
        self.pipeline.engine_version = self.counters.step


def stamp(batch: RolloutBatch, version: int) -> RolloutBatch:
    """``batch`` with every rollout's policy version set to ``version``."""
    batch.policy_version = torch.full((batch.num_rollouts,), version, dtype=torch.int64)
    return batch
