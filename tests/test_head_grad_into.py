"""The fused LM head writing its weight gradient straight into ``.grad`` (``into_weight_grad``).

Why it exists: for an LM head tied to the input embedding, autograd holds the head's [V, H]
weight gradient from the first op of the backward to the last, to add it to the embedding's
(srpo/ops/linear_logprob.py, ``_IntoWeightGrad``). These tests pin what the shortcut must keep:
the same gradients as autograd (bit-identical on the first micro-batch, float rounding after),
in float32, bfloat16 (the float32-chunk path) and float64 against the eager oracle, the
ordinary path wherever the shortcut would be wrong, and a schema that declares the mutation.
"""

from __future__ import annotations

import pytest
import torch

import srpo.ops as ops
from srpo.ops import linear_logprobs
from tests.support.ops import BF16, DEVICES, F32, F64, require_compiled


def _ns(device: str) -> str:
    """The compiled op's namespace (fails if it did not load; skips without CUDA kernels)."""
    require_compiled(device)
    ns = ops._loader.ensure_loaded()
    assert hasattr(getattr(torch.ops, ns), "linear_logprob_bwd_into"), "stale build: reinstall"
    return ns


class TiedLM(torch.nn.Module):
    """Embedding -> one nonlinear layer -> the embedding matrix as the head (tied weights)."""

    def __init__(self, v: int, h: int, dtype: torch.dtype, device: str, tied: bool = True):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        emb = torch.randn(v, h, generator=gen, dtype=F64) * (3.0 / h**0.5)
        self.emb = torch.nn.Parameter(emb.to(dtype).to(device))
        mix = torch.randn(h, h, generator=gen, dtype=F64) / h**0.5
        self.mix = torch.nn.Parameter(mix.to(dtype).to(device))
        head = emb if tied else torch.randn(v, h, generator=gen, dtype=F64) * (3.0 / h**0.5)
        self.head = self.emb if tied else torch.nn.Parameter(head.to(dtype).to(device))

    def loss(self, ids: torch.Tensor, targets: torch.Tensor, into: bool, **chunks) -> torch.Tensor:
        hidden = torch.tanh(self.emb[ids] @ self.mix)
        logp, _ = linear_logprobs(
            hidden, self.head, targets, 0.8, False, into_weight_grad=into, **chunks
        )
        scale = torch.linspace(-1.0, 2.0, ids.shape[0], dtype=logp.dtype, device=logp.device)
        return (logp * scale).sum()


def _micro_batches(v: int, sizes: list[int], device: str) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for n in sizes:
        ids = torch.randint(0, v, (n,), generator=gen)
        targets = torch.randint(0, v, (n,), generator=gen)
        out.append((ids.to(device), targets.to(device)))
    return out


def _grads(model: TiedLM, batches, into: bool, **chunks) -> list[dict[str, torch.Tensor]]:
    """Accumulate over the micro-batches (as an update does); the gradients after each."""
    model.zero_grad(set_to_none=True)
    seen = []
    for ids, targets in batches:
        model.loss(ids, targets, into, **chunks).backward()
        seen.append({k: p.grad.detach().clone() for k, p in model.named_parameters()})
    return seen


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_same_gradients_as_autograd(device: str, tied: bool) -> None:
    _ns(device)
    model = TiedLM(300, 24, F32, device, tied=tied)
    batches = _micro_batches(300, [37, 5, 64], device)
    ref = _grads(model, batches, into=False, chunk_n=16, chunk_v=128)
    got = _grads(model, batches, into=True, chunk_n=16, chunk_v=128)
    # First micro-batch: the head's gradient becomes .grad, the embedding's is added: the
    # same two operands autograd adds, so the same bits.
    for name in ref[0]:
        assert torch.equal(got[0][name], ref[0][name]), name
    # Later ones: the shares are added to the running gradient one after the other.
    for step in (1, 2):
        for name, r in ref[step].items():
            torch.testing.assert_close(got[step][name], r, rtol=1e-6, atol=1e-6 * r.abs().max())
    assert model.head.grad.dtype == F32


def test_float64_against_the_eager_oracle() -> None:
    """Several token and vocabulary chunks, accumulated into an existing .grad, vs eager."""
    _ns("cpu")
    model = TiedLM(97, 8, F64, "cpu")
    batches = _micro_batches(97, [9, 13, 1], "cpu")
    got = _grads(model, batches, into=True, chunk_n=4, chunk_v=16)[-1]
    model.zero_grad(set_to_none=True)
    for ids, targets in batches:
        hidden = torch.tanh(model.emb[ids] @ model.mix)
        logp = torch.log_softmax(hidden @ model.emb.T / 0.8, -1).gather(1, targets[:, None])[:, 0]
        (logp * torch.linspace(-1.0, 2.0, ids.shape[0], dtype=F64)).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-12, atol=1e-12)


def test_bfloat16_weight_goes_through_a_float32_chunk() -> None:
    _ns("cpu")
    model = TiedLM(200, 16, BF16, "cpu")
    batches = _micro_batches(200, [11, 23], "cpu")
    ref = _grads(model, batches, into=False, chunk_v=64)
    got = _grads(model, batches, into=True, chunk_v=64)
    for name in ref[0]:
        assert torch.equal(got[0][name], ref[0][name]), name
        torch.testing.assert_close(got[1][name], ref[1][name], rtol=2e-2, atol=2e-2)
        assert got[1][name].dtype == BF16


