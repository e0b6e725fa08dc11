"""Fused linear log-probs: ``log_softmax(hidden @ weight.T / T)[targets]`` without [N, V] logits.

``linear_logprobs`` returns the log-prob of each target token and (optionally) the entropy of
the same distribution, computed by the compiled op ``<ns>::linear_logprob_fwd`` (csrc/
linear_logprob*.{h,cpp,cu}) in [chunk_n, chunk_v] blocks with an online log-sum-exp: the only
[N, V]-sized thing that ever exists is one block (default 2048 x 4096 float32, 32 MB). Backward
(``<ns>::linear_logprob_bwd``) recomputes each block's logits from the saved ``hidden``,
``weight``, ``targets`` and the per-token log-sum-exp, so it costs one GEMM more than the eager
version (4 instead of 3) but saves the [N, V] logits, their log_softmax and their gradient.

Numerics: float32 compute for float32/bfloat16 inputs (bfloat16 chunks are upcast), float64
for float64 inputs (for gradcheck). ``logp`` and ``entropy`` are float32 (float64 for float64
inputs); the gradients have the dtypes of ``hidden`` and ``weight``. The temperature divides
the logits before the softmax, so both outputs are at that temperature and the gradient
carries the 1/T factor.

The entropy is returned **detached**: it is a diagnostic (and an input to entropy-based
selection), no gradient flows through it.

Backends, as ``srpo.ops.grpo_loss``: ``"auto"`` (compiled when it loaded, has this op and
supports the device; else the reference with one warning), ``"compiled"`` (error if
unavailable), ``"reference"`` (``linear_logprobs_reference``: plain torch, materializes).
"""

from __future__ import annotations

from typing import Any

import torch

from srpo.ops import _loader

__all__ = ["linear_logprobs", "linear_logprobs_reference"]

_BACKENDS = ("auto", "compiled", "reference")
_registered: set[str] = set()
_SCALAR_DEFAULTS = (1.0, False, 0, 0)  # temperature, with_entropy, chunk_n, chunk_v (schema)


def _acc_dtype(hidden: torch.Tensor) -> torch.dtype:
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def linear_logprobs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle: materialized [N, V] logits in the accumulation dtype, then log_softmax."""
    acc = _acc_dtype(hidden)
    logits = (hidden.to(acc) @ weight.to(acc).T) / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    logp = logprobs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    if not with_entropy:
        return logp, logits.new_empty((0,))
    with torch.no_grad():
        entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logp, entropy


# --------------------------------------------------------------------------- registration


def _fake_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_n: int = 0,
    chunk_v: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = _acc_dtype(hidden)
    n = hidden.shape[0]
    entropy = hidden.new_empty((n if with_entropy else 0,), dtype=acc)
    return hidden.new_empty((n,), dtype=acc), entropy, hidden.new_empty((2, n), dtype=acc)


def _fake_bwd(
    grad_logp: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    temperature: float = 1.0,
    need_hidden: bool = True,
    need_weight: bool = True,
    chunk_n: int = 0,
    chunk_v: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    acc = _acc_dtype(hidden)
    gh = torch.empty_like(hidden) if need_hidden else hidden.new_empty((0,), dtype=acc)
    gw = torch.empty_like(weight) if need_weight else hidden.new_empty((0,), dtype=acc)
    return gh, gw


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    hidden, weight, targets = inputs[:3]
    # The scalars as the op got them, with the schema's defaults for any left out.
    given = tuple(inputs[3:])
    temperature, _with_entropy, chunk_n, chunk_v = given + _SCALAR_DEFAULTS[len(given) :]
    _logp, entropy, lse = output
    ctx.mark_non_differentiable(entropy, lse)  # entropy is documented as detached
    ctx.set_materialize_grads(False)  # no zero [N] tensors for the unused outputs
    ctx.options = (float(temperature), int(chunk_n), int(chunk_v))
    ctx.save_for_backward(hidden, weight, targets, lse)


def _make_backward(ns: str) -> Any:
    bwd_op = getattr(torch.ops, ns).linear_logprob_bwd

    def _backward(ctx: Any, g_logp: torch.Tensor | None, *_unused: Any) -> tuple[Any, ...]:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if g_logp is None or not (need_h or need_w):
            return (None,) * 7
        hidden, weight, targets, lse = ctx.saved_tensors
        temperature, chunk_n, chunk_v = ctx.options
        gh, gw = bwd_op(
            g_logp, hidden, weight, targets, lse, temperature, need_h, need_w, chunk_n, chunk_v
        )
        return (gh if need_h else None, gw if need_w else None) + (None,) * 5

    return _backward


def _fake_bwd_into(
    grad_logp: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    grad_weight: torch.Tensor,
    temperature: float = 1.0,
    need_hidden: bool = True,
    chunk_n: int = 0,
    chunk_v: int = 0,
) -> torch.Tensor:
    return torch.empty_like(hidden) if need_hidden else hidden.new_empty((0,))


class _IntoWeightGrad(torch.autograd.Function):
    """The fused head whose weight gradient goes straight into ``weight.grad``.

    Autograd would return the head's [V, H] weight gradient, and for an LM head tied to the
    input embedding it keeps that tensor in the shared weight's input buffer from the head's
    backward (the first op of the backward) until the embedding's (the last) so it can add the
    two: a vocabulary-sized tensor live through the whole backward of every micro-batch (113 MB
    for SmolLM2, 0.9 GB for a 1.5B model with a 151k vocabulary). Here the backward adds the
    head's share into ``.grad`` inside its own GEMMs (``linear_logprob_bwd_into``; when
    ``.grad`` is still None it becomes the op's fresh result) and hands autograd nothing for
    the weight; the embedding's share is then added by autograd's usual accumulation. Only
    for a leaf weight whose gradient is consumed from ``.grad`` (``loss.backward()``), never
    for ``torch.autograd.grad``, which reads gradients from the graph and would not see it.
    Summation order: the first micro-batch of a step is bit-identical to the autograd path
    (head + embedding, then stored); later ones add the head's and the embedding's shares to
    the running gradient one after the other instead of their sum, a float rounding
    difference.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        temperature: float,
        with_entropy: bool,
        chunk_n: int,
        chunk_v: int,
        ns: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ops = getattr(torch.ops, ns)
        logp, entropy, lse = ops.linear_logprob_fwd(
            hidden, weight, targets, float(temperature), bool(with_entropy), chunk_n, chunk_v
        )
        ctx.mark_non_differentiable(entropy)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.param = weight  # the Parameter itself: its .grad is written in backward
        ctx.options = (float(temperature), int(chunk_n), int(chunk_v), ns)
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, g_logp: torch.Tensor | None, *_unused: Any) -> tuple[Any, ...]:
        if g_logp is None:
            return (None,) * 8
        hidden, weight, targets, lse = ctx.saved_tensors
        temperature, chunk_n, chunk_v, ns = ctx.options
        ops = getattr(torch.ops, ns)
        param, need_h = ctx.param, ctx.needs_input_grad[0]
        acc = param.grad
        if acc is None or not acc.is_contiguous() or acc.dtype != weight.dtype:
            gh, gw = ops.linear_logprob_bwd(
                g_logp, hidden, weight, targets, lse, temperature, need_h, True, chunk_n, chunk_v
            )
            if acc is None:
                param.grad = gw
            else:  # a .grad the op cannot write into (a strided view, another dtype)
                acc.add_(gw)
        else:
            gh = ops.linear_logprob_bwd_into(
                g_logp, hidden, weight, targets, lse, acc, temperature, need_h,
                chunk_n, chunk_v,
            )  # fmt: skip
        return (gh if need_h else None,) + (None,) * 7


