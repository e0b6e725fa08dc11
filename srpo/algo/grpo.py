"""GRPO-family policy loss: the readable torch reference (the oracle for ``srpo.ops``).

Notation (one batch of N rollouts, padded to T tokens; rollout i answers prompt group g(i)):

* Advantage (GRPO, DeepSeekMath §4.1.2)::

      A_i = (r_i - mean_g) / (std_g + eps)          std_normalize=True   (GRPO)
      A_i =  r_i - mean_g                           std_normalize=False  (Dr.GRPO)

  ``std_g`` is the **unbiased (Bessel, n-1) sample std**, what ``torch.std`` and the common
  GRPO implementations (TRL, verl, OpenRLHF) compute, so numbers match theirs.
  Zero-variance rule: a group is *flat* when it has one member or when
  ``max_i |r_i - mean_g| <= zero_var_tol * max(1, |mean_g|)``; every advantage in a flat group
  is exactly 0. That makes singleton groups 0 (not NaN: the n-1 std is undefined there), and
  keeps float noise (std ~ 1e-9 on "equal" rewards) from being blown up to +-1 by the division.

* Ratio and clipped surrogate (PPO; DAPO clip-higher; dual clip from Ye et al. 2020)::

      rho = exp(logp - old_logp)
      pg  = max(-A rho, -A clamp(rho, 1 - clip_low, 1 + clip_high))
      pg  = min(pg, -A c)        only where A < 0, if dual_clip = c is set

* KL to a reference policy (Schulman's estimators, x = logp, y = ref_logp)::

      k1 = x - y        k2 = (x - y)^2 / 2        k3 = exp(y - x) - (y - x) - 1

  per-token loss ``l = w pg + kl_coef * k``, where ``w`` is an optional detached per-token
  weight (``token_weight``: rollout correction, ``srpo.algo.rollout_correction``; 1 when
  absent). It scales the surrogate term only, never the KL term or the denominators below.

* Aggregation over the mask m (bool, or float weights >= 0)::

      token-mean               sum_it l m / sum_it m
      seq-mean-token-mean      mean over non-empty rows of  sum_t l m / sum_t m
      seq-mean-token-sum-norm  mean over non-empty rows of  sum_t l m / C   (Dr.GRPO; C = T)

Gradients flow only into ``logp``. Masked positions (m == 0) are replaced by 0 before any
arithmetic, so NaN/inf stored there can never poison the loss or the gradient; non-finite values
at m != 0, or in rewards, raise ``ValueError`` (``check_finite=True``, the default).

Each piece above is a registered function (``srpo.algo.registry``): the advantage estimator
(``grpo``; also ``rloo``, leave-one-out), the surrogate (``ppo_clip``), the KL estimator and
the aggregation are looked up by the names in ``LossConfig`` (``srpo.algo.loss_config``, with
the result types; the argument checks: ``srpo.algo.loss_inputs``); ``grpo_loss_reference``
composes them. The compiled op implements the built-in combination (``LossConfig.fused``).

Host syncs: this is the oracle, not the fast path — grouping (``torch.unique`` and the group
count) reads the device, and ``check_finite`` reads one flag per input. The compiled op
(``srpo.ops``) is the one without them.

Stats (0-dim tensors): ``clip_frac_low`` (share of tokens with A < 0 and
rho < 1 - clip_low), ``clip_frac_high`` (A > 0 and rho > 1 + clip_high), ``dual_clip_frac``
(A < 0 and the dual bound active), ``approx_kl`` (token mean of k2 between the current and the
behaviour policy: 0.5 (logp - old_logp)^2), ``kl`` (token mean of the chosen estimator vs the
reference; 0 without ``ref_logp``), ``adv_abs_mean`` (mean |A_i| over the N rollouts),
``zero_adv_group_frac`` (share of groups that are flat), ``tokens`` (sum of the mask),
``sequences`` (rows with mask sum > 0). Token fractions are mask-weighted. A surrogate that
has no clipping reports 0 for the clip fractions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from srpo.algo.loss_config import (
    STAT_NAMES,
    GroupAdvantages,
    LossConfig,
    LossOutput,
    SurrogateOutput,
)
from srpo.algo.loss_inputs import validate_inputs
from srpo.algo.registry import (
    ADVANTAGES,
    KL_PENALTIES,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    register_advantage,
    register_aggregation,
    register_kl,
    register_policy_loss,
)

__all__ = [
    "group_advantages",
    "grpo_loss_reference",
    "zero_gradient_at_zero_advantage",
]


# --------------------------------------------------------------------------- advantages


class _GroupMoments(NamedTuple):
    dense: torch.Tensor  # [N] dense group index
    count: torch.Tensor  # [G] float64
    dev: torch.Tensor  # [N] r_i - mean_g
    sq: torch.Tensor  # [G] sum of dev^2
    flat: torch.Tensor  # [G] bool (zero-variance rule of the module doc)


def _group_moments(rewards: torch.Tensor, group_ids: torch.Tensor, tol: float) -> _GroupMoments:
    """Per-group count, deviations and the flat rule, in float64 (N > 0)."""
    r = rewards.detach().to(torch.float64)
    _, dense = torch.unique(group_ids.long(), return_inverse=True)
    num_groups = int(dense.max()) + 1
    cnt = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(
        0, dense, torch.ones_like(r)
    )
    mean = torch.zeros_like(cnt).index_add_(0, dense, r) / cnt
    dev = r - mean[dense]
    sq = torch.zeros_like(cnt).index_add_(0, dense, dev * dev)
    maxdev = torch.zeros_like(cnt).scatter_reduce_(0, dense, dev.abs(), "amax")
    flat = (cnt < 2) | (maxdev <= tol * mean.abs().clamp_min(1.0))
    return _GroupMoments(dense, cnt, dev, sq, flat)


def _empty_advantages(rewards: torch.Tensor) -> GroupAdvantages:
    dev = rewards.device
    return GroupAdvantages(
        torch.zeros(0, dtype=torch.float64, device=dev),
        torch.zeros(0, dtype=torch.bool, device=dev),
    )


@register_advantage("grpo")
def grpo_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, cfg: LossConfig
) -> GroupAdvantages:
    """GRPO: ``(r - mean_g) / (std_g + eps)`` (Dr.GRPO: ``r - mean_g``); flat groups 0."""
    if rewards.shape[0] == 0:
        return _empty_advantages(rewards)
    g = _group_moments(rewards, group_ids, cfg.zero_var_tol)
    if cfg.std_normalize:
        std = (g.sq / (g.count - 1).clamp_min(1.0)).sqrt()  # unbiased; flat groups masked below
        adv = g.dev / (std[g.dense] + cfg.eps)
    else:
        adv = g.dev
    adv = torch.where(g.flat[g.dense], torch.zeros_like(adv), adv)
    return GroupAdvantages(adv, g.flat)


@register_advantage("rloo")
def rloo_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, cfg: LossConfig
) -> GroupAdvantages:
    """RLOO (Ahmadian et al. 2024): ``r_i`` minus the mean of the group's *other* rewards,
    ``n/(n-1) (r_i - mean_g)``; unbiased baseline, no std scaling; flat groups 0."""
    if rewards.shape[0] == 0:
        return _empty_advantages(rewards)
    g = _group_moments(rewards, group_ids, cfg.zero_var_tol)
    scale = g.count / (g.count - 1).clamp_min(1.0)
    adv = g.dev * scale[g.dense]
    adv = torch.where(g.flat[g.dense], torch.zeros_like(adv), adv)
    return GroupAdvantages(adv, g.flat)


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    std_normalize: bool = True,
    eps: float = 1e-6,
    zero_var_tol: float = 1e-6,
    estimator: str = "grpo",
) -> torch.Tensor:
    """Per-rollout advantage (float64 math, returned in float64).

    ``group_ids`` may be any integers (need not be dense or sorted); groups may differ in size.
    Flat groups (singletons, equal or float-noise-equal rewards) give exactly 0.
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must be 1-D of equal length, got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    cfg = LossConfig(
        advantage=estimator, std_normalize=std_normalize, eps=eps, zero_var_tol=zero_var_tol
    )
    return ADVANTAGES.get(estimator)(rewards, group_ids, cfg).advantages


