"""The hf sampler on the real tiny model: O(n·T) behaviour log-probs that match what
transformers' own warpers give on the full [n, T, V] scores, token for token."""

from __future__ import annotations

import pytest
import torch

from tests.support.tiny import TINY


@pytest.fixture(scope="module")
def sampler_and_prompts(tmp_path_factory):
    from srpo_plugins.samplers.hf import HFSampler

    from srpo.api import PluginContext
    from srpo.config import AlgorithmSection, PolicySection
    from srpo.data import load_jsonl
    from srpo.policy import Policy

    policy = Policy(TINY / "model", PolicySection(path=TINY / "model"), AlgorithmSection(), 1)
    prompts = load_jsonl(TINY / "data" / "math_test.jsonl", "math", limit=6)
    ctx = PluginContext(run_dir=tmp_path_factory.mktemp("run"), seed=0, policy=policy)
    opts = HFSampler.Options(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=24)
    return HFSampler(opts, ctx), policy, prompts


def _reference(policy, prompt_ids, resp, o):
    """The full-scores way: replay the sampled tokens through transformers' generate (same
    batch, same padding, so the same logits), keep every step's raw logits [n, T, V], apply
    transformers' warpers, log_softmax+gather."""
    from transformers import (
        LogitsProcessor,
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from srpo.api import left_pad

    class Force(LogitsProcessor):
        def __call__(self, input_ids, scores):
            t = input_ids.shape[1] - ids.shape[1]
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(1, resp[:, t : t + 1], 0.0)

    ids, att = left_pad(prompt_ids, int(policy.tokenizer.pad_token_id))
    out = policy.model.generate(
        input_ids=ids,
        attention_mask=att,
        max_new_tokens=resp.shape[1],
        do_sample=False,
        pad_token_id=int(policy.tokenizer.pad_token_id),
        eos_token_id=policy.tokenizer.eos_token_id,
        logits_processor=LogitsProcessorList([Force()]),
        output_logits=True,
        return_dict_in_generate=True,
    )
    assert torch.equal(out.sequences[:, ids.shape[1] :], resp)
    warpers = [TemperatureLogitsWarper(o.temperature), TopKLogitsWarper(top_k=o.top_k)]
    warpers.append(TopPLogitsWarper(top_p=o.top_p))
    steps = []
    for logits in out.logits:
        scores = logits.float()
        for w in warpers:
            scores = w(ids, scores)
        steps.append(scores)
    scores = torch.stack(steps, dim=1)  # [n, T, V]
    return torch.log_softmax(scores, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)


def test_chosen_logprobs_match_the_full_scores(sampler_and_prompts):
    sampler, policy, prompts = sampler_and_prompts
    prompt_ids = [policy.encode_prompt(p.chat) for p in prompts]
    batch = sampler.generate(prompts, 1, seeds=list(range(len(prompts))))
    ref_logp = _reference(policy, prompt_ids, batch.response_ids, sampler.options)
    m = batch.response_mask
    assert m.any() and (m.sum(1) > 1).any()
    torch.testing.assert_close(batch.behaviour_logp[m], ref_logp[m], atol=1e-5, rtol=0)
    assert batch.temperature == 0.7 and (batch.behaviour_logp[~m] == 0).all()


def test_greedy_batches_say_temperature_zero(sampler_and_prompts):
    sampler, _, prompts = sampler_and_prompts
    batch = sampler.generate(prompts[:2], 1, greedy=True)
    assert batch.temperature == 0.0 and (batch.behaviour_logp == 0).all()
