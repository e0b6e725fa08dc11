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

  per-token loss ``l = pg + kl_coef * k``.

* Aggregation over the mask m (bool, or float weights >= 0)::

      token-mean               sum_it l m / sum_it m
      seq-mean-token-mean      mean over non-empty rows of  sum_t l m / sum_t m
      seq-mean-token-sum-norm  mean over non-empty rows of  sum_t l m / C   (Dr.GRPO; C = T)

Gradients flow only into ``logp``. Masked positions (m == 0) are replaced by 0 before any
arithmetic, so NaN/inf stored there can never poison the loss or the gradient; non-finite values
at m != 0, or in rewards, raise ``ValueError`` (``check_finite=True``, the default).

Stats (0-dim tensors, no host sync): ``clip_frac_low`` (share of tokens with A < 0 and
rho < 1 - clip_low), ``clip_frac_high`` (A > 0 and rho > 1 + clip_high), ``dual_clip_frac``
(A < 0 and the dual bound active), ``approx_kl`` (token mean of k2 between the current and the
behaviour policy: 0.5 (logp - old_logp)^2), ``kl`` (token mean of the chosen estimator vs the
reference; 0 without ``ref_logp``), ``adv_abs_mean`` (mean |A_i| over the N rollouts),
``zero_adv_group_frac`` (share of groups that are flat), ``tokens`` (sum of the mask),
``sequences`` (rows with mask sum > 0). Token fractions are mask-weighted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "STAT_NAMES",
    "LossConfig",
    "LossOutput",
    "group_advantages",
    "grpo_loss_reference",
    "validate_inputs",
]

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# Order matches the compiled op's stats vector (csrc/grpo.h, GrpoOut minus the loss).
STAT_NAMES = (
    "clip_frac_low",
    "clip_frac_high",
    "dual_clip_frac",
    "approx_kl",
    "kl",
    "adv_abs_mean",
    "zero_adv_group_frac",
    "tokens",
    "sequences",
)


@dataclass(frozen=True)
class LossConfig:
    """Options of the GRPO-family loss; defaults are plain GRPO with symmetric clipping."""

    clip_low: float = 0.2  # ratio lower bound 1 - clip_low
    clip_high: float = 0.2  # ratio upper bound 1 + clip_high (DAPO clip-higher: 0.28)
    dual_clip: float | None = None  # dual-clip constant c > 1 (negative advantages); None = off
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = (
        "token-mean"
    )
    norm_constant: float | None = None  # seq-mean-token-sum-norm divisor; None -> T
    std_normalize: bool = True  # GRPO (True) vs Dr.GRPO (False)
    eps: float = 1e-6
    zero_var_tol: float = 1e-6  # flat-group rule, relative to max(1, |mean|)
    check_finite: bool = True  # raise on NaN/inf at mask != 0 (one host read of 4 counters)

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_low < 1.0:
            raise ValueError(f"LossConfig.clip_low must be in [0, 1), got {self.clip_low}")
        if not self.clip_high >= 0.0:
            raise ValueError(f"LossConfig.clip_high must be >= 0, got {self.clip_high}")
        if self.dual_clip is not None and not self.dual_clip > 1.0:
            raise ValueError(f"LossConfig.dual_clip must be > 1 or None, got {self.dual_clip}")
        if not self.kl_coef >= 0.0:
            raise ValueError(f"LossConfig.kl_coef must be >= 0, got {self.kl_coef}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"LossConfig.kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"LossConfig.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}"
            )
        if self.norm_constant is not None and not self.norm_constant > 0.0:
            raise ValueError(f"LossConfig.norm_constant must be > 0, got {self.norm_constant}")
        if not self.eps >= 0.0 or not self.zero_var_tol >= 0.0:
            raise ValueError("LossConfig.eps and zero_var_tol must be >= 0")


class LossOutput(NamedTuple):
    """Scalar loss (differentiable w.r.t. logp) and detached 0-dim stats (see STAT_NAMES)."""

    loss: torch.Tensor
    stats: dict[str, torch.Tensor]


