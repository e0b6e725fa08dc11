"""Padding-free response log-probs (``srpo.policy.packing``) against today's padded path.

* The packed row: tokens, restarting positions, sequence bounds, which position predicts
  which response token (masks with holes, empty responses, an empty prompt refused), and the
  token-slot counts behind ``update/pad_frac``.
* On the real tiny model (Qwen2, GQA, tied head) and on SmolLM2-135M (Llama, 30 layers):
  packed log-probs, entropy and parameter gradients equal the padded path's, for the fused and
  the eager head, each attention path (one causal SDPA call per sequence; transformers'
  block-diagonal mask), one sequence, empty responses, gradient checkpointing, a model on
  eager attention; and against float64 truth the packed path is as exact as the padded one.
* Nothing stays changed: after packed calls, the padded path and greedy generation give
  bit-identical results, and the wrapped ``sdpa`` is the original for any other call.
* FSDP2 (one gloo rank): ``register_packed_forward`` runs the fused packed path as a forward
  method of the sharded model, with the same numbers as the unsharded one.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from srpo.policy.logprobs import response_logprobs
from srpo.policy.packing import (
    PACKED_FUSED_METHOD,
    attention_path,
    pack_rows,
    pack_sequences,
    packed_response_logprobs,
    per_sequence_sdpa,
    register_packed_forward,
    token_slots,
)
from srpo.types import RolloutBatch
from tests.support.smollm2 import smollm2_model_dir
from tests.support.tiny import TINY

CPU = torch.device("cpu")


def random_batch(
    vocab: int,
    prompt_lens: list[int],
    response_lens: list[int],
    group: list[int],
    T: int | None = None,
    seed: int = 0,
) -> RolloutBatch:
    """Rollouts with random token ids: row i answers prompt ``group[i]`` with
    ``response_lens[i]`` tokens, right-padded to ``T`` (default: the longest)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(response_lens)
    T = T or max(max(response_lens), 1)
    prompts = [torch.randint(1, vocab, (p,), generator=gen).tolist() for p in prompt_lens]
    mask = torch.arange(T)[None] < torch.tensor(response_lens)[:, None]
    ids = torch.where(mask, torch.randint(1, vocab, (n, T), generator=gen), 0)
    return RolloutBatch(
        prompts=[None] * len(prompt_lens),  # type: ignore[list-item]  (only token ids are read)
        group=torch.tensor(group),
        sample=torch.zeros(n, dtype=torch.long),
        prompt_token_ids=prompts,
        response_ids=ids,
        response_mask=mask,
        behaviour_logp=torch.zeros(n, T),
        truncated=torch.zeros(n, dtype=torch.bool),
        response_text=[""] * n,
        temperature=0.7,
    )


def load(path: Path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).train()


def run(model, batch: RolloutBatch, fused: bool, attention: str | None):
    """(logp, entropy, {name: grad}) of ``(logp * mask).sum()``: ``attention`` None is the
    padded path, else the packed path through that attention."""
    rows = torch.arange(batch.num_rollouts)
    model.zero_grad(set_to_none=True)
    if attention is None:
        logp, ent = response_logprobs(model, batch, rows, 0, CPU, fused, True)
    else:
        logp, ent = packed_response_logprobs(
            model, batch, rows, CPU, fused, True, attention=attention
        )
    (logp * batch.response_mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), ent, grads


