"""Python face of the compiled GRPO loss (csrc/): one fused op, forward + backward.

``grpo_loss`` has the signature and the numbers of ``srpo.algo.grpo_loss_reference`` but runs
as one pass over [N, T]: the per-sequence advantage is computed in the op (segmented mean/std
over groups) and broadcast in registers, the gradient is written in the same pass, and the
stats come back as tensors. The op itself never waits for the device; ``grpo_loss`` adds one
host read of 5 counters when ``cfg.check_finite`` (the default) and none otherwise.
``token_weight`` (optional, [N, T], detached; rollout correction) multiplies the surrogate term
inside the same pass; without it the op runs the unweighted kernels (no extra loads).

The op is ``torch.ops.<ns>.grpo_fwd`` (``<ns>``: ``srpo``, or ``srpo_jit`` for the JIT build),
registered per dispatch key (CPU, CUDA): the tensors positionally (``ref_logp`` and
``token_weight`` optional), the loss options as
keyword-only arguments named like the ``LossConfig`` fields (``op_options``), ``None`` for
"off" (``dual_clip``, ``norm_constant``) and the ``LossConfig`` names for ``kl_estimator`` and
``aggregation``.

Backends: ``"auto"`` (compiled when it loaded and supports the device, else the reference with
one warning), ``"compiled"`` (error if unavailable), ``"reference"`` (the torch oracle).

``make_loss_fn`` is the loss the policy trains with: this op for the built-in GRPO family, the
registry composition of ``srpo.algo`` in torch for everything else. It lives here, above both,
because it needs the op and the reference alike (``srpo.algo`` never imports ``srpo.ops``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

import torch

from srpo.algo import (
    ADVANTAGES,
    STAT_NAMES,
    LossConfig,
    LossOutput,
    grpo_loss_reference,
    validate_inputs,
)
from srpo.ops import _loader
from srpo.ops.linear_logprob import linear_logprobs, linear_logprobs_reference

__all__ = [
    "AdvantagePass",
    "LossConfig",
    "LossOutput",
    "active_backend",
    "advantage_pass",
    "backend_info",
    "compiled_unsupported",
    "grpo_loss",
    "linear_logprobs",
    "linear_logprobs_reference",
    "make_loss_fn",
    "op_options",
]

_BACKENDS = ("auto", "compiled", "reference")
_BAD_NAMES = ("rewards", "logp", "old_logp", "ref_logp", "token_weight")  # see csrc/grpo.h


def _compiled_supports(device: torch.device) -> bool:
    if device.type == "cpu":
        return True
    return device.type == "cuda" and _loader.state().cuda_kernels


def active_backend() -> str:
    """``compiled-cpu``/``compiled-cuda`` (prebuilt), ``jit-cpu``/``jit-cuda``, or ``reference``."""
    ns = _loader.ensure_loaded()
    if ns is None:
        return "reference"
    st = _loader.state()
    prefix = "compiled" if st.source == "prebuilt" else "jit"
    device = "cuda" if st.cuda_kernels and torch.cuda.is_available() else "cpu"
    return f"{prefix}-{device}"


def backend_info() -> dict[str, Any]:
    """What ``srpo doctor`` prints: which backend, from where, and why not if it failed."""
    backend = active_backend()
    st = _loader.state()
    return {
        "backend": backend,
        "source": st.source,
        "library": st.path,
        "abi_version": _loader.ABI_VERSION,
        "cuda_kernels": st.cuda_kernels,
        "cuda_available": torch.cuda.is_available(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu_threads": torch.get_num_threads(),
        "errors": list(st.errors),
    }


def op_options(cfg: LossConfig) -> dict[str, Any]:
    """The keyword-only loss options of ``<ns>::grpo_fwd`` for ``cfg`` (all but need_grad)."""
    return {
        "clip_low": float(cfg.clip_low),
        "clip_high": float(cfg.clip_high),
        "dual_clip": None if cfg.dual_clip is None else float(cfg.dual_clip),
        "kl_coef": float(cfg.kl_coef),
        "kl_estimator": cfg.kl_estimator,
        "aggregation": cfg.aggregation,
        "norm_constant": None if cfg.norm_constant is None else float(cfg.norm_constant),
        "std_normalize": bool(cfg.std_normalize),
        "eps": float(cfg.eps),
        "zero_var_tol": float(cfg.zero_var_tol),
    }


def _raise_if_nonfinite(stats_vec: torch.Tensor, adv_given: bool = False) -> None:
    """One host read of the non-finite counters (skipped under torch.compile tracing)."""
    bad = stats_vec[len(STAT_NAMES) : len(STAT_NAMES) + len(_BAD_NAMES)].tolist()
    names = ("advantages", *_BAD_NAMES[1:]) if adv_given else _BAD_NAMES
    problems = [f"{name} ({int(c)})" for name, c in zip(names, bad, strict=True) if c]
    if problems:
        raise ValueError(
            "grpo_loss: non-finite values (NaN/inf) in "
            + ", ".join(problems)
            + " at mask != 0 (rewards: anywhere); masked-out positions are ignored"
        )


def grpo_loss(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    cfg: LossConfig = LossConfig(),  # noqa: B008 (frozen dataclass: immutable default)
    backend: str = "auto",
    token_weight: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    denominator: float | None = None,
) -> LossOutput:
    """GRPO-family loss; same math and stats as ``srpo.algo.grpo_loss_reference``.

    ``advantages`` [N] and ``denominator``: a micro-batch's loss pass with the mini-batch's
    advantages (``advantage_pass``) and aggregation count, so micro-batches may hold rows of
    any groups and their losses add up to the mini-batch's (see the reference).

    ``token_weight`` [N, T] (optional, detached): rollout-correction weights multiplying the
    per-token surrogate term (not the KL term); see ``srpo.algo.rollout_correction``.

    The loss is float32 for float32/bfloat16 ``logp`` (float32 accumulation) and float64 for
    float64 ``logp``; the gradient w.r.t. ``logp`` has ``logp``'s dtype. Host syncs: one (a
    read of the 5 non-finite counters, then ``ValueError`` if any is set) when
    ``cfg.check_finite``, none otherwise (skipped under ``torch.compile`` tracing too).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    validate_inputs(
        rewards, group_ids, logp, old_logp, mask, ref_logp, cfg, token_weight,
        advantages, denominator,
    )  # fmt: skip
    given = {"advantages": advantages, "denominator": denominator}
    if backend == "reference":
        return grpo_loss_reference(
            rewards, group_ids, logp, old_logp, mask, ref_logp, cfg, token_weight, **given
        )
    ns = _loader.ensure_loaded()
    if ns is None or not _compiled_supports(logp.device):
        why = (
            "; ".join(_loader.state().errors)
            if ns is None
            else f"no compiled kernels for {logp.device.type}"
        )
        if backend == "compiled":
            raise RuntimeError(f"srpo.ops: compiled GRPO op unavailable: {why}")
        if ns is not None:
            _loader.warn_once(
                f"device-{logp.device.type}",
                f"srpo.ops: {why}; using the torch reference for {logp.device.type} tensors",
            )
        return grpo_loss_reference(
            rewards, group_ids, logp, old_logp, mask, ref_logp, cfg, token_weight, **given
        )

    need_grad = bool(logp.requires_grad and torch.is_grad_enabled())
    op = getattr(torch.ops, ns).grpo_fwd
    loss, stats_vec, _grad, _adv = op(
        rewards.detach(),
        group_ids,
        logp,
        old_logp.detach(),
        mask,
        None if ref_logp is None else ref_logp.detach(),
        None if token_weight is None else token_weight.detach(),
        None if advantages is None else advantages.detach(),
        **op_options(cfg),
        need_grad=need_grad,
        denominator=None if denominator is None else float(denominator),
    )
    if cfg.check_finite and not torch.compiler.is_compiling():
        _raise_if_nonfinite(stats_vec, advantages is not None)
    stats = {name: stats_vec[k] for k, name in enumerate(STAT_NAMES)}
    return LossOutput(loss, stats)


