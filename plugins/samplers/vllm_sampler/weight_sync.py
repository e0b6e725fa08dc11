"""The trainer's half of a weight push to an engine server, over vLLM's weight-transfer
control plane (``native`` has the engine's half and the reasons).

Per push the engine is told ``start_weight_update``, ``update_weights`` (where the bytes
are), ``finish_weight_update`` (with a version: the push count, which the engine keeps and
``weight_version`` reads back); once per engine ``init_weight_transfer_engine``. On CPU the
bytes go through one /dev/shm file (``srpo_shm``) and this module sends them without
importing vLLM; on CUDA vLLM's own trainer engine (``ipc`` or ``nccl``) drives the same four
calls through ``ServerSyncClient``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from srpo_plugins.samplers.vllm_sampler.process import physical_gpu
from srpo_plugins.samplers.vllm_sampler.transport import ShmFile

from srpo.api import PluginError

Weights = Callable[[], Iterable[tuple[str, torch.Tensor]]]

#: the CPU backend's name in vLLM's factory of worker engines (``native.SHM_BACKEND``)
SHM_BACKEND = "srpo_shm"


def backend_for(device: torch.device, gpus: list[str] | None) -> str:
    """The data plane for an engine server on ``gpus`` (``process.server_gpus``): ours on
    CPU; on CUDA vLLM's IPC when the server shares the trainer's GPU, its NCCL when the
    server's GPUs are others."""
    if device.type != "cuda" or gpus is None:
        return SHM_BACKEND
    mine = physical_gpu(device.index or 0)
    if mine not in gpus:
        return "nccl"
    if gpus == [mine]:
        return "ipc"
    raise PluginError(
        f"sampler vllm: devices {gpus} include the trainer's GPU {mine} beside others: an "
        "engine server shares the trainer's GPU alone (IPC) or runs on others only (NCCL)"
    )


class ServerSyncClient:
    """vLLM's ``VLLMWeightSyncClient`` (a structural protocol: four calls) over the engine
    server's connection; the server answers each by the same call on its ``vllm.LLM``."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call  # RemoteEngine._call
        #: the version the next finished update gives the engine (vLLM's trainer engines
        #: finish without one): the sampler's push count
        self.version: str | None = None

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.call("wt_init", init_info)

    def start_weight_update(self) -> None:
        self.call("wt_start")

    def update_weights(self, update_info: Any) -> None:
        self.call("wt_update", update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.call("wt_finish", weight_version if weight_version is not None else self.version)


class ShmSender:
    """``srpo_shm``'s trainer side: the weights into one /dev/shm file (rewritten in place
    at every push), then the engine told where each tensor lies."""

    def __init__(self, client: ServerSyncClient, weights: Weights) -> None:
        self.client, self.weights = client, weights
        self.file = ShmFile()
        client.init_weight_transfer_engine({})

    def send_weights(self) -> None:
        self.client.start_weight_update()
        index = self.file.write(self.weights())
        self.client.update_weights({"path": str(self.file.path), "index": index})
        self.client.finish_weight_update()

    def shutdown(self) -> None:
        self.file.remove()


class WeightSync:
    """One engine server's pushes: the backend's sender, made at the first push (its
    handshake initialises the engine's side), then one ``push`` per sync."""

    def __init__(self, call: Callable[..., Any], backend: str, engine_gpus: int) -> None:
        self.client = ServerSyncClient(call)
        self.backend, self.engine_gpus = backend, engine_gpus
        self.sender: Any = None

    def push(self, weights: Weights, version: int) -> None:
        if self.sender is None:
            if self.backend == SHM_BACKEND:
                self.sender = ShmSender(self.client, weights)
            else:  # CUDA: vLLM's own trainer engine (imports vLLM)
                from srpo_plugins.samplers.vllm_sampler.native import cuda_trainer_engine

                self.sender = cuda_trainer_engine(
                    self.backend, self.client, weights, self.engine_gpus
                )
        self.client.version = str(version)
        self.sender.send_weights()

    def close(self) -> None:
        if self.sender is not None:
            self.sender.shutdown()
            self.sender = None
