"""Per-prompt seeds on the hf sampler (real tiny model): a rollout is a function of (seed,
weights, prompt) only — not of the other prompts in the call, the chunking or the global
RNG — and the per-row sampler still draws from exactly the warped distribution."""

from __future__ import annotations

import math

import pytest
import torch

from tests.support.tiny import TINY


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from srpo.config import AlgorithmSection, PolicySection
    from srpo.data import load_jsonl
    from srpo.policy import Policy

    policy = Policy(TINY / "model", PolicySection(path=TINY / "model"), AlgorithmSection(), 1)
    prompts = load_jsonl(TINY / "data" / "math_test.jsonl", "math", limit=6)
    return policy, prompts, tmp_path_factory.mktemp("run")


def _sampler(tiny, **options):
    from srpo_plugins.samplers.hf import HFSampler

    from srpo.api import PluginContext

    policy, _, run_dir = tiny
    opts = {"temperature": 0.9, "top_p": 0.95, "top_k": 40, "max_new_tokens": 16, **options}
    return HFSampler(
        HFSampler.Options(**opts), PluginContext(run_dir=run_dir, seed=0, policy=policy)
    )


def _rows(batch, g):
    """Prompt g's rows, trimmed to the longest of its responses (batches pad to their own)."""
    sel = batch.group == g
    ids, mask, logp = batch.response_ids[sel], batch.response_mask[sel], batch.behaviour_logp[sel]
    T = int(mask.sum(1).max())
    assert not mask[:, T:].any()
    return ids[:, :T], mask[:, :T], logp[:, :T], batch.truncated[sel]


def _assert_same(a, b):
    ids_a, mask_a, logp_a, trunc_a = a
    ids_b, mask_b, logp_b, trunc_b = b
    assert torch.equal(mask_a, mask_b) and torch.equal(trunc_a, trunc_b)
    assert torch.equal(ids_a[mask_a], ids_b[mask_b])
    # The draws are identical; the log-probs come from forward passes over differently
    # padded batches, which may differ in the last float bits.
    torch.testing.assert_close(logp_a, logp_b, atol=1e-5, rtol=0)


def test_a_prompts_rollouts_do_not_depend_on_its_batch(tiny):
    _, prompts, _ = tiny
    a, b, c = prompts[:3]
    n = 3
    sampler = _sampler(tiny)
    alone = _rows(sampler.generate([b], n, seeds=[2]), 0)
    _assert_same(_rows(sampler.generate([a, b, c], n, seeds=[1, 2, 3]), 1), alone)
    _assert_same(_rows(sampler.generate([c, b], n, seeds=[3, 2]), 1), alone)
    small = _sampler(tiny, batch_size=2)  # chunks cut across prompts, differently each call
    _assert_same(_rows(small.generate([a, b, c], n, seeds=[1, 2, 3]), 1), alone)
    _assert_same(_rows(small.generate([c, b], n, seeds=[3, 2]), 1), alone)
    odd = _sampler(tiny, batch_size=4)
    _assert_same(_rows(odd.generate([c, a, b], n, seeds=[3, 1, 2]), 2), alone)


def test_the_global_rng_does_not_matter_when_seeds_are_given(tiny):
    _, prompts, _ = tiny
    sampler = _sampler(tiny)
    torch.manual_seed(0)
    first = sampler.generate(prompts[:3], 2, seeds=[7, 8, 9])
    torch.manual_seed(12345)
    torch.rand(100)
    second = sampler.generate(prompts[:3], 2, seeds=[7, 8, 9])
    for g in range(3):
        _assert_same(_rows(first, g), _rows(second, g))


def test_without_seeds_the_global_rng_seeds_the_call(tiny):
    _, prompts, _ = tiny
    sampler = _sampler(tiny)
    torch.manual_seed(5)
    first = sampler.generate(prompts[:2], 2)
    torch.manual_seed(5)
    second = sampler.generate(prompts[:2], 2)
    assert torch.equal(first.response_ids, second.response_ids)


def test_different_seeds_sample_differently(tiny):
    _, prompts, _ = tiny
    sampler = _sampler(tiny, temperature=1.0, top_p=1.0, top_k=None)
    one = sampler.generate(prompts[:4], 2, seeds=[1, 2, 3, 4])
    other = sampler.generate(prompts[:4], 2, seeds=[11, 12, 13, 14])
    assert not torch.equal(one.response_ids, other.response_ids)
    # and a prompt's n samples are not copies of each other
    rows = [tuple(r[m].tolist()) for r, m in zip(one.response_ids, one.response_mask, strict=True)]
    assert len(set(rows)) > len(prompts[:4])


def _chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square p-value (Wilson–Hilferty), bins with expected count < 5 merged."""
    N = int(counts.sum())
    expected = probs.double() * N
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    k = len(exp) - 1
    assert k >= 3, "the test needs a spread-out distribution"
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(3.0, None, 1.0), (3.0, 8, 1.0), (3.0, None, 0.7)]
)
def test_first_tokens_follow_the_warped_distribution(tiny, temperature, top_k, top_p):
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    policy, prompts, _ = tiny
    # The tiny model is peaked (top token ~0.999 at T=1): a high temperature spreads it.
    sampler = _sampler(tiny, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=1)
    n = 2000
    batch = sampler.generate(prompts[:1], n, seeds=[2024])
    first = batch.response_ids[:, 0]

    ids = torch.tensor([policy.encode_prompt(prompts[0].chat)])
    with torch.no_grad():
        scores = policy.model(input_ids=ids).logits[:, -1].float() / temperature
    if top_k:
        scores = TopKLogitsWarper(top_k=top_k)(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p=top_p)(ids, scores)
    logp = torch.log_softmax(scores, -1)[0]
    probs = logp.exp()

    counts = torch.bincount(first, minlength=probs.numel())
    assert (probs[counts > 0] > 0).all(), "sampled a token the warpers removed"
    assert _chi_square_p(counts, probs) > 1e-3
    assert (counts.double() / n - probs.double()).abs().max() < 0.04
    # the behaviour log-prob is the warped distribution's, at the sampled token
    torch.testing.assert_close(batch.behaviour_logp[:, 0], logp[first], atol=1e-5, rtol=0)


def test_row_seeds_are_distinct_and_in_torch_range():
    from srpo_plugins.samplers._sampling import row_seed

    seeds = {row_seed(s, i) for s in (0, 1, 2, 3, 2**40, 2**64 - 1) for i in range(64)}
    assert len(seeds) == 6 * 64
    assert all(0 <= x < 2**63 for x in seeds)
    torch.Generator().manual_seed(max(seeds))


def test_the_noise_is_splitmix64_whatever_the_wrapping():
    """The int64 tensor mix (wrapping multiply, logical shifts) is bit-for-bit the 64-bit
    splitmix64, so the streams are the same on every device."""
    from srpo_plugins.samplers.hf import gumbel, splitmix64_tensor

    from srpo.api import splitmix64

    xs = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15, 123456789123456789]
    signed = [x - 2**64 if x >= 2**63 else x for x in xs]
    got = splitmix64_tensor(torch.tensor(signed, dtype=torch.int64)).tolist()
    assert [g % 2**64 for g in got] == [splitmix64(x) for x in xs]

    keys = [5, 2**63 + 7]
    noise = gumbel(keys, torch.zeros(3, 10))
    for r, k in enumerate(keys):
        for v in range(10):
            bits = splitmix64((k + v * 0x9E3779B97F4A7C15) % 2**64)
            u = ((bits >> 11) + 0.5) * 2.0**-53
            assert noise[r, v].item() == pytest.approx(-math.log(-math.log(u)), rel=1e-6)
