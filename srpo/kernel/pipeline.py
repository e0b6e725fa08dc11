"""Bounded-staleness generation: the next steps' rollouts are generated while the policy trains.

With ``run.max_staleness: k`` (k > 0) the kernel submits the generation of step t's prompts
to one generation thread before it trains step t - 1 (up to k steps ahead), so generation and
the update overlap. A sampler that takes part promises (``Sampler.prepare_overlap``) that its
``generate`` may run on that thread while the policy trains, sampling from weights that only
``sync`` changes.

**The schedule is deterministic, never timing-dependent.** The engine's weights are pushed
only while the generation thread is idle, from the main thread, and a generation submitted
at step s is sampled by the weights of version s (s updates applied). So after a bubble (the
run's or an epoch's start) the rollouts of step t were sampled by version ``t - j`` for a
fixed ``j <= k``, whatever the machine's speed: a run reproduces itself, and a checkpoint
needs only the rollouts already generated (``state_dict``: they are waited for and saved),
not older weights. Nothing older than k versions is trained on: a batch that is (after a
resume with a smaller ``max_staleness``) is regenerated from the same prompts and seeds and
counted in ``staleness/dropped``.

Pushing only at idle points makes k > 1 no faster than k = 1 when generation and update take
the same time every step (the thread waits for its queue to drain before each push); larger
k absorbs steps whose generation runs long. An engine that took pushes while generating (a
weight snapshot per version) would lift that; see docs/staleness.md.

What the curriculum knows: prompts for step t are chosen at step t - j, after that step's
rollouts were scored and its groups accepted (``accept_groups`` and step-wise selection see
every outcome up to step t - j) but before the update and ``observe`` of the steps between.
An epoch end is a barrier: no generation crosses it, so history resampling rebuilds the next
epoch from every rollout of this one, as in a synchronous run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from srpo.api import Prompt, RolloutBatch


@dataclass
class Pending:
    """A step's generation, submitted ahead of its training step."""

    step: int  # the training step these rollouts are for
    version: int  # updates applied to the weights that sample them
    prompts: list[Prompt]  # the whole step's prompts (every rank's)
    seeds: list[int]  # one per prompt (the kernel's prompt_seeds of the step, round 0)
    future: Future[tuple[RolloutBatch, float]] | None = None
    batch: RolloutBatch | None = None  # this rank's share, once generated
    seconds: float = 0.0  # generation time on the generation thread


class RolloutPipeline:
    """The generation thread, the generations submitted ahead, and the engine's version."""

    def __init__(self, max_staleness: int) -> None:
        self.max_staleness = max_staleness
        self.pending: dict[int, Pending] = {}
        self.exhausted = False  # the curriculum said the epoch has no more prompts
        self.engine_version = 0  # updates applied to the engine's weights (the kernel sets it)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._jobs = 0  # jobs submitted and not finished
        self._idle_since: float | None = time.perf_counter()
        self._engine_idle = 0.0
        self.dropped = 0  # rollouts dropped as too stale since the last step's metrics

    # -- submitting and collecting ----------------------------------------------------------

    def submit(
        self, pending: Pending, generate: Callable[[list[Prompt], list[int]], RolloutBatch]
    ) -> None:
        """Queue ``pending``'s generation (FIFO, one at a time); ``pending.version`` is the
        engine's version now (the caller pushed it current)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="srpo-generate")
        with self._lock:
            self._jobs += 1
        pending.future = self._executor.submit(self._run, generate, pending)
        self.pending[pending.step] = pending

    def _run(
        self,
        generate: Callable[[list[Prompt], list[int]], RolloutBatch],
        pending: Pending,
    ) -> tuple[RolloutBatch, float]:
        t = time.perf_counter()
        with self._lock:
            if self._idle_since is not None:
                self._engine_idle += t - self._idle_since
                self._idle_since = None
        try:
            batch = generate(pending.prompts, pending.seeds)
        finally:
            done = time.perf_counter()
            with self._lock:
                self._jobs -= 1
                if self._jobs == 0:
                    self._idle_since = done
        return batch, done - t

    def wait(self) -> float:
        """Wait for every submitted generation (the engine is idle after); seconds waited.
        A failed generation raises here, on the main thread."""
        t = time.perf_counter()
        for p in sorted(self.pending.values(), key=lambda p: p.step):
            self._resolve(p)
        return time.perf_counter() - t

    def _resolve(self, p: Pending) -> None:
        """Collect a finished generation. One that failed stays pending without a batch (its
        prompts and seeds are kept: a checkpoint saved on the way out still accounts for
        them, and a resume generates them again) and raises."""
        if p.future is not None:
            future, p.future = p.future, None
            p.batch, p.seconds = future.result()

    def take(self, step: int) -> Pending | None:
        """The generation submitted for ``step`` (waited for), or None."""
        p = self.pending.pop(step, None)
        if p is not None:
            self._resolve(p)
        return p

    def too_stale(self, p: Pending, trainer_version: int) -> bool:
        return trainer_version - p.version > self.max_staleness

    @property
    def next_step(self) -> int | None:
        """The step after the last one submitted (None: nothing is pending)."""
        return max(self.pending) + 1 if self.pending else None

    def engine_idle(self) -> float:
        """Seconds the generation thread had nothing to do since the last call: it waited
        for the trainer (its weights, or the next step's prompts)."""
        with self._lock:
            idle, now = self._engine_idle, time.perf_counter()
            if self._idle_since is not None:
                idle += now - self._idle_since
                self._idle_since = now
            self._engine_idle = 0.0
        return idle

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The generated, not yet trained rollouts (waited for first) and the epoch's state.
        A resume trains on exactly these batches, so the run continues as if uninterrupted."""
        self.wait()
        return {
            "exhausted": self.exhausted,
            "pending": [
                {
                    "step": p.step,
                    "version": p.version,
                    "prompts": p.prompts,
                    "seeds": p.seeds,
                    "batch": p.batch,
                    "seconds": p.seconds,
                }
                for p in sorted(self.pending.values(), key=lambda p: p.step)
            ],
        }

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        state = state or {}
        self.exhausted = bool(state.get("exhausted", False))
        self.pending = {
            int(p["step"]): Pending(
                step=int(p["step"]),
                version=int(p["version"]),
                prompts=list(p["prompts"]),
                seeds=list(p["seeds"]),
                batch=p["batch"],
                seconds=float(p["seconds"]),
            )
            for p in state.get("pending", [])
        }

    def close(self) -> None:
        """Stop the generation thread after the job it is running (queued ones are dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