def grad_error(grads: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> float:
    """Global relative L2 error over all parameters (per-tensor maxima of tiny q/k gradients
    are float32 noise on either path)."""
    assert grads.keys() == truth.keys()
    diff = sum(float(((grads[n].double() - t.double()) ** 2).sum()) for n, t in truth.items())
    norm = sum(float((t.double() ** 2).sum()) for t in truth.values())
    return (diff / norm) ** 0.5 if norm else diff**0.5  # no response tokens: both must be 0


def assert_same(padded, packed, mask: torch.Tensor, grad_tol: float = 1e-5) -> None:
    (lp, ep, gp), (lk, ek, gk) = padded, packed
    torch.testing.assert_close(lk[mask], lp[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ek[mask], ep[mask], rtol=1e-5, atol=1e-5)
    assert not lk[~mask].any() and not ek[~mask].any()  # the contract: 0 on pad
    assert grad_error(gk, gp) <= grad_tol, grad_error(gk, gp)


# -- the packed row --------------------------------------------------------------------------


def test_pack_sequences_lays_out_tokens_positions_and_predicting_positions():
    ids = torch.tensor([[7, 8, 9], [5, 0, 0], [0, 0, 0], [4, 0, 6]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    p = pack_sequences([[1, 2], [3], [2, 2, 2], [9]], ids, mask)
    assert p.input_ids.tolist() == [[1, 2, 7, 8, 9, 3, 5, 2, 2, 2, 9, 4, 6]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 0, 1, 2, 0, 1, 2]]
    assert p.cu_seqlens.tolist() == [0, 5, 7, 10, 13] and p.seq_lens == (5, 2, 3, 3)
    # each response token is predicted by the token before it, never across sequences
    assert p.pred_index.tolist() == [1, 2, 3, 5, 10, 11]
    assert p.targets.tolist() == [7, 8, 9, 5, 4, 6]
    assert p.input_ids[0, p.pred_index + 1].tolist() == p.targets.tolist()
    assert torch.equal(p.real, mask)


def test_pack_sequences_refuses_an_empty_prompt_with_a_response():
    with pytest.raises(ValueError, match="row 1: an empty prompt"):
        pack_sequences([[1], []], torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2).bool())
    # without a response there is nothing to predict: fine
    p = pack_sequences([[1], []], torch.ones(2, 1, dtype=torch.long), torch.tensor([[1], [0]]))
    assert p.seq_lens == (2, 0) and p.pred_index.tolist() == [0]


def test_token_slots_count_both_layouts():
    batch = random_batch(50, [3, 6], [4, 1, 0, 2], group=[0, 0, 1, 1], T=8)
    slots = token_slots(batch, torch.arange(4))
    assert slots.tokens == 3 + 4 + 3 + 1 + 6 + 0 + 6 + 2
    # the padded path pads to the rows' longest prompt and their last real response column
    assert slots.padded == 4 * (6 + 4) and slots.packed == slots.tokens
    assert slots.pad_frac(True) == 0.0
    assert slots.pad_frac(False) == pytest.approx(40 / 25 - 1)
    part = token_slots(batch, torch.tensor([1]))
    assert (part.tokens, part.padded) == (4, 4)
    assert pack_rows(batch, torch.arange(4)).input_ids.shape[1] == slots.packed


# -- the tiny model --------------------------------------------------------------------------

TINY_BATCH = dict(
    prompt_lens=[5, 9, 3], response_lens=[40, 1, 17, 0, 25, 8], group=[0, 0, 1, 1, 2, 2]
)


@pytest.fixture(scope="module")
def tiny():
    return load(TINY / "model")


@pytest.fixture(scope="module")
def tiny_batch(tiny) -> RolloutBatch:
    return random_batch(tiny.config.vocab_size, **TINY_BATCH)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
@pytest.mark.parametrize("attention", ["per_sequence", "block_mask"])
def test_packed_equals_padded_on_the_tiny_model(tiny, tiny_batch, fused, attention):
    """Log-probs, entropy and gradients, with an empty response and a one-token one."""
    padded = run(tiny, tiny_batch, fused, None)
    assert_same(padded, run(tiny, tiny_batch, fused, attention), tiny_batch.response_mask)


def test_packed_is_as_close_to_float64_truth_as_padded(tiny, tiny_batch):
    """The float32 difference between the layouts is rounding, not an error of either:
    against the float64 model the packed path is no further off than the padded one."""
    truth = run(copy.deepcopy(tiny).double(), tiny_batch, True, None)
    m = tiny_batch.response_mask
    for attention in ("per_sequence", "block_mask"):
        padded, packed = run(tiny, tiny_batch, True, None), run(tiny, tiny_batch, True, attention)
        for name, i in (("logp", 0), ("entropy", 1)):
            e_pad = float((padded[i][m].double() - truth[i][m]).abs().max())
            e_pack = float((packed[i][m].double() - truth[i][m]).abs().max())
            assert e_pack <= 2 * e_pad + 1e-6, (attention, name, e_pack, e_pad)
        e_pad, e_pack = grad_error(padded[2], truth[2]), grad_error(packed[2], truth[2])
        assert e_pack <= 1.5 * e_pad + 1e-7, (attention, e_pack, e_pad)


@pytest.mark.parametrize(
    ("prompt_lens", "response_lens", "group"),
    [([4], [12], [0]), ([4, 2], [0, 0, 0], [0, 1, 1]), ([1], [1], [0])],
    ids=["one-sequence", "all-responses-empty", "one-token-prompt-and-response"],
)
def test_edge_cases_equal_padded(tiny, prompt_lens, response_lens, group):
    batch = random_batch(tiny.config.vocab_size, prompt_lens, response_lens, group, T=5 + 7)
    for fused in (True, False):
        padded = run(tiny, batch, fused, None)
        assert_same(padded, run(tiny, batch, fused, "per_sequence"), batch.response_mask)


def test_default_path_with_gradient_checkpointing(tiny_batch):
    """transformers recomputes each layer during backward from the kwargs it saved: the
    per-sequence attention travels with them, so the gradients are the same."""
    model = load(TINY / "model")
    assert attention_path(model) == "per_sequence"
    plain = run(model, tiny_batch, True, None)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    logp, ent = packed_response_logprobs(
        model, tiny_batch, torch.arange(tiny_batch.num_rollouts), CPU, True, True
    )
    model.zero_grad(set_to_none=True)
    (logp * tiny_batch.response_mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert_same(plain, (logp.detach(), ent, grads), tiny_batch.response_mask)


def test_eager_attention_takes_the_block_mask_and_stays_exact(tiny_batch):
    model = load(TINY / "model", attn_implementation="eager")
    assert attention_path(model) == "block_mask"
    padded = run(model, tiny_batch, True, None)
    packed = run(model, tiny_batch, True, attention_path(model))
    assert_same(padded, packed, tiny_batch.response_mask)


def test_attention_path_choice():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = dict(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    sliding = Qwen2Config(**cfg, use_sliding_window=True, sliding_window=4, max_window_layers=1)
    assert attention_path(Qwen2ForCausalLM(sliding)) == "block_mask"  # SDPA per sequence: no window
    model = Qwen2ForCausalLM(Qwen2Config(**cfg))
    assert attention_path(model) == "per_sequence"
    model.config._attn_implementation = "flash_attention_2"  # config only: nothing runs here
    assert attention_path(model) == "varlen"


def test_padded_path_and_generation_are_unchanged_by_packed_calls(tiny_batch):
    model = load(TINY / "model").eval()
    rows = torch.arange(tiny_batch.num_rollouts)
    prompt = torch.tensor([tiny_batch.prompt_token_ids[0]])

    def padded_and_generated():
        with torch.no_grad():
            logp, _ = response_logprobs(model, tiny_batch, rows, 0, CPU, True)
            gen = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
        return logp, gen

    before = padded_and_generated()
    impl = model.config._attn_implementation
    with torch.no_grad():
        packed_response_logprobs(model, tiny_batch, rows, CPU, True)
    after = padded_and_generated()
    assert model.config._attn_implementation == impl
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    # the wrapped sdpa without the packed kwarg is the original function, bit for bit
    wrapper = per_sequence_sdpa()
    attn = model.get_decoder().layers[0].self_attn
    q, k, v = (torch.randn(2, h, 7, 32) for h in (4, 2, 2))
    mask = torch.ones(2, 1, 7, 7, dtype=torch.bool).tril()
    out, orig = (
        wrapper(attn, q, k, v, mask, scaling=0.3),
        wrapper.original(attn, q, k, v, mask, scaling=0.3),
    )
    assert torch.equal(out[0], orig[0])


# -- FSDP2, one rank -------------------------------------------------------------------------


def test_sharded_model_runs_the_fused_packed_forward_as_an_fsdp_method(tiny, tiny_batch, tmp_path):
    import torch.distributed as dist

    from srpo.distributed.fsdp import shard_model

    if dist.is_initialized():
        pytest.skip("a process group is already up in this process")
    expected = run(tiny, tiny_batch, True, "per_sequence")
    model = copy.deepcopy(tiny)
    store = dist.FileStore(os.fspath(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        shard_model(model, None)
        rows = torch.arange(tiny_batch.num_rollouts)
        with pytest.raises(RuntimeError, match="register_packed_forward"):
            packed_response_logprobs(model, tiny_batch, rows, CPU, True)
        register_packed_forward(model)
        assert hasattr(model, PACKED_FUSED_METHOD)
        got = run(model, tiny_batch, True, "per_sequence")
        grads = {n: g.full_tensor() for n, g in got[2].items()}
    finally:
        dist.destroy_process_group()
    assert_same(expected, (got[0], got[1], grads), tiny_batch.response_mask)


# -- SmolLM2-135M ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    return load(smollm2_model_dir())


@pytest.mark.parametrize(
    "fused", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["fused", "eager"]
)
def test_packed_equals_padded_on_smollm2(smollm2, fused):
    """The real 30-layer model with its 49k vocabulary: 5 rollouts of 2 prompts (one
    response empty, one a single token), within 1e-5. The fused head (the policy's default)
    is fast; the eager head is ``slow`` (about a minute on a loaded 2-core machine) and
    proves what no fast test does: ``logits_to_keep`` on a Llama at 49k vocabulary."""
    batch = random_batch(
        smollm2.config.vocab_size, [12, 7], [24, 0, 5, 13, 1], group=[0, 0, 0, 1, 1], seed=3
    )
    padded = run(smollm2, batch, fused, None)
    assert_same(padded, run(smollm2, batch, fused, attention_path(smollm2)), batch.response_mask)
