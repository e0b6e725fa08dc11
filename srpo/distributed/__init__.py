"""Data-parallel runs: which rank this process is, and the few collectives the kernel uses.

srpo does not launch or connect processes itself: ``torchrun`` (PyTorch's elastic launcher)
starts them and sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``;
``torch.distributed`` connects them (NCCL on CUDA, gloo on CPU). A plain ``srpo run`` is the
one-process case of the same code: ``Dist.local()`` answers every collective at once, so the
kernel has one code path and never asks how many ranks there are except where the contract
says so (what is decided once, what is gathered, what only rank 0 writes).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from srpo.errors import SrpoError

T = TypeVar("T")

#: Seconds a collective may wait for the other ranks before it fails (a dead or stuck peer
#: must end the job, not hang it). Generation and verification of a step happen between
#: collectives, so this bounds the slowest rank's step lag too; ``SRPO_DIST_TIMEOUT_S``.
DEFAULT_TIMEOUT_S = 600.0

#: Whether this process joined a process group (see ``end_rank_process``).
_joined_a_group = False


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a ``torchrun`` job (its environment says so)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass
class Dist:
    """This process's place in the job; ``world_size == 1`` is a plain one-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @classmethod
    def local(cls) -> Dist:
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0 decides (curriculum), writes (history, checkpoints' shared files, loggers)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    # -- collectives (identity in a one-process run) ----------------------------------------

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def decide(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 and give every rank its result: one decision, never N
        decisions that could drift apart (RNG use, timing, a store only rank 0 reads)."""
        if not self.active:
            return fn()
        box = [fn() if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order (pickled: for host-side data, not weights)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def any(self, flag: Any) -> Any:
        """The first rank's truthy value of ``flag`` (e.g. a stop request), on every rank."""
        return next((f for f in self.all_gather(flag) if f), None)

    def all_max(self, value: int) -> int:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    @property
    def device(self) -> torch.device:
        """Where collective tensors live: the rank's GPU under NCCL, else the CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def shard(self, n: int, rank: int | None = None) -> range:
        """This rank's contiguous share of ``n`` items (whole groups): the first ``n % world``
        ranks take one more. The same split on every rank, so gathering in rank order
        restores the original order."""
        r = self.rank if rank is None else rank
        base, extra = divmod(n, self.world_size)
        start = r * base + min(r, extra)
        return range(start, start + base + (1 if r < extra else 0))


def init_from_env(device: str) -> Dist:
    """Join the ``torchrun`` job this process belongs to, or return the one-process Dist.

    ``device`` is the run's resolved device: ``cuda`` binds rank ``LOCAL_RANK`` to its GPU
    and uses NCCL; ``cpu`` uses gloo. A timeout makes a lost peer an error, never a hang.
    """
    if not launched_by_torchrun():
        return Dist.local()
    world = int(os.environ["WORLD_SIZE"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if world == 1:
        return Dist.local()
    backend = "nccl" if device == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    timeout = float(os.environ.get("SRPO_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    if not torch.distributed.is_initialized():
        try:
            torch.distributed.init_process_group(
                backend=backend, timeout=timedelta(seconds=timeout)
            )
        except Exception as e:
            raise SrpoError(f"rank {rank}: cannot join the torchrun job ({backend}): {e}") from e
        global _joined_a_group
        _joined_a_group = True
    return Dist(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def shutdown(dist: Dist) -> None:
    """Leave the job together: wait for every rank (none exits while another still
    writes), then leave the process group."""
    if dist.active and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def end_rank_process(code: int) -> None:
    """End this process with ``code`` now if it joined a process group; else return.

    Why not a normal interpreter exit: gloo's worker threads free finished collectives
    after the caller has seen them complete, and freeing one that held Python-visible
    tensors (a barrier keeps the collectives in flight before it) takes the GIL. If the main
    thread reaches interpreter finalization first, that thread is killed inside a C++
    destructor: ``terminate called without an active exception``, SIGABRT, and torchrun
    reports a completed run as failed (seen ~1 run in 7 of the two-node test on 2 busy
    cores; PyTorch has no fix: pytorch/pytorch#179291 was abandoned). Everything srpo
    writes is closed before this point (history, loggers, checkpoints); what is left is
    what the interpreter would do at exit: the ``atexit`` handlers (multiprocessing's
    children, temporary directories) run here, the standard streams are flushed, and only
    the final garbage collection, the racy part, is skipped.
    """
    if not _joined_a_group:
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing reaches it
            stream.flush()
    os._exit(code)


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or a plain process (before any ``Dist`` exists: for the
    few lines srpo prints while setting up, said once rather than once per rank)."""
    return os.environ.get("RANK", "0") == "0"


def say(*parts: object) -> None:
    """``print`` on rank 0 only (set-up notes: once per job, not once per rank)."""
    if is_main_process():
        print(*parts)


def describe_rank_failure(error: BaseException) -> str:
    """One line for an error that ended this rank's part of a job. A collective that
    failed because a peer is gone says so (the peer's own line says why it went)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    lost = isinstance(error, getattr(torch.distributed, "DistError", ())) or any(
        k in text for k in ("Connection closed by peer", "Connection reset by peer", "timed out")
    )
    if lost:
        note = text.split("; the checkpoint", 1)[1:]  # keep the kernel's resume note
        tail = f"; the checkpoint{note[0]}" if note else ""
        return f"lost contact with another rank (it failed or was killed){tail}"
    return f"{type(error).__name__}: {text}"