def _register(ns: str) -> None:
    if ns in _registered:
        return
    torch.library.register_fake(f"{ns}::linear_logprob_fwd", _fake_fwd)
    torch.library.register_fake(f"{ns}::linear_logprob_bwd", _fake_bwd)
    torch.library.register_fake(f"{ns}::linear_logprob_bwd_into", _fake_bwd_into)
    torch.library.register_autograd(
        f"{ns}::linear_logprob_fwd", _make_backward(ns), setup_context=_setup_context
    )
    _registered.add(ns)


def _compiled_namespace(device: torch.device) -> tuple[str | None, str]:
    """The op namespace if the compiled op can run on ``device``, else (None, why)."""
    ns = _loader.ensure_loaded()
    if ns is None:
        return None, "; ".join(_loader.state().errors)
    if not hasattr(getattr(torch.ops, ns), "linear_logprob_bwd_into"):
        return None, f"{ns} has no linear_logprob_bwd_into (stale build: reinstall the package)"
    if device.type == "cuda" and not _loader.state().cuda_kernels:
        return None, "no compiled kernels for cuda"
    if device.type not in ("cpu", "cuda"):
        return None, f"no compiled kernels for {device.type}"
    _register(ns)
    return ns, ""


# --------------------------------------------------------------------------- public API


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    *,
    backend: str = "auto",
    chunk_n: int = 0,
    chunk_v: int = 0,
    into_weight_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``targets`` under ``softmax(hidden @ weight.T / temperature)``, and entropy.

    hidden [N, H] and weight [V, H] (float32, bfloat16 or float64; weight may be a tied input
    embedding), targets [N] integer in [0, V). Returns ``(logp [N], entropy [N] or [0])``;
    ``logp`` is differentiable w.r.t. hidden and weight, ``entropy`` is detached.
    ``chunk_n``/``chunk_v``: block shape (0: the op's default, 2048 x 4096).
    ``into_weight_grad``: the backward adds the weight's gradient straight into
    ``weight.grad`` (``_IntoWeightGrad`` says why and when that is right) instead of returning
    it through autograd; only for a leaf weight that requires grad, on the compiled backend,
    with grad mode on (otherwise the ordinary path).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if backend == "reference":
        return linear_logprobs_reference(hidden, weight, targets, temperature, with_entropy)
    ns, why = _compiled_namespace(hidden.device)
    if ns is None:
        if backend == "compiled":
            raise RuntimeError(f"srpo.ops: compiled linear_logprobs unavailable: {why}")
        _loader.warn_once(
            f"linear_logprob-{hidden.device.type}",
            f"srpo.ops: compiled linear_logprobs unavailable ({why}); using the torch reference",
        )
        return linear_logprobs_reference(hidden, weight, targets, temperature, with_entropy)
    if into_weight_grad and weight.is_leaf and weight.requires_grad and torch.is_grad_enabled():
        return _IntoWeightGrad.apply(
            hidden, weight, targets, float(temperature), bool(with_entropy), chunk_n, chunk_v, ns
        )
    op = getattr(torch.ops, ns).linear_logprob_fwd
    logp, entropy, _lse = op(
        hidden, weight, targets, float(temperature), bool(with_entropy), chunk_n, chunk_v
    )
    return logp, entropy