_FLOAT_LOGP = (torch.float32, torch.float64, torch.bfloat16)


def validate_inputs(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    cfg: LossConfig,
) -> None:
    """Metadata checks only (no host sync); errors name the offending argument."""
    if not isinstance(cfg, LossConfig):
        raise TypeError(f"cfg must be a LossConfig, got {type(cfg).__name__}")
    named = {"rewards": rewards, "group_ids": group_ids, "logp": logp, "old_logp": old_logp}
    named["mask"] = mask
    if ref_logp is not None:
        named["ref_logp"] = ref_logp
    for name, x in named.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if logp.dim() != 2:
        raise ValueError(f"logp must be 2-D [N, T], got shape {tuple(logp.shape)}")
    if logp.dtype not in _FLOAT_LOGP:
        raise ValueError(f"logp must be float32, float64 or bfloat16, got {logp.dtype}")
    n = logp.shape[0]
    for name, x in named.items():
        if x.device != logp.device:
            raise ValueError(f"{name} is on {x.device} but logp is on {logp.device}")
    for name in ("old_logp", "mask", "ref_logp"):
        x = named.get(name)
        if x is not None and x.shape != logp.shape:
            raise ValueError(
                f"{name} must have the shape of logp {tuple(logp.shape)}, got {tuple(x.shape)}"
            )
    for name in ("old_logp", "ref_logp"):
        x = named.get(name)
        if x is not None and x.dtype != logp.dtype:
            raise ValueError(
                f"{name} dtype {x.dtype} != logp dtype {logp.dtype}; cast with .to(logp.dtype)"
            )
    if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
        raise ValueError(f"mask must be bool or floating point, got {mask.dtype}")
    for name in ("rewards", "group_ids"):
        x = named[name]
        if x.shape != (n,):
            raise ValueError(f"{name} must have shape [N] = ({n},), got {tuple(x.shape)}")
    if not rewards.dtype.is_floating_point:
        raise ValueError(f"rewards must be floating point, got {rewards.dtype}")
    if (
        group_ids.dtype.is_floating_point
        or group_ids.dtype.is_complex
        or group_ids.dtype in (torch.bool,)
    ):
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if cfg.kl_coef > 0.0 and ref_logp is None:
        raise ValueError("ref_logp is required when LossConfig.kl_coef > 0")


def _group_stats(
    rewards: torch.Tensor, group_ids: torch.Tensor, std_normalize: bool, eps: float, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(advantages [N] float64, flat [G] bool, dense ids [N]) in float64."""
    r = rewards.detach().to(torch.float64)
    n = r.shape[0]
    if n == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=r.device)
        return empty, torch.zeros(0, dtype=torch.bool, device=r.device), group_ids.long()
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
    if std_normalize:
        std = (sq / (cnt - 1).clamp_min(1.0)).sqrt()  # unbiased; flat groups are masked below
        adv = dev / (std[dense] + eps)
    else:
        adv = dev
    adv = torch.where(flat[dense], torch.zeros_like(adv), adv)
    return adv, flat, dense


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    std_normalize: bool = True,
    eps: float = 1e-6,
    zero_var_tol: float = 1e-6,
) -> torch.Tensor:
    """Per-rollout GRPO advantage (float64 math, returned in float64).

    ``group_ids`` may be any integers (need not be dense or sorted); groups may differ in size.
    Flat groups (singletons, equal or float-noise-equal rewards) give exactly 0.
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must be 1-D of equal length, got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    adv, _, _ = _group_stats(rewards, group_ids, std_normalize, eps, zero_var_tol)
    return adv


def _check_finite(name: str, x: torch.Tensor, where: torch.Tensor | None = None) -> None:
    bad = ~torch.isfinite(x)
    if where is not None:
        bad &= where
    if bool(bad.any()):
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite values"
            + (" at mask != 0" if where is not None else "")
        )


