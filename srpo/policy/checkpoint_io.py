"""The policy's checkpoint I/O: HF-format weights, sharded weights + optimizer (DCP), and the
optimizer/scheduler state.

``PolicyCheckpointIO`` is a base class of ``Policy``: what ``srpo.kernel.checkpoint`` calls to
write and read a checkpoint, kept apart from the training update because it has its own
rules (every rank calls the collective ones, rank 0 writes, tied weights are saved once).
The attributes it reads are declared below and set by ``Policy.__init__``;
``_refresh_replica`` is ``Policy``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from srpo.distributed import Dist
from srpo.distributed.fsdp import is_sharded


def tied_aliases(model: Any) -> list[str]:
    """State-dict names that repeat a tensor seen under an earlier name (a tied LM head)."""
    seen: set[int] = set()
    out = []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            out.append(name)
        seen.add(id(t))
    return out


class PolicyCheckpointIO:
    """Checkpoint reading and writing of ``Policy`` (its base class); see the module docstring."""

    dist: Dist
    model: Any
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def save_pretrained(self, path: Path) -> None:
        """HF format (safetensors + config + tokenizer). Sharded: every rank calls it (the
        full weights are gathered to rank 0, on the CPU), rank 0 writes."""
        if not is_sharded(self.model):
            self.model.save_pretrained(path, safe_serialization=True)
            self.tokenizer.save_pretrained(path)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self.dist.is_main:
            for alias in tied_aliases(self.model):  # one copy of tied weights, as HF saves
                full.pop(alias, None)
            self.model.save_pretrained(path, state_dict=full, safe_serialization=True)
            self.tokenizer.save_pretrained(path)

    def save_sharded(self, path: Path) -> None:
        """Weights and optimizer state with ``torch.distributed.checkpoint``: each rank
        writes its own shard (collective; a sharded run only)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))

    def load_sharded(self, path: Path) -> None:
        """Read what ``save_sharded`` wrote (also from another number of ranks: DCP
        reshards), into the sharded model and optimizer in place."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )
        self._refresh_replica()

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and scheduler state (the weights are saved in HF format separately; a
        sharded run saves the optimizer with the weights, see ``save_sharded``)."""
        if is_sharded(self.model):
            return {"scheduler": self.scheduler.state_dict()}
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
