"""The hf sampler on the real tiny model: O(n·T) behaviour log-probs that match what
transformers' own [n, T, V] processed scores give, token for token."""

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


def _reference(policy, prompt_ids, seed, o):
    """Yesterday's way: transformers' warpers, every step's scores kept, log_softmax+gather."""
    from srpo.api import left_pad

    ids, att = left_pad(prompt_ids, int(policy.tokenizer.pad_token_id))
    torch.manual_seed(seed)
    out = policy.model.generate(
        input_ids=ids,
        attention_mask=att,
        max_new_tokens=o.max_new_tokens,
        do_sample=True,
        temperature=o.temperature,
        top_p=o.top_p,
        top_k=o.top_k,
        pad_token_id=int(policy.tokenizer.pad_token_id),
        eos_token_id=policy.tokenizer.eos_token_id,
        output_scores=True,
        return_dict_in_generate=True,
    )
    resp = out.sequences[:, ids.shape[1] :]
    scores = torch.stack(out.scores, dim=1).float()  # [n, T, V]
    return resp, torch.log_softmax(scores, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)


def test_chosen_logprobs_match_the_full_scores(sampler_and_prompts):
    sampler, policy, prompts = sampler_and_prompts
    prompt_ids = [policy.encode_prompt(p.chat) for p in prompts]
    ref_ids, ref_logp = _reference(policy, prompt_ids, 123, sampler.options)
    torch.manual_seed(123)
    batch = sampler.generate(prompts, 1)
    T = batch.response_ids.shape[1]
    assert torch.equal(batch.response_ids, ref_ids[:, :T])  # same processors, same draws
    m = batch.response_mask
    torch.testing.assert_close(batch.behaviour_logp[m], ref_logp[:, :T][m], atol=1e-5, rtol=0)
    assert batch.temperature == 0.7 and (batch.behaviour_logp[~m] == 0).all()


def test_greedy_batches_say_temperature_zero(sampler_and_prompts):
    sampler, _, prompts = sampler_and_prompts
    batch = sampler.generate(prompts[:2], 1, greedy=True)
    assert batch.temperature == 0.0 and (batch.behaviour_logp == 0).all()
