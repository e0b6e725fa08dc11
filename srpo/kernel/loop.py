"""The microkernel: one loop that sequences steps and epochs and emits events.

Per step: curriculum → sampler (G rollouts per prompt) → verifiers by domain → (group
filtering and refill, when the curriculum asks for it) → policy update (advantage + loss +
optimizer step) → history hook → events. Per epoch end: the curriculum rebuilds the next
epoch, reading the history store. The kernel knows roles, never concrete plugins.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import ValidationError

from srpo.algo.dapo import OverlongOptions, overlong_filter_mask, soft_overlong_penalty
from srpo.api import Curriculum, Logger, Sampler, Verifier
from srpo.errors import PluginError
from srpo.kernel import events as ev
from srpo.kernel.checkpoint import CheckpointManager, rng_state
from srpo.kernel.metrics import rollout_metrics
from srpo.kernel.signals import fault_point
from srpo.types import Prompt, RolloutBatch, Score, Scores

FLAG_TRUNCATED = 1
FLAG_VERIFIER_ERROR = 2


class HistoryHook(Protocol):
    """What the kernel needs from a history store: append a step's records, commit them,
    and say how far it has committed (checkpoints record it; a resume rewinds to it)."""

    def append(self, **columns: Any) -> None: ...

    def commit(self, step: int) -> None: ...

    @property
    def committed_step(self) -> int | None: ...

    @property
    def committed_records(self) -> int: ...


@dataclass
class Roles:
    sampler: Sampler
    verifiers: dict[str, Verifier]
    curriculum: Curriculum
    loggers: list[Logger]
    fatal_loggers: set[int] = field(default_factory=set)  # indices whose failure ends the run


@dataclass
class KernelSettings:
    group_size: int
    prompts_per_step: int
    epochs: int
    max_steps: int | None
    eval_every: int
    seed: int
    domains: Sequence[str]  # domain code = index in this list (stored in history)
    fail_fast_verifiers: bool = False
    checkpoint_every: int = 0  # 0: only at the end (and on a stop or a plugin failure)
    overlong: OverlongOptions | None = None  # DAPO: overlong filtering / soft punishment


@dataclass
class Counters:
    """Where the run is; checkpointed with the roles' state."""

    step: int = 0
    epoch: int = 0
    epoch_started: bool = False
    rollouts: int = 0