# --------------------------------------------------------------------------- surrogates


def zero_gradient_at_zero_advantage(fn: Callable[..., SurrogateOutput]) -> Callable:
    """Mark a surrogate whose loss and gradient are exactly 0 wherever the advantage is 0,
    so the policy may skip micro-batches of flat groups (when there is no KL term)."""
    fn.zero_gradient_at_zero_advantage = True  # type: ignore[attr-defined]
    return fn


@register_policy_loss("ppo_clip")
@zero_gradient_at_zero_advantage
def ppo_clip(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, cfg: LossConfig
) -> SurrogateOutput:
    """PPO's clipped surrogate with DAPO's asymmetric bounds and optional dual clip.
    ``logp``/``old_logp`` [N, T] (0 at masked positions), ``adv`` [N, 1]."""
    ratio = torch.exp(logp - old_logp)
    lo, hi = 1.0 - cfg.clip_low, 1.0 + cfg.clip_high
    pg = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, lo, hi))
    if cfg.dual_clip is not None:
        dual_bound = -adv * cfg.dual_clip
        dual_active = (adv < 0) & (pg > dual_bound)
        pg = torch.where(adv < 0, torch.minimum(pg, dual_bound), pg)
    else:
        dual_active = torch.zeros(ratio.shape, dtype=torch.bool, device=ratio.device)
    flags = {
        "clip_frac_low": (adv < 0) & (ratio < lo),
        "clip_frac_high": (adv > 0) & (ratio > hi),
        "dual_clip_frac": dual_active,
    }
    return SurrogateOutput(pg, flags)


