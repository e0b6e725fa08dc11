"""The microkernel: one loop that sequences steps and epochs and emits events.

Per step: curriculum → sampler (G rollouts per prompt) → verifiers by domain → algorithm's
score shaping → history records → (group filtering and refill, when the curriculum asks for
it) → policy update (advantage + loss + optimizer step) → sampler sync → history commit →
events. Per epoch end: the curriculum rebuilds the next epoch from a history reader opened
for that call. The kernel knows roles and their contracts (``srpo.api``), never a plugin.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from srpo import algo
from srpo import events as ev
from srpo.api import HistoryReader, Prompt, RolloutBatch, Scores, warn
from srpo.distributed import Dist
from srpo.errors import PluginError
from srpo.eval.training import SampledEval, held_out_metrics
from srpo.kernel.behaviour import BehaviourMetrics
from srpo.kernel.checkpoint import CheckpointManager
from srpo.kernel.checkpointing import Checkpointing, Counters
from srpo.kernel.metrics import rollout_metrics
from srpo.kernel.overlap import Overlap, stamp
from srpo.kernel.pipeline import RolloutPipeline
from srpo.kernel.roles import EventDispatch, Roles, sync_sampler, takes_seeds
from srpo.kernel.signals import fault_point
from srpo.kernel.verify import verify_batch
from srpo.seeding import prompt_seeds


class HistoryHook(Protocol):
    """What the kernel needs from a history store: append a step's records, commit them,
    and say how far it has committed (checkpoints record it; a resume rewinds to it)."""

    def append(self, **columns: Any) -> None: ...

    def commit(self, step: int) -> None: ...

    @property
    def committed_step(self) -> int | None: ...

    @property
    def committed_records(self) -> int: ...


#: Opens a reader on what the store has committed; the kernel opens one per epoch end and
#: closes it when the curriculum's ``end_epoch`` returns.
OpenReader = Callable[[], AbstractContextManager[HistoryReader]]


@dataclass
class KernelSettings:
    group_size: int
    prompts_per_step: int
    epochs: int
    max_steps: int | None
    eval_every: int
    seed: int
    domains: Sequence[str]  # domain code = index in this list (stored in history)
    checkpoint_every: int = 0  # 0: only at the end (and on a stop or a plugin failure)
    max_staleness: int = 0  # 0: on-policy; k: generation runs up to k steps ahead


@dataclass
class _StepRollouts:
    """What a step's generation rounds produced (before the update)."""

    batch: RolloutBatch
    scores: Scores
    rounds: int
    generated: int


