"""A policy on the real tiny model and scored rollouts it generated, for the update tests
(tests/test_policy_update.py, tests/test_microbatch.py)."""

from __future__ import annotations

import torch

from srpo.config import AlgorithmSection, PolicySection
from tests.support.tiny import TINY


def tiny_policy(algo: AlgorithmSection | None = None, **policy_options):
    """The tiny model as a Policy (seeded), groups of 4 unless ``algo`` says otherwise."""
    from srpo.policy import Policy

    cfg = PolicySection(path=TINY / "model", **policy_options)
    torch.manual_seed(0)
    algo = algo if algo is not None else AlgorithmSection(group_size=4)
    return Policy(TINY / "model", cfg, algo, total_steps=4)


def tiny_rollouts(policy, rewards: list[float]):
    """Real rollouts of the tiny model (4 prompts x 4 samples, 12 new tokens) with the given
    rewards."""
    from srpo_plugins.samplers.hf import HFSampler

    from srpo.api import PluginContext
    from srpo.data import load_jsonl
    from srpo.types import Scores

    prompts = load_jsonl(TINY / "data" / "math_test.jsonl", "math", limit=4)
    ctx = PluginContext(run_dir=TINY, seed=0, policy=policy)
    sampler = HFSampler(HFSampler.Options(max_new_tokens=12), ctx)
    torch.manual_seed(1)
    batch = sampler.generate(prompts, 4)
    reward = torch.tensor(rewards)
    return batch, Scores(reward, reward > 0, [None] * len(rewards))