# --------------------------------------------------------------------------- KL estimators


@register_kl("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


@register_kl("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (logp - ref_logp) ** 2


@register_kl("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


# --------------------------------------------------------------------------- aggregations


def _row_sums(per_token: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_t l m per row [N], row lengths [N])."""
    return (per_token * m).sum(dim=1), m.sum(dim=1)


def _seq_mean(per_row: torch.Tensor, row_len: torch.Tensor) -> torch.Tensor:
    nonempty = row_len > 0
    seqs = nonempty.sum().to(per_row.dtype)
    return torch.where(nonempty, per_row, 0.0).sum() / seqs.clamp_min(1.0)


@register_aggregation("token-mean")
def token_mean(per_token: torch.Tensor, m: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    row_sum, _ = _row_sums(per_token, m)
    tokens = m.sum()
    return row_sum.sum() / torch.where(tokens > 0, tokens, 1.0)


@register_aggregation("seq-mean-token-mean")
def seq_mean_token_mean(per_token: torch.Tensor, m: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    row_sum, row_len = _row_sums(per_token, m)
    return _seq_mean(row_sum / torch.where(row_len > 0, row_len, 1.0), row_len)


@register_aggregation("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    per_token: torch.Tensor, m: torch.Tensor, cfg: LossConfig
) -> torch.Tensor:
    row_sum, row_len = _row_sums(per_token, m)
    c = cfg.norm_constant if cfg.norm_constant is not None else float(per_token.shape[1])
    return _seq_mean(row_sum / c, row_len)


# --------------------------------------------------------------------------- composition


def _check_finite(name: str, x: torch.Tensor, where: torch.Tensor | None = None) -> None:
    bad = ~torch.isfinite(x)
    if where is not None:
        bad &= where
    if bool(bad.any()):
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite values"
            + (" at mask != 0" if where is not None else "")
        )


def _check_all_finite(
    rewards: torch.Tensor,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    on: torch.Tensor,
    token_weight: torch.Tensor | None = None,
    rewards_name: str = "rewards",
) -> None:
    _check_finite(rewards_name, rewards)
    _check_finite("logp", logp.detach(), on)
    _check_finite("old_logp", old_logp, on)
    if ref_logp is not None:
        _check_finite("ref_logp", ref_logp, on)
    if token_weight is not None:
        _check_finite("token_weight", token_weight, on)


@torch.no_grad()
def _stats(
    surrogate: SurrogateOutput,
    x: torch.Tensor,
    xo: torch.Tensor,
    kl: torch.Tensor | None,
    adv: GroupAdvantages,
    m: torch.Tensor,
) -> dict[str, torch.Tensor]:
    cdt = m.dtype
    zero = torch.zeros((), dtype=cdt, device=m.device)
    tokens = m.sum()
    denom = torch.where(tokens > 0, tokens, 1.0)

    def frac(cond: torch.Tensor) -> torch.Tensor:
        return (cond.to(cdt) * m).sum() / denom

    n = m.shape[0]
    flags = surrogate.token_flags
    return {
        **{k: frac(flags[k]) if k in flags else zero.clone() for k in STAT_NAMES[:3]},
        "approx_kl": (0.5 * (x - xo).detach() ** 2 * m).sum() / denom,
        "kl": (kl.detach() * m).sum() / denom if kl is not None else zero.clone(),
        "adv_abs_mean": (adv.advantages.abs().sum() / max(n, 1)).to(cdt),
        "zero_adv_group_frac": adv.flat.to(cdt).mean() if adv.flat.numel() > 0 else zero.clone(),
        "tokens": tokens.detach(),
        "sequences": (m.sum(dim=1) > 0).sum().to(cdt),
    }


def grpo_loss_reference(
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
    """The GRPO-family loss in plain torch ops, composed from the registered pieces named in
    ``cfg`` (see the module docstring for the math).

    A micro-batch cut from a larger mini-batch (rows of any groups): ``advantages`` [N] are
    the mini-batch's (one advantage pass over whole groups; ``rewards`` and ``group_ids`` are
    then not read, and ``zero_adv_group_frac`` is 0: the caller has the pass's), and
    ``denominator`` is the mini-batch's aggregation count — tokens for ``token-mean``,
    non-empty sequences for the seq-mean aggregations (any other registered aggregation is
    counted like them) — so the micro-batch losses add up to the mini-batch's loss.

    ``token_weight`` [N, T] (optional, detached) multiplies the per-token surrogate of any
    registered policy loss before the KL term is added (rollout correction); the aggregation
    and its denominators are unchanged. Values at mask == 0 are ignored.

    Computes in float64 for float64 ``logp`` and in float32 otherwise; the loss is returned in
    that dtype. Advantages are always computed in float64.
    """
    validate_inputs(
        rewards, group_ids, logp, old_logp, mask, ref_logp, cfg, token_weight,
        advantages, denominator,
    )  # fmt: skip
    cdt = torch.float64 if logp.dtype == torch.float64 else torch.float32
    on = mask if mask.dtype == torch.bool else mask != 0
    m = mask.to(cdt)
    given = advantages is not None
    if cfg.check_finite:
        scores = advantages.detach() if given else rewards
        name = "advantages" if given else "rewards"
        _check_all_finite(scores, logp, old_logp, ref_logp, on, token_weight, name)

    if given:
        no_groups = torch.zeros(0, dtype=torch.bool, device=logp.device)
        adv = GroupAdvantages(advantages.detach().to(torch.float64), no_groups)
    else:
        adv = ADVANTAGES.get(cfg.advantage)(rewards, group_ids, cfg)
    zero = torch.zeros((), dtype=cdt, device=logp.device)
    x = torch.where(on, logp.to(cdt), zero)  # masked positions never enter the math
    xo = torch.where(on, old_logp.detach().to(cdt), zero)
    a = adv.advantages.to(cdt)[:, None]  # [N, 1]: broadcast, never expanded
    surrogate = POLICY_LOSSES.get(cfg.policy_loss)(x, xo, a, cfg)
    per_token, kl = surrogate.per_token, None
    if token_weight is not None:
        per_token = per_token * torch.where(on, token_weight.detach().to(cdt), zero)
    if ref_logp is not None:
        xr = torch.where(on, ref_logp.detach().to(cdt), zero)
        kl = KL_PENALTIES.get(cfg.kl_estimator)(x, xr)
        per_token = per_token + cfg.kl_coef * kl
    loss = LOSS_AGGREGATIONS.get(cfg.aggregation)(per_token, m, cfg)
    if denominator is not None:  # this call's own mean -> its share of the mini-batch's
        loss = loss * (_aggregation_units(m, cfg) / float(denominator))
    return LossOutput(loss, _stats(surrogate, x, xo, kl, adv, m))


def _aggregation_units(m: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """What an aggregation averages over in ``m``: its tokens (token-mean) or its non-empty
    rows (the seq-mean aggregations, and any other registered one)."""
    if cfg.aggregation == "token-mean":
        return m.sum()
    return (m.sum(dim=1) > 0).sum().to(m.dtype)