class Kernel(Checkpointing, Overlap):
    """Runs a training run as steps and epochs over the roles it is given."""

    def __init__(
        self,
        roles: Roles,
        policy: Any,
        settings: KernelSettings,
        run_dir: Path,
        config: Mapping[str, Any],
        eval_sets: Mapping[str, Sequence[Prompt]],
        history: HistoryHook | None = None,
        open_reader: OpenReader | None = None,
        checkpoints: CheckpointManager | None = None,
        dist: Dist | None = None,
    ) -> None:
        self.roles, self.policy, self.s = roles, policy, settings
        # Data-parallel runs: rank 0 decides (curriculum) and writes (history, loggers);
        # every rank generates and verifies its share of a step's prompts, then all hold the
        # whole batch. One process is the same code with collectives that return at once.
        self.dist = dist if dist is not None else Dist.local()
        self._seeded = takes_seeds(roles.sampler)
        if self.dist.active and not self._seeded and self.dist.is_main:
            warn(
                f"sampler {type(roles.sampler).__name__} does not take generate(seeds=): "
                "each rank samples from its own RNG, so this run is valid but does not "
                "reproduce a one-process run token for token"
            )
        self.run_dir, self.config, self.eval_sets = run_dir, config, eval_sets
        self.history, self.open_reader = history, open_reader
        self.counters = Counters()
        self.events = EventDispatch(roles)
        self._applied_stage: int | None = None
        self._overridden = False  # whether some stage changed the run file's values
        self.stop_requested: str | None = None
        self._stopped = False  # the last stop decision every rank agreed on
        self.last_eval: dict[str, float] = {}
        self.first_eval: dict[str, float] = {}
        self.checkpoints = checkpoints
        self.behaviour = BehaviourMetrics(config.get("behaviour"))
        self.sampled_eval = SampledEval.from_config(config)
        # Whether the in-memory state is a consistent point to checkpoint: "complete"
        # (between steps), "clean" (inside a step, weights untouched: the snapshot taken at
        # the step's start is still valid) or "dirty" (mid-update: nothing consistent).
        self._phase = "complete"
        self._snapshot: dict[str, Any] | None = None
        self.pipeline = RolloutPipeline(settings.max_staleness)

    @property
    def failure(self) -> PluginError | None:
        """A fatal logger's failure: the run stops after the step in flight."""
        return self.events.failure

    def emit(self, event: ev.Event) -> None:
        self.events.emit(event)
        if self.events.failure is not None:
            self.stop_requested = self.stop_requested or "failure"

    # -- the run ----------------------------------------------------------------------------

    def total_steps(self) -> int | None:
        if self.s.max_steps is not None:
            return self.s.max_steps
        size = self.roles.curriculum.epoch_size()
        if size is None:
            return None
        return self.s.epochs * -(-size // self.s.prompts_per_step)

    def seed_everything(self) -> None:
        random.seed(self.s.seed)
        np.random.seed(self.s.seed % 2**32)
        torch.manual_seed(self.s.seed)

    def run(self) -> str:
        """Train to the end (or until a stop is requested); returns the final status.

        The run ends with a checkpoint of its last complete step (before the final
        evaluation), also when stopped by a signal or a failing plugin, so ``--resume``
        continues exactly where it ended.
        """
        c = self.counters
        try:
            self.emit(ev.RunStart(self.run_dir, self.config, self.total_steps(), c.step))
            self._start_overlap()
            if c.step == 0 and not self._stopping():  # a resumed run is past it (step > 0)
                self.first_eval = self.evaluate("before")
            self._loop()
        except Exception as e:
            self._end_failed(e)
            self.pipeline.close()
            raise
        status = "completed"
        if self.failure is not None:
            status = "failed"
        elif self.stop_requested:
            status = "interrupted"
        self.save_checkpoint(final=True)
        self.pipeline.close()
        if self.failure is not None:
            self._note_checkpoint(self.failure)
        if status == "completed":
            self.last_eval = self.evaluate("after")
        error = "" if self.failure is None else str(self.failure)
        self.emit(ev.RunEnd(c.step, status, self._summary(), error))
        if self.failure is not None:
            raise self.failure
        return status

    def _loop(self) -> None:
        c = self.counters
        while c.epoch < self.s.epochs and not self._done() and not self._stopping():
            if not c.epoch_started:
                self._begin_epoch()
            self._apply_stage_overrides()  # no-op unless resumed into a stage
            while not self._done() and not self._stopping():
                if not self.step():
                    break
            if self._stopped or self._done():  # the step budget ends the run
                return
            self._end_epoch()

    def _stopping(self) -> bool:
        """Whether to stop before the next step: a stop requested on any rank (a signal, a
        failed logger on rank 0) stops every rank at the same point."""
        agreed = self.dist.any(self.stop_requested)
        # decide from the agreed value only: a signal landing after the exchange must not
        # make this rank leave a loop the others stay in (it counts at the next exchange)
        if agreed:
            self.stop_requested = agreed
        self._stopped = bool(agreed)
        return self._stopped

    def _begin_epoch(self) -> None:
        c, cur = self.counters, self.roles.curriculum
        self._phase = "dirty"
        if self.dist.is_main:
            cur.begin_epoch(c.epoch)
        self._sync_curriculum()
        c.epoch_started = True
        self.pipeline.exhausted = False
        self._apply_stage_overrides()
        self.emit(ev.EpochStart(c.epoch, cur.stage, cur.epoch_size()))
        self._phase = "complete"

    def _end_epoch(self) -> None:
        c, cur = self.counters, self.roles.curriculum
        fault_point("epoch_end")
        self._phase = "dirty"

        def end_epoch() -> dict[str, Any]:
            with self.open_reader() if self.open_reader else contextlib.nullcontext() as reader:
                return dict(cur.end_epoch(c.epoch, reader))

        report = self.dist.decide(end_epoch)  # the store is rank 0's
        self._sync_curriculum()
        self.emit(ev.EpochEnd(c.epoch, report))
        c.epoch += 1
        c.epoch_started = False
        self._phase = "complete"

    def _sync_curriculum(self) -> None:
        """Other ranks take rank 0's curriculum state after each of its decisions, so
        ``stage``, ``overrides()`` and ``epoch_size()`` read the same everywhere."""
        if not self.dist.active:
            return
        cur = self.roles.curriculum
        state = self.dist.decide(cur.state_dict)
        if not self.dist.is_main:
            cur.load_state_dict(state)

    def _apply_stage_overrides(self) -> None:
        """Hand the curriculum's per-stage ``algorithm``/``sampler`` overrides to the roles
        whenever the stage changes (derived state: re-done on resume). Each role validates
        its own changes against the run file's values."""
        cur = self.roles.curriculum
        if self._applied_stage == cur.stage:
            return
        self._applied_stage = cur.stage
        self.pipeline.wait()  # no generation runs while a role's options change
        overrides = dict(cur.overrides())
        if not overrides and not self._overridden:
            return
        self._overridden = True
        unknown = sorted(set(overrides) - {"algorithm", "sampler"})
        if unknown:
            raise PluginError(
                f"curriculum stage {cur.stage} overrides {unknown[0]!r}: only "
                "'algorithm' and 'sampler' can change per stage"
            )
        try:
            self.policy.override_algorithm(overrides.get("algorithm", {}))
            self.roles.sampler.override(overrides.get("sampler", {}))
        except PluginError as e:
            raise PluginError(f"curriculum stage {cur.stage} override {e}") from None
        self.s.group_size = self.policy.algo.group_size

    def _summary(self) -> dict[str, float]:
        c = self.counters
        return {
            **{f"before/{k}": v for k, v in self.first_eval.items()},
            **{f"after/{k}": v for k, v in self.last_eval.items()},
            "steps": float(c.step),
            "rollouts": float(c.rollouts),
        }

    def _done(self) -> bool:
        return self.s.max_steps is not None and self.counters.step >= self.s.max_steps

    # -- one step ---------------------------------------------------------------------------

    def step(self) -> bool:
        """One training step; False when the curriculum has no prompts left this epoch."""
        t_start = time.perf_counter()
        timing = {"generate": 0.0, "verify": 0.0, "update": 0.0, "sync": 0.0, "history": 0.0}
        stats: dict[str, float] = {}  # of generation ahead (run.max_staleness > 0)
        if self._staleness:
            # what was submitted ahead is generated before the snapshot: a checkpoint holds it
            timing["wait_rollouts"] = self.pipeline.wait()
        self._snapshot = self.snapshot() if self.checkpoints is not None else None
        self._phase = "clean"
        fault_point("step_start")
        got = self._gather_rollouts(timing, stats)
        if got is None:
            self._phase = "complete"
            return False
        self.emit(ev.RolloutsScored(self.counters.step, got.batch, got.scores))
        self._submit_ahead(timing, stats)  # the next steps' generation runs beside the update
        update_metrics = {**self._train(got.batch, got.scores, timing), **stats}
        self._commit_history(timing)
        metrics = self._step_metrics(got, update_metrics, timing, time.perf_counter() - t_start)
        self._finish_step(metrics)
        return True

    def _gather_rollouts(
        self, timing: dict[str, float], stats: dict[str, float]
    ) -> _StepRollouts | None:
        """Generation rounds until the step has ``prompts_per_step`` accepted groups (one
        round unless the curriculum filters groups); None when the epoch has no prompts.
        The first round's rollouts may have been generated ahead (``run.max_staleness``)."""
        cur = self.roles.curriculum
        parts: list[tuple[RolloutBatch, Scores]] = []
        kept_groups, rounds, generated = 0, 0, 0
        while rounds < max(1, cur.max_generation_rounds):
            ahead = self._take_ahead(timing, stats) if rounds == 0 else None
            if ahead is not None:
                prompts, batch, scores = ahead
            else:
                want = self.s.prompts_per_step - kept_groups
                if self.pipeline.exhausted:  # said at a submission: the epoch has no more
                    prompts = []
                else:
                    prompts = self.dist.decide(functools.partial(cur.next_prompts, want))
                if not prompts:
                    break
            if rounds == 0:
                self.emit(ev.StepStart(self.counters.step, self.counters.epoch))
            rounds += 1
            if ahead is None:
                batch, scores = self._rollouts(prompts, timing, rounds - 1, stats)
            generated += batch.num_rollouts
            self._record_history(batch, scores, timing)
            keep = self.dist.decide(functools.partial(cur.accept_groups, batch, scores))
            if keep is not None:
                rows = keep.to(torch.bool)[batch.group]
                batch, scores = batch.select_groups(keep), scores.select(rows)
            parts.append((batch, scores))
            kept_groups += len(batch.prompts)
            if kept_groups >= self.s.prompts_per_step:
                break
        if rounds == 0:
            return None
        pad = int(self.policy.tokenizer.pad_token_id)
        batch = RolloutBatch.concat([b for b, _ in parts], pad)
        return _StepRollouts(batch, Scores.concat([s for _, s in parts]), rounds, generated)

    def _rollouts(
        self,
        prompts: list[Prompt],
        timing: dict[str, float],
        round_: int,
        stats: dict[str, float],
    ) -> tuple[RolloutBatch, Scores]:
        """Rollouts and scores of ``prompts`` (the whole step's, on every rank), generated
        now: this rank generates and verifies its share, then the shares are gathered in
        order. With generation ahead the engine first takes the policy's weights."""
        if self._staleness:
            stats.update(self._engine_current(timing))
        seeds = prompt_seeds(self.s.seed, self.counters.step, round_, len(prompts))
        t = time.perf_counter()
        batch = self._generate_share(prompts, seeds)
        timing["generate"] += time.perf_counter() - t
        if self._staleness:
            batch = stamp(batch, self.counters.step)
        return self._score_share(batch, timing)

    def verify(self, batch: RolloutBatch) -> Scores:
        return verify_batch(self.roles.verifiers, batch)

    def _train(self, batch: RolloutBatch, scores: Scores, timing: dict[str, float]) -> dict:
        t = time.perf_counter()
        self._phase = "dirty"
        loss_mask = algo.loss_mask(self.policy.algo.overlong, batch)
        staleness = self._staleness_metrics(batch)
        update_metrics = self.policy.update(batch, scores, loss_mask=loss_mask)
        timing["update"] += time.perf_counter() - t
        t = time.perf_counter()
        # generating ahead, the engine takes the weights when it is next idle
        sync_metrics = {} if self._staleness else sync_sampler(self.roles.sampler, self.policy)
        sync_metrics.update(staleness)
        timing["sync"] += time.perf_counter() - t
        fault_point("update")
        self.emit(ev.UpdateDone(self.counters.step, update_metrics))
        return {**update_metrics, **sync_metrics}

    def _record_history(
        self, batch: RolloutBatch, scores: Scores, timing: dict[str, float]
    ) -> None:
        if self.history is None or batch.num_rollouts == 0:
            return
        from srpo.history import rollout_columns

        t = time.perf_counter()
        columns = rollout_columns(
            batch,
            scores,
            epoch=self.counters.epoch,
            step=self.counters.step,
            stage=self.roles.curriculum.stage,
            domain_codes={d: i for i, d in enumerate(self.s.domains)},
            with_tokens=self.history.store_tokens,
        )
        self.history.append(**columns)
        fault_point("history_append")
        timing["history"] += time.perf_counter() - t

    def _commit_history(self, timing: dict[str, float]) -> None:
        t = time.perf_counter()
        if self.history is not None:
            fault_point("history_commit")
            self.history.commit(self.counters.step)
            fault_point("history_committed")
        timing["history"] += time.perf_counter() - t

    def _step_metrics(
        self,
        got: _StepRollouts,
        update_metrics: Mapping[str, float],
        timing: Mapping[str, float],
        total: float,
    ) -> dict[str, float]:
        c, cur = self.counters, self.roles.curriculum
        c.rollouts += got.generated
        metrics = rollout_metrics(got.batch, got.scores, self.s.domains)
        metrics.update(self.behaviour(got.batch, got.scores))
        metrics.update(update_metrics)
        metrics.update(
            {
                "epoch": float(c.epoch),
                "stage": float(cur.stage),
                "generation_rounds": float(got.rounds),
                "rollouts_generated": float(got.generated),
                "rollouts_total": float(c.rollouts),
            }
        )
        metrics.update({f"time/{k}": v for k, v in timing.items()})
        metrics["time/other"] = max(0.0, total - sum(timing.values()))
        metrics["time/step"] = total
        if timing["generate"] > 0:
            metrics["tokens_per_s"] = float(got.batch.response_mask.sum()) / timing["generate"]
        return metrics

    def _finish_step(self, metrics: dict[str, float]) -> None:
        c = self.counters
        if self.dist.is_main:
            self.roles.curriculum.observe(metrics)
        self._sync_curriculum()
        c.step += 1
        if self.s.eval_every and c.step % self.s.eval_every == 0 and not self._done():
            self.evaluate("during")
        self.emit(ev.StepEnd(c.step - 1, c.epoch, metrics))
        self._phase = "complete"
        fault_point("step_end")
        every = self.s.checkpoint_every
        if every and c.step % every == 0 and not self._done():
            self.save_checkpoint()

    def evaluate(self, label: str) -> dict[str, float]:
        """Greedy accuracy on the held-out sets, per domain and overall (and, with
        ``eval.n_samples``, avg@n, pass@k, maj@k: ``srpo.eval.training``)."""
        if not self.eval_sets:
            return {}
        if self._staleness:  # evaluate the policy's current weights
            self._engine_current({"wait_rollouts": 0.0, "sync": 0.0})
        r = self.roles
        metrics = held_out_metrics(
            r.sampler, r.verifiers, self.eval_sets, self.dist, self.sampled_eval, r.curriculum
        )
        self.emit(ev.Evaluation(self.counters.step, label, metrics))
        return metrics