def test_autograd_sees_only_the_embedding_share() -> None:
    """What makes it save memory: nothing vocabulary-sized reaches the weight through autograd
    from the head. A hook on the leaf sees what autograd accumulates: with the shortcut, only the
    embedding's rows (zero where no token was looked up); without it, the head's dense share too."""
    _ns("cpu")
    model = TiedLM(120, 8, F32, "cpu")
    ids = torch.tensor([3, 3, 7])
    targets = torch.tensor([1, 2, 3])
    incoming: list[torch.Tensor] = []
    handle = model.emb.register_hook(lambda g: incoming.append(g.detach().clone()))
    try:
        for into in (True, False):
            model.zero_grad(set_to_none=True)
            model.loss(ids, targets, into).backward()
    finally:
        handle.remove()
    with_shortcut, without = incoming
    looked_up = torch.zeros(120, dtype=torch.bool)
    looked_up[ids] = True
    assert with_shortcut[~looked_up].abs().max() == 0  # the head's share did not come this way
    assert without[~looked_up].abs().max() > 0
    # and .grad still holds both shares
    torch.testing.assert_close(model.emb.grad, without, rtol=1e-6, atol=1e-7)


def test_the_ordinary_path_where_the_shortcut_would_be_wrong() -> None:
    """No grad mode, a frozen weight, or a non-leaf weight: autograd's own path, so
    ``torch.autograd.grad`` keeps working on anything that is not a parameter's ``.grad``."""
    _ns("cpu")
    model = TiedLM(50, 8, F32, "cpu")
    ids, targets = _micro_batches(50, [6], "cpu")[0]
    hidden = torch.tanh(model.emb[ids] @ model.mix)
    with torch.no_grad():
        a, _ = linear_logprobs(hidden, model.emb, targets, into_weight_grad=True)
        b, _ = linear_logprobs(hidden, model.emb, targets)
    assert torch.equal(a, b)
    scaled = model.emb * 1.0  # not a leaf: its gradient must come back through autograd
    logp, _ = linear_logprobs(hidden, scaled, targets, into_weight_grad=True)
    (g_scaled,) = torch.autograd.grad(logp.sum(), scaled)
    logp, _ = linear_logprobs(hidden, scaled, targets)
    (g_ref,) = torch.autograd.grad(logp.sum(), scaled)
    assert torch.equal(g_scaled, g_ref)
    frozen = model.emb.detach()
    logp, _ = linear_logprobs(
        hidden.detach().requires_grad_(), frozen, targets, into_weight_grad=True
    )
    logp.sum().backward()
    assert frozen.grad is None


def test_schema_declares_the_mutation_and_checks_its_target() -> None:
    ns = _ns("cpu")
    linear_logprobs(torch.zeros(2, 4), torch.zeros(8, 4), torch.zeros(2, dtype=torch.long))
    gen = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(6, 8, generator=gen), torch.randn(40, 8, generator=gen)
    targets = torch.randint(0, 40, (6,), generator=gen)
    op = getattr(torch.ops, ns)
    _, _, lse = op.linear_logprob_fwd(hidden, weight, targets, 0.9, False, 4, 16)
    g = torch.randn(6, generator=gen)
    acc = torch.randn(40, 8, generator=gen)
    torch.library.opcheck(
        op.linear_logprob_bwd_into.default,
        (g, hidden, weight, targets, lse, acc.clone(), 0.9, True, 4, 16),
    )
    gh, gw = op.linear_logprob_bwd(g, hidden, weight, targets, lse, 0.9, True, True, 4, 16)
    into = acc.clone()
    gh_into = op.linear_logprob_bwd_into(g, hidden, weight, targets, lse, into, 0.9, True, 4, 16)
    assert torch.equal(gh_into, gh)
    torch.testing.assert_close(into, acc + gw, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="grad_weight must be"):
        op.linear_logprob_bwd_into(g, hidden, weight, targets, lse, acc[:, :4], 0.9, True, 4, 16)


def test_a_grad_the_op_cannot_write_into_is_added_to() -> None:
    """A strided ``.grad`` (a user's view into a flat buffer) still receives the head's share."""
    _ns("cpu")
    model = TiedLM(64, 8, F32, "cpu", tied=False)
    batches = _micro_batches(64, [7, 9], "cpu")
    ref = _grads(model, batches, into=False)[-1]
    model.zero_grad(set_to_none=True)
    ids, targets = batches[0]
    model.loss(ids, targets, True).backward()
    strided = torch.zeros(8, 64).t()  # [64, 8], not contiguous
    strided.copy_(model.head.grad)
    model.head.grad = strided
    ids, targets = batches[1]
    model.loss(ids, targets, True).backward()
    assert model.head.grad.data_ptr() == strided.data_ptr()
    torch.testing.assert_close(model.head.grad, ref["head"], rtol=1e-6, atol=1e-7)