class Kernel:
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
        history_reader: Any = None,
        on_step_end: Callable[[Kernel], None] | None = None,
        checkpoints: CheckpointManager | None = None,
    ) -> None:
        self.roles, self.policy, self.s = roles, policy, settings
        self.run_dir, self.config, self.eval_sets = run_dir, config, eval_sets
        self.history, self.history_reader = history, history_reader
        self.on_step_end = on_step_end
        self.counters = Counters()
        self.policy.temperature = float(getattr(roles.sampler, "temperature", 1.0))
        self._applied_stage: int | None = None
        self._overridden = False  # whether some stage changed the run file's values
        self.stop_requested: str | None = None
        self.last_eval: dict[str, float] = {}
        self.first_eval: dict[str, float] = {}
        self.checkpoints = checkpoints
        self.failure: PluginError | None = None  # a fatal logger failed: stop after the step
        # Whether the in-memory state is a consistent point to checkpoint: "complete"
        # (between steps), "clean" (inside a step, weights untouched: the snapshot taken at
        # the step's start is still valid) or "dirty" (mid-update: nothing consistent).
        self._phase = "complete"
        self._snapshot: dict[str, Any] | None = None

    # -- events -----------------------------------------------------------------------------

    def emit(self, event: ev.Event) -> None:
        for i, logger in enumerate(list(self.roles.loggers)):
            try:
                logger.on_event(event)
            except Exception as e:
                name = type(logger).__name__
                self.roles.loggers[i] = _Disabled(logger)
                if i in self.roles.fatal_loggers:
                    # not raised here: the step in flight finishes, so the run ends with a
                    # checkpoint of a complete step and can be resumed
                    if self.failure is None:
                        self.failure = PluginError(
                            f"logger {name} failed on {event.kind}: {type(e).__name__}: {e}"
                        )
                        self.failure.__cause__ = e
                    self.stop_requested = self.stop_requested or "failure"
                    continue
                print(f"srpo: logger {name} failed on {event.kind} and is disabled: {e}")

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
            if c.step == 0 and not self.stop_requested:  # a resumed run is past it (step > 0)
                self.first_eval = self.evaluate("before")
            self._loop()
        except Exception as e:
            self._end_failed(e)
            raise
        status = "completed"
        if self.failure is not None:
            status = "failed"
        elif self.stop_requested:
            status = "interrupted"
        self.save_checkpoint(final=True)
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
        while c.epoch < self.s.epochs and not self._done() and not self.stop_requested:
            cur = self.roles.curriculum
            if not c.epoch_started:
                self._phase = "dirty"
                cur.begin_epoch(c.epoch)
                c.epoch_started = True
                self._apply_stage_overrides()
                self.emit(ev.EpochStart(c.epoch, cur.stage, cur.epoch_size()))
                self._phase = "complete"
            self._apply_stage_overrides()  # no-op unless resumed into a stage
            while not self._done() and not self.stop_requested:
                if not self.step():
                    break
            if self.stop_requested:
                return
            if self._done():  # the step budget ends the run, even at an epoch's last step
                return
            fault_point("epoch_end")
            self._phase = "dirty"
            report = dict(cur.end_epoch(c.epoch, self.history_reader))
            self.emit(ev.EpochEnd(c.epoch, report))
            c.epoch += 1
            c.epoch_started = False
            self._phase = "complete"

    def _apply_stage_overrides(self) -> None:
        """Apply the curriculum's per-stage ``algorithm``/``sampler`` overrides on top of the
        run file's values whenever the stage changes (derived state: re-done on resume)."""
        cur = self.roles.curriculum
        if self._applied_stage == cur.stage:
            return
        self._applied_stage = cur.stage
        overrides = dict(cur.overrides())
        if not overrides and not self._overridden:
            return
        if not self._overridden:
            self._base_algorithm = self.policy.algo.model_dump()
            self._base_sampler = self.roles.sampler.options.model_dump()
            self._overridden = True
        unknown = sorted(set(overrides) - {"algorithm", "sampler"})
        if unknown:
            raise PluginError(
                f"curriculum stage {cur.stage} overrides {unknown[0]!r}: only "
                "'algorithm' and 'sampler' can change per stage"
            )
        sampler, policy = self.roles.sampler, self.policy
        try:
            policy.algo = type(policy.algo).model_validate(
                {**self._base_algorithm, **overrides.get("algorithm", {})}
            )
            sampler.options = type(sampler.options).model_validate(
                {**self._base_sampler, **overrides.get("sampler", {})}
            )
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise PluginError(
                f"curriculum stage {cur.stage} override {where}: {err['msg']}"
            ) from None
        self.s.group_size = policy.algo.group_size
        policy.temperature = float(getattr(sampler, "temperature", 1.0))

    def _summary(self) -> dict[str, float]:
        c = self.counters
        return {
            **{f"before/{k}": v for k, v in self.first_eval.items()},
            **{f"after/{k}": v for k, v in self.last_eval.items()},
            "steps": float(c.step),
            "rollouts": float(c.rollouts),
        }

    def _end_failed(self, error: Exception) -> None:
        """A role raised: checkpoint the last consistent state if there is one, tell the
        loggers, and let the error propagate (it names the plugin)."""
        where = None
        try:
            if self._phase == "complete":
                where = self.save_checkpoint(final=True)
            elif self._phase == "clean" and self._snapshot is not None:
                where = self.save_checkpoint(final=True, snapshot=self._snapshot)
        except Exception as e:  # the original error matters more; say why there is no save
            print(f"srpo: could not checkpoint after the failure: {type(e).__name__}: {e}")
        if where is not None:
            self._note_checkpoint(error)
        with contextlib.suppress(Exception):  # a logger failing here must not hide `error`
            reason = f"{type(error).__name__}: {error}"
            self.emit(ev.RunEnd(self.counters.step, "failed", self._summary(), reason))

    # -- checkpoints ------------------------------------------------------------------------

    def _note_checkpoint(self, error: Exception) -> None:
        """Append where the run can be resumed from to a failure's one-line message."""
        step = self.checkpoints.last_step if self.checkpoints is not None else None
        if step is None:
            return
        note = f"the checkpoint of step {step} is saved: rerun with --resume to continue"
        error.args = (f"{error.args[0]}; {note}" if error.args else note, *error.args[1:])

    def snapshot(self) -> dict[str, Any]:
        """Everything but weights and optimizer needed to resume from this point (a copy)."""
        h = self.history
        return copy.deepcopy(
            {
                "kernel": self.state_dict(),
                "rng": rng_state(),
                "history": None
                if h is None
                else {"committed_step": h.committed_step, "records": h.committed_records},
            }
        )

    def save_checkpoint(
        self, *, final: bool = False, snapshot: dict[str, Any] | None = None
    ) -> Path | None:
        """Write a checkpoint of the current state (or of ``snapshot``, taken at the start
        of a step whose weights are still untouched). Nothing to do before the first step,
        or when this step is already saved."""
        if self.checkpoints is None:
            return None
        snap = snapshot if snapshot is not None else self.snapshot()
        step = int(snap["kernel"]["counters"]["step"])
        if step == 0 or (final and self.checkpoints.last_step == step):
            return None
        state = {
            **snap,
            "step": step,
            "policy": self.policy.state_dict(),
            "config": copy.deepcopy(dict(self.config)),
        }
        return self.checkpoints.save(step, self.policy, state)

    def _done(self) -> bool:
        return self.s.max_steps is not None and self.counters.step >= self.s.max_steps

    # -- one step ---------------------------------------------------------------------------

    def step(self) -> bool:
        """One training step; False when the curriculum has no prompts left this epoch."""
        c, cur = self.counters, self.roles.curriculum
        self._snapshot = self.snapshot() if self.checkpoints is not None else None
        self._phase = "clean"
        fault_point("step_start")
        t_start = time.perf_counter()
        timing = {"generate": 0.0, "verify": 0.0, "update": 0.0, "history": 0.0}
        parts: list[tuple[RolloutBatch, Scores]] = []
        kept_groups, rounds, generated = 0, 0, 0
        while rounds < max(1, cur.max_generation_rounds):
            want = self.s.prompts_per_step - kept_groups
            prompts = cur.next_prompts(want)
            if not prompts:
                break
            if rounds == 0:
                self.emit(ev.StepStart(c.step, c.epoch))
            rounds += 1
            batch, scores = self._rollouts(prompts, timing)
            generated += batch.num_rollouts
            self._record_history(batch, scores, timing)
            keep = cur.accept_groups(batch, scores)
            if keep is not None:
                rows = keep.to(torch.bool)[batch.group]
                batch, scores = batch.select_groups(keep), scores.select(rows)
            parts.append((batch, scores))
            kept_groups += len(batch.prompts)
            if kept_groups >= self.s.prompts_per_step:
                break
        if rounds == 0:
            self._phase = "complete"
            return False
        pad = int(self.policy.tokenizer.pad_token_id)
        batch = RolloutBatch.concat([b for b, _ in parts], pad)
        scores = Scores.concat([s for _, s in parts])
        self.emit(ev.RolloutsScored(c.step, batch, scores))

        t = time.perf_counter()
        self._phase = "dirty"
        loss_mask = None
        if self.s.overlong is not None and self.s.overlong.filter:
            loss_mask = overlong_filter_mask(batch.response_mask, batch.truncated)
        update_metrics = self.policy.update(batch, scores, loss_mask=loss_mask)
        self.roles.sampler.sync(self.policy)
        timing["update"] += time.perf_counter() - t
        fault_point("update")
        self.emit(ev.UpdateDone(c.step, update_metrics))

        t = time.perf_counter()
        if self.history is not None:
            fault_point("history_commit")
            self.history.commit(c.step)
            fault_point("history_committed")
        timing["history"] += time.perf_counter() - t
        c.rollouts += generated
        metrics = rollout_metrics(batch, scores, self.s.domains)
        metrics.update(update_metrics)
        metrics.update(
            {
                "epoch": float(c.epoch),
                "stage": float(cur.stage),
                "generation_rounds": float(rounds),
                "rollouts_generated": float(generated),
                "rollouts_total": float(c.rollouts),
            }
        )
        total = time.perf_counter() - t_start
        other = total - sum(timing.values())
        metrics.update({f"time/{k}": v for k, v in timing.items()})
        metrics["time/other"] = max(0.0, other)
        metrics["time/step"] = total
        if timing["generate"] > 0:
            metrics["tokens_per_s"] = float(batch.response_mask.sum()) / timing["generate"]
        cur.observe(metrics)
        c.step += 1
        if self.s.eval_every and c.step % self.s.eval_every == 0 and not self._done():
            self.evaluate("during")
        self.emit(ev.StepEnd(c.step - 1, c.epoch, metrics))
        self._phase = "complete"
        fault_point("step_end")
        every = self.s.checkpoint_every
        if every and c.step % every == 0 and not self._done():
            self.save_checkpoint()
        if self.on_step_end is not None:
            self.on_step_end(self)
        return True

    def _rollouts(
        self, prompts: list[Prompt], timing: dict[str, float]
    ) -> tuple[RolloutBatch, Scores]:
        t = time.perf_counter()
        try:
            batch = self.roles.sampler.generate(prompts, self.s.group_size)
        except Exception as e:
            raise PluginError(
                f"sampler {type(self.roles.sampler).__name__} failed: {type(e).__name__}: {e}"
            ) from e
        timing["generate"] += time.perf_counter() - t
        fault_point("generate")
        t = time.perf_counter()
        scores = self.verify(batch)
        ol = self.s.overlong
        if ol is not None and ol.max_len is not None and batch.num_rollouts:
            # DAPO's soft overlong punishment shapes the reward (not correctness) before
            # history and group filtering see it
            penalty = soft_overlong_penalty(batch.lengths, ol.max_len, ol.cache_len, ol.penalty)
            scores.reward = scores.reward + penalty.to(scores.reward.dtype)
            scores.breakdown["overlong_penalty"] = penalty.float()
        timing["verify"] += time.perf_counter() - t
        fault_point("verify")
        return batch, scores

    def verify(self, batch: RolloutBatch) -> Scores:
        """Score each rollout with its domain's verifier. A verifier that raises costs its
        samples their reward (counted as errors), not the run — unless fail-fast is set."""
        n = batch.num_rollouts
        out: list[Score | None] = [None] * n
        by_domain: dict[str, list[int]] = {}
        for i in range(n):
            by_domain.setdefault(batch.prompt_of(i).domain, []).append(i)
        for domain, rows in by_domain.items():
            verifier = self.roles.verifiers[domain]
            prompts = [batch.prompt_of(i) for i in rows]
            texts = [batch.response_text[i] for i in rows]
            try:
                got = verifier.score(prompts, texts)
                if len(got) != len(rows):
                    raise ValueError(f"returned {len(got)} scores for {len(rows)} responses")
            except Exception as e:
                if self.s.fail_fast_verifiers:
                    raise PluginError(
                        f"verifier {type(verifier).__name__} ({domain}) failed: "
                        f"{type(e).__name__}: {e}"
                    ) from e
                got = [
                    Score(0.0, False, error=f"verifier raised {type(e).__name__}: {e}")
                    for _ in rows
                ]
            for i, s in zip(rows, got, strict=True):
                out[i] = s
        return (
            Scores.from_list([s for s in out if s is not None])
            if n
            else Scores(torch.zeros(0), torch.zeros(0, dtype=torch.bool), [])
        )

    def _record_history(
        self, batch: RolloutBatch, scores: Scores, timing: dict[str, float]
    ) -> None:
        if self.history is None or batch.num_rollouts == 0:
            return
        t = time.perf_counter()
        codes = {d: i for i, d in enumerate(self.s.domains)}
        pid = np.array([p.id for p in batch.prompts], dtype=np.uint64)[batch.group.numpy()]
        dom = np.array([codes[p.domain] for p in batch.prompts], dtype=np.uint8)[
            batch.group.numpy()
        ]
        flags = (batch.truncated.numpy().astype(np.uint8) * FLAG_TRUNCATED) | (
            np.array([e is not None for e in scores.error], dtype=np.uint8) * FLAG_VERIFIER_ERROR
        )
        n = batch.num_rollouts
        self.history.append(
            prompt_id=pid,
            epoch=np.full(n, self.counters.epoch, dtype=np.uint32),
            step=np.full(n, self.counters.step, dtype=np.uint32),
            sample=batch.sample.numpy().astype(np.uint16),
            domain=dom,
            reward=scores.reward.numpy().astype(np.float32),
            correct=scores.correct.numpy().astype(np.uint8),
            length=batch.lengths.numpy().astype(np.uint32),
            flags=flags,
            stage=np.full(n, self.roles.curriculum.stage, dtype=np.uint8),
        )
        fault_point("history_append")
        timing["history"] += time.perf_counter() - t

    # -- evaluation -------------------------------------------------------------------------

    def evaluate(self, label: str) -> dict[str, float]:
        """Greedy accuracy on the held-out sets, per domain and overall."""
        if not self.eval_sets:
            return {}
        metrics: dict[str, float] = {}
        correct = total = 0
        for domain, prompts in self.eval_sets.items():
            batch = self.roles.sampler.generate(prompts, 1, greedy=True)
            scores = self.verify(batch)
            acc = float(scores.correct.float().mean()) if len(prompts) else 0.0
            metrics[f"accuracy/{domain}"] = acc
            metrics[f"response_length/{domain}"] = float(batch.lengths.float().mean())
            correct += int(scores.correct.sum())
            total += len(prompts)
        metrics["accuracy"] = correct / max(total, 1)
        self.emit(ev.Evaluation(self.counters.step, label, metrics))
        return metrics

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        r = self.roles
        return {
            "counters": vars(self.counters).copy(),
            "curriculum": r.curriculum.state_dict(),
            "sampler": r.sampler.state_dict(),
            "verifiers": {d: v.state_dict() for d, v in r.verifiers.items()},
            "loggers": [lg.state_dict() for lg in r.loggers],
            "first_eval": dict(self.first_eval),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        r = self.roles
        self.counters = Counters(**state["counters"])
        r.curriculum.load_state_dict(state["curriculum"])
        r.sampler.load_state_dict(state["sampler"])
        for d, v in r.verifiers.items():
            v.load_state_dict(state["verifiers"].get(d, {}))
        for lg, st in zip(r.loggers, state["loggers"], strict=False):
            lg.load_state_dict(st)
        self.first_eval = dict(state.get("first_eval", {}))


class _Disabled(Logger):
    """Stands in for a non-fatal logger after it failed once."""

    def __init__(self, inner: Logger) -> None:
        self.inner = inner

    def on_event(self, event: ev.Event) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        try:  # keep what the logger had done (e.g. its file position) for a resume
            return self.inner.state_dict()
        except Exception:
            return {}

    def close(self) -> None:
        self.inner.close()
