"""The kernel's resumable state: counters, snapshots and checkpoints, and what a failure
saves. A mixin of ``Kernel``, kept apart so the loop reads as the loop."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from srpo import events as ev
from srpo.api import warn
from srpo.distributed import Dist
from srpo.kernel.checkpoint import rng_state

if TYPE_CHECKING:
    from srpo.kernel.checkpoint import CheckpointManager
    from srpo.kernel.roles import Roles


@dataclass
class Counters:
    """Where the run is; checkpointed with the roles' state."""

    step: int = 0
    epoch: int = 0
    epoch_started: bool = False
    rollouts: int = 0


class Checkpointing:
    """Snapshot, save and restore for ``Kernel`` (which provides the attributes below)."""

    roles: Roles
    policy: Any
    dist: Dist
    config: Mapping[str, Any]
    counters: Counters
    history: Any
    checkpoints: CheckpointManager | None
    first_eval: dict[str, float]
    _phase: str
    _snapshot: dict[str, Any] | None

    def emit(self, event: ev.Event) -> None:
        raise NotImplementedError

    def _summary(self) -> dict[str, float]:
        raise NotImplementedError

    if TYPE_CHECKING:  # srpo.kernel.overlap.Overlap's, beside this mixin in Kernel

        def _pipeline_state(self) -> dict[str, Any]: ...

        def _load_pipeline_state(self, state: Mapping[str, Any]) -> None: ...

    def _end_failed(self, error: Exception) -> None:
        """A role raised: checkpoint the last consistent state if there is one, tell the
        loggers, and let the error propagate (it names the plugin)."""
        where = None
        try:
            if self.dist.active:
                # a peer may be gone, and a sharded save is a collective: resume from the
                # last checkpoint every rank wrote
                where = self.checkpoints.last_step if self.checkpoints is not None else None
            elif self._phase == "complete":
                where = self.save_checkpoint(final=True)
            elif self._phase == "clean" and self._snapshot is not None:
                where = self.save_checkpoint(final=True, snapshot=self._snapshot)
        except Exception as e:  # the original error matters more; say why there is no save
            warn(f"could not checkpoint after the failure: {type(e).__name__}: {e}")
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
            **self._pipeline_state(),  # rollouts generated ahead, not yet trained on
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
        self._load_pipeline_state(state)