def grpo_loss_reference(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    cfg: LossConfig = LossConfig(),
) -> LossOutput:
    """The GRPO-family loss in plain torch ops (see the module docstring for the math).

    Computes in float64 for float64 ``logp`` and in float32 otherwise; the loss is returned in
    that dtype. Advantages are always computed in float64.
    """
    validate_inputs(rewards, group_ids, logp, old_logp, mask, ref_logp, cfg)
    cdt = torch.float64 if logp.dtype == torch.float64 else torch.float32
    on = mask if mask.dtype == torch.bool else mask != 0
    m = mask.to(cdt)
    if cfg.check_finite:
        _check_finite("rewards", rewards)
        _check_finite("logp", logp.detach(), on)
        _check_finite("old_logp", old_logp, on)
        if ref_logp is not None:
            _check_finite("ref_logp", ref_logp, on)

    adv64, flat, _ = _group_stats(rewards, group_ids, cfg.std_normalize, cfg.eps, cfg.zero_var_tol)
    a = adv64.to(cdt)[:, None]  # [N, 1]: broadcast, never expanded
    zero = torch.zeros((), dtype=cdt, device=logp.device)
    x = torch.where(on, logp.to(cdt), zero)  # masked positions never enter the math
    xo = torch.where(on, old_logp.detach().to(cdt), zero)

    log_ratio = x - xo
    ratio = torch.exp(log_ratio)
    lo, hi = 1.0 - cfg.clip_low, 1.0 + cfg.clip_high
    pg1 = -a * ratio
    pg2 = -a * torch.clamp(ratio, lo, hi)
    pg = torch.maximum(pg1, pg2)
    if cfg.dual_clip is not None:
        dual_bound = -a * cfg.dual_clip
        dual_active = (a < 0) & (pg > dual_bound)
        pg = torch.where(a < 0, torch.minimum(pg, dual_bound), pg)
    else:
        dual_active = torch.zeros_like(on)

    per_token = pg
    if ref_logp is not None:
        xr = torch.where(on, ref_logp.detach().to(cdt), zero)
        if cfg.kl_estimator == "k1":
            kl = x - xr
        elif cfg.kl_estimator == "k2":
            kl = 0.5 * (x - xr) ** 2
        else:
            d = xr - x
            kl = torch.exp(d) - d - 1.0
        per_token = per_token + cfg.kl_coef * kl
    else:
        kl = None

    row_len = m.sum(dim=1)
    nonempty = row_len > 0
    tokens = m.sum()
    seqs = nonempty.sum().to(cdt)
    row_sum = (per_token * m).sum(dim=1)
    if cfg.aggregation == "token-mean":
        loss = row_sum.sum() / torch.where(tokens > 0, tokens, 1.0)
    else:
        if cfg.aggregation == "seq-mean-token-mean":
            per_row = row_sum / torch.where(nonempty, row_len, 1.0)
        else:
            c = cfg.norm_constant if cfg.norm_constant is not None else float(logp.shape[1])
            per_row = row_sum / c
        loss = torch.where(nonempty, per_row, 0.0).sum() / seqs.clamp_min(1.0)

    with torch.no_grad():
        denom = torch.where(tokens > 0, tokens, 1.0)

        def frac(cond: torch.Tensor) -> torch.Tensor:
            return (cond.to(cdt) * m).sum() / denom

        n = logp.shape[0]
        stats = {
            "clip_frac_low": frac((a < 0) & (ratio < lo)),
            "clip_frac_high": frac((a > 0) & (ratio > hi)),
            "dual_clip_frac": frac(dual_active),
            "approx_kl": (0.5 * log_ratio.detach() ** 2 * m).sum() / denom,
            "kl": (kl.detach() * m).sum() / denom if kl is not None else zero.clone(),
            "adv_abs_mean": (adv64.abs().sum() / max(n, 1)).to(cdt),
            "zero_adv_group_frac": (flat.to(cdt).mean() if flat.numel() > 0 else zero.clone()),
            "tokens": tokens.detach(),
            "sequences": seqs,
        }
    return LossOutput(loss, stats)