class AdvantagePass(NamedTuple):
    """The advantages of a whole mini-batch, computed once before its micro-batches."""

    advantages: torch.Tensor  # [N] float64, on the rewards' device
    zero_adv_group_frac: torch.Tensor  # 0-dim: share of the mini-batch's groups that are flat
    adv_abs_mean: torch.Tensor  # 0-dim: mean |A_i| over its rows


def advantage_pass(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    cfg: LossConfig = LossConfig(),  # noqa: B008 (frozen dataclass: immutable default)
    backend: str = "auto",
) -> AdvantagePass:
    """Advantages of whole groups, once per mini-batch, so that micro-batches may hold rows of
    any groups (``grpo_loss(..., advantages=, denominator=)``).

    The compiled op runs it as itself on [N, 0] token tensors (its group statistics and its
    ``adv`` output, O(N), no token pass): the same float64 arithmetic as the fused loss, so a
    batch cut into micro-batches sees bit for bit the advantages the one-call loss computes.
    Estimators the op does not implement (``cfg.fused`` false) and the ``reference`` backend
    use the registered torch estimator."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    n = rewards.shape[0]
    empty = torch.zeros((n, 0), dtype=torch.float32, device=rewards.device)
    # the row checks (no tokens here, so no KL term to ask a ref_logp for)
    validate_inputs(rewards, group_ids, empty, empty, empty.bool(), None, replace(cfg, kl_coef=0))
    ns = _loader.ensure_loaded()
    if (
        backend != "reference"
        and cfg.fused
        and ns is not None
        and _compiled_supports(rewards.device)
    ):
        op = getattr(torch.ops, ns).grpo_fwd
        _loss, stats_vec, _grad, adv = op(
            rewards.detach(),
            group_ids,
            empty,
            empty,
            empty.bool(),
            None,
            None,
            None,
            **op_options(cfg),
            need_grad=False,
        )
        if cfg.check_finite and not torch.compiler.is_compiling():
            _raise_if_nonfinite(stats_vec)
        flat = stats_vec[STAT_NAMES.index("zero_adv_group_frac")].to(torch.float64)
        mean_abs = adv.abs().mean() if n else adv.new_zeros(())
        return AdvantagePass(adv, flat, mean_abs)
    if backend == "compiled" and not cfg.fused:
        raise ValueError(compiled_unsupported(cfg))
    if cfg.check_finite and n and not bool(torch.isfinite(rewards).all()):
        raise ValueError(f"advantage_pass: non-finite values (NaN/inf) in rewards ({n} rows)")
    out = ADVANTAGES.get(cfg.advantage)(rewards, group_ids, cfg)
    adv = out.advantages.to(torch.float64)
    flat = out.flat.to(torch.float64).mean() if out.flat.numel() else adv.new_zeros(())
    return AdvantagePass(adv, flat, adv.abs().mean() if n else adv.new_zeros(()))


#: What the policy calls: ``(rewards, group_ids, logp, old_logp, mask, ref_logp, cfg=...,
#: token_weight=..., advantages=..., denominator=...)`` (``token_weight``: the
#: rollout-correction weights, or None; ``advantages`` and ``denominator``: the mini-batch's,
#: from ``advantage_pass`` and ``srpo.policy.microbatch``).
LossFn = Callable[..., LossOutput]


def make_loss_fn(backend: str = "auto") -> LossFn:
    """A loss function for ``algorithm.loss_backend``: ``auto`` (compiled where it applies,
    else torch), ``compiled`` (the fused op; an error for a combination it does not
    implement) or ``reference`` (always the torch composition)."""
    if backend not in _BACKENDS:
        raise ValueError(f"loss backend must be one of {_BACKENDS}, got {backend!r}")

    def loss(
        rewards: torch.Tensor,
        group_ids: torch.Tensor,
        logp: torch.Tensor,
        old_logp: torch.Tensor,
        mask: torch.Tensor,
        ref_logp: torch.Tensor | None = None,
        cfg: LossConfig = LossConfig(),  # noqa: B008 (frozen dataclass: immutable default)
        token_weight: torch.Tensor | None = None,
        advantages: torch.Tensor | None = None,
        denominator: float | None = None,
    ) -> LossOutput:
        given = {"advantages": advantages, "denominator": denominator}
        if backend == "reference" or not cfg.fused:
            if backend == "compiled":
                raise ValueError(compiled_unsupported(cfg))
            return grpo_loss_reference(
                rewards, group_ids, logp, old_logp, mask, ref_logp, cfg, token_weight, **given
            )
        return grpo_loss(
            rewards,
            group_ids,
            logp,
            old_logp,
            mask,
            ref_logp,
            cfg,
            backend=backend,
            token_weight=token_weight,
            **given,
        )

    return loss


def compiled_unsupported(cfg: LossConfig) -> str:
    """Why the compiled op cannot run ``cfg`` (the message of ``loss_backend: compiled``)."""
    return (
        f"the compiled loss implements advantage 'grpo', policy_loss 'ppo_clip', the built-in "
        f"KL estimators and aggregations; got advantage {cfg.advantage!r}, policy_loss "
        f"{cfg.policy_loss!r}, kl_estimator {cfg.kl_estimator!r}, aggregation "
        f"{cfg.aggregation!r}: use loss_backend 'auto' or 'reference'"
    )
