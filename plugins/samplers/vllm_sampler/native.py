"""vLLM's own weight-transfer API behind the engine server (``mode: server``): the backend
the server's workers load pushes with, and, on CUDA, vLLM's trainer engines.

vLLM 0.32 splits a weight sync into a control plane (``init_weight_transfer_engine``, then
per push ``start_weight_update`` / ``update_weights`` / ``finish_weight_update``, run by the
engine's workers on their ``WeightTransferEngine``) and a data plane chosen by
``weight_transfer_config.backend``: ``nccl`` (a broadcast from the trainer to an engine on
GPUs of its own) or ``ipc`` (CUDA IPC handles: an engine on the trainer's GPU), both
CUDA-only. The server answers those calls over its connection (``op_wt_*`` in ``server``;
the trainer's side is ``weight_sync``).

On CPU this module adds one backend, ``srpo_shm``: the trainer writes the flattened weights
to one file in /dev/shm (``transport.ShmFile``) and the worker maps it and loads every
tensor inside vLLM's layerwise reload, as its NCCL backend loads what it receives. So a CPU
push goes through the same control plane, worker hooks and reload as a CUDA one; only the
bytes' road differs. On CUDA the trainer uses vLLM's own trainer engines
(``cuda_trainer_engine``): written against vLLM 0.32's API, not yet run on a GPU (none has
been lent to this project).

The module imports vLLM: the server imports it, and the trainer only on CUDA (on CPU the
trainer's side of a push needs none of vLLM, whose import costs ~250 MB of its memory).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from srpo_plugins.samplers.vllm_sampler.transport import ShmReader
from srpo_plugins.samplers.vllm_sampler.weight_sync import SHM_BACKEND
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    VLLMWeightSyncClient,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import (
    WeightTransferEngineFactory,
    WeightTransferTrainerFactory,
)

# -- the srpo_shm backend: the engine's side (in the server) ---------------------------------


@dataclass
class ShmInitInfo(WeightTransferInitInfo):
    """Nothing to agree on: the file's path and layout come with every update."""


@dataclass
class ShmUpdateInfo(WeightTransferUpdateInfo):
    path: str  # the trainer's file in /dev/shm
    index: list[Any]  # (name, dtype, shape, offset, nbytes) per tensor: transport.Entry


class ShmWeightTransferEngine(WeightTransferEngine[ShmInitInfo, ShmUpdateInfo]):
    """The worker maps the trainer's file and loads every tensor in checkpoint format, inside
    vLLM's layerwise reload (as its NCCL backend does: q/k/v and gate/up fused by the
    model's own ``load_weights``, post-load processing redone once at the end)."""

    init_info_cls = ShmInitInfo
    update_info_cls = ShmUpdateInfo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reader: ShmReader | None = None

    def init_transfer_engine(self, init_info: ShmInitInfo) -> None:
        self.reader = ShmReader()

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # the base class ends with torch.accelerator.synchronize(), which raises on a
        # machine without an accelerator; reading a file has nothing to wait for
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: ShmUpdateInfo) -> None:
        if self.reader is None:
            raise RuntimeError("update_weights before init_weight_transfer_engine")
        self.model.load_weights(self.reader.read(update_info.path, update_info.index))

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def shutdown(self) -> None:
        self.reader = None


def register() -> None:
    """``srpo_shm`` in vLLM's factory of worker engines (once per process: it refuses a
    name twice). The server calls it before creating the engine."""
    if SHM_BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(SHM_BACKEND, ShmWeightTransferEngine)


# -- the trainer's half: what it sends and whom it asks -------------------------------------


class PolicySource(WeightSource):
    """The policy's full weights in the engine's (Hugging Face) names, as a vLLM
    ``WeightSource``. ``metadata`` comes from one pass over the weights, kept: names, dtypes
    and shapes do not change between pushes (a sharded policy gathers once more for it, on
    every rank in step, at the first push)."""

    def __init__(self, weights: Any) -> None:
        self.weights = weights  # () -> iterator of (name, full tensor)
        self._meta: list[ParamMeta] | None = None

    def metadata(self) -> list[ParamMeta]:
        if self._meta is None:
            self._meta = [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in self.weights()]
        return self._meta

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.weights())


def cuda_trainer_engine(
    backend: str, client: VLLMWeightSyncClient, weights: Any, engine_gpus: int
) -> TrainerWeightTransferEngine:
    """vLLM's trainer engine for ``backend`` (``ipc`` or ``nccl``), its handshake done: the
    engine's side is initialised when this returns. Each trainer rank drives its own engine
    server, so every rank is the sender (``rank=0``) of its own transfer."""
    info: TrainerInitInfo
    if backend == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        info = IPCTrainerInitInfo(rank=0)
    else:
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        info = NCCLTrainerInitInfo(
            rank=0,
            master_address="127.0.0.1",
            master_port=_free_port(),
            world_size=1 + engine_gpus,  # the trainer (rank 0), then the engine's workers
        )
    return WeightTransferTrainerFactory.trainer_init(
        info, client=client, source=PolicySource(weights)
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
