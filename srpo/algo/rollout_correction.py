"""Rollout correction: importance weights for the mismatch between the engine that sampled the
rollouts (the *behaviour* policy, e.g. vLLM: ``RolloutBatch.behaviour_logp``) and the trainer's
own log-probs of the same tokens under the same weights (``old_logp``).

Even with identical weights the two differ (kernels, precision, MoE routing), so "on-policy"
training is silently off-policy. With ``d_t = old_t - behaviour_t`` (masked tokens only) and the
per-token ratio ``k_t = exp(d_t) = pi_old / pi_behaviour``, the modes of
``algorithm.rollout_correction.mode`` give a detached weight ``w`` per token:

* ``none``: no weight (the loss is unchanged); the mismatch stats are still reported.
* ``token_tis`` — truncated importance sampling, Yao et al. 2025, "Your Efficient RL Framework
  Secretly Brings You Off-Policy RL Training"::

      w_t = min(k_t, C)                       C = high (default 2.0)

* ``seq_tis`` — the same at the sequence level (one ratio per response)::

      rho_i = exp(sum_t d_t)  over the response's tokens,   w_t = min(rho_i, C)   for all t of i

* ``seq_mis`` — masked importance sampling, Liu, Li et al. 2025, "When Speed Kills Stability:
  Demystifying RL Collapse from the Training-Inference Mismatch": MIS keeps
  ``rho(y) * 1{rho(y) <= C}``, i.e. a sequence whose ratio leaves the band is dropped and the
  others keep their (untruncated) ratio as the weight::

      w_t = rho_i * 1{low <= rho_i <= high}   (default low 0, high C = 2.0)

* ``icepop`` — IcePop (Ling Team 2025, "Every Step Evolves: Scaling Reinforcement Learning for
  Trillion-Scale Thinking Model", Ring-1T; first in the blog "Small Leak Can Sink a Great
  Ship—Boost RL Training on MoE with IcePop"): a double-sided token mask
  ``M(k) = k if k in [alpha, beta] else 0`` multiplies the clipped surrogate, so tokens outside
  the band give no gradient and the others are calibrated by their ratio ``k``::

      w_t = k_t * 1{low <= k_t <= high}        (default low = alpha = 0.5, high = beta = 5.0)

The loss multiplies the per-token surrogate (policy-gradient) term by ``w`` (detached), not the
KL term, and keeps its aggregation denominators (a weight-0 token still counts in the
token-mean), as verl's rollout correction does (``pg_losses * rollout_is_weights`` before
``agg_loss`` with the unchanged response mask).

Stats (0-dim float64 tensors, means over the masked tokens, mask-weighted; reported whenever
behaviour log-probs are given, mode ``none`` included):

* ``mismatch_logp_abs_diff``: mean ``|old - behaviour|``
* ``mismatch_kl``: k3 estimate of KL(behaviour || old) from the behaviour samples,
  mean ``k - 1 - log k``
* ``mismatch_masked_frac``: share of tokens whose weight is 0 (out of the band)
* ``mismatch_truncated_frac``: share of tokens whose weight was clipped at ``high`` (TIS modes)
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = [
    "MODES",
    "STAT_NAMES",
    "RolloutCorrectionOptions",
    "correction_weights",
]

MODES = ("none", "token_tis", "seq_tis", "seq_mis", "icepop")
STAT_NAMES = (
    "mismatch_logp_abs_diff",
    "mismatch_kl",
    "mismatch_masked_frac",
    "mismatch_truncated_frac",
)
#: (low, high) used when the run file leaves them unset; low None: the mode has no lower bound.
DEFAULT_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "none": (None, None),
    "token_tis": (None, 2.0),
    "seq_tis": (None, 2.0),
    "seq_mis": (0.0, 2.0),
    "icepop": (0.5, 5.0),
}


class RolloutCorrectionOptions(BaseModel):
    """``algorithm.rollout_correction``: the importance correction of the behaviour/trainer
    log-prob mismatch (see the module docstring for the formulas and the papers)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    mode: str = Field(
        "none",
        description="none | token_tis (Yao et al. 2025, per-token truncated IS) | seq_tis "
        "(sequence-level truncated IS) | seq_mis (Liu, Li et al. 2025, sequence-level masked "
        "IS) | icepop (Ring-1T's IcePop, per-token masked IS)",
    )
    low: float | None = Field(
        None,
        ge=0,
        description="lower bound of the ratio band (seq_mis, icepop; ignored by the TIS "
        "modes). None: seq_mis 0.0, icepop 0.5",
    )
    high: float | None = Field(
        None,
        gt=0,
        description="truncation constant C (token_tis, seq_tis: weight min(ratio, C)) or upper "
        "bound of the band (seq_mis, icepop: weight 0 above it). None: token_tis 2.0, seq_tis "
        "2.0, seq_mis 2.0, icepop 5.0",
    )

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, v: str) -> str:
        if v not in MODES:
            raise ValueError(f"unknown mode {v!r}; one of {', '.join(MODES)}")
        return v

    @field_validator("high")
    @classmethod
    def _band(cls, v: float | None, info: ValidationInfo) -> float | None:
        mode, low = info.data.get("mode"), info.data.get("low")
        if mode not in ("seq_mis", "icepop"):
            return v  # no band (none, or TIS: only an upper bound; a stray low is ignored)
        default_low, default_high = DEFAULT_BOUNDS[mode]
        lo = default_low if low is None else low
        hi = default_high if v is None else v
        if lo is not None and hi is not None and not lo < hi:
            if v is None:
                raise ValueError(
                    f"low ({lo}) must be < high; {mode}'s default high is {hi}: lower low or "
                    "set high"
                )
            low_text = f"{lo} ({mode}'s default)" if low is None else str(lo)
            raise ValueError(f"must be > low for {mode}, got high {hi} and low {low_text}")
        return v

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """(low, high) in force: the set values, else the mode's defaults."""
        default_low, default_high = DEFAULT_BOUNDS[self.mode]
        return (
            default_low if self.low is None else self.low,
            default_high if self.high is None else self.high,
        )


@torch.no_grad()
def correction_weights(
    old_logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    mask: torch.Tensor,
    cfg: RolloutCorrectionOptions,
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Per-token weights [N, T] (0 at mask == 0; float64 for float64 ``old_logp``, else
    float32), or None for mode ``none``, and the mismatch stats (module docstring).

    ``old_logp`` (trainer) and ``behaviour_logp`` (engine) [N, T]; ``mask`` [N, T] bool or
    float weights (stats are weighted by it; sequence sums run over its nonzero tokens).
    Values at mask == 0 are never read into the math. All math is float64.
    """
    if old_logp.shape != behaviour_logp.shape or old_logp.shape != mask.shape:
        raise ValueError(
            f"old_logp, behaviour_logp and mask must have one shape [N, T], got "
            f"{tuple(old_logp.shape)}, {tuple(behaviour_logp.shape)}, {tuple(mask.shape)}"
        )
    f64 = torch.float64
    on = mask if mask.dtype == torch.bool else mask != 0
    m = mask.to(f64)
    zero = torch.zeros((), dtype=f64, device=old_logp.device)
    behaviour = behaviour_logp.detach().to(device=old_logp.device, dtype=f64)
    d = torch.where(on, old_logp.detach().to(f64) - behaviour, zero)
    tokens = m.sum()
    denom = torch.where(tokens > 0, tokens, 1.0)

    def mean(x: torch.Tensor) -> torch.Tensor:
        return (x * m).sum() / denom

    k = torch.exp(d)
    stats = {
        "mismatch_logp_abs_diff": mean(d.abs()),
        "mismatch_kl": mean(k - 1.0 - d),
    }
    mode = cfg.mode
    if mode == "none":
        stats["mismatch_masked_frac"] = zero.clone()
        stats["mismatch_truncated_frac"] = zero.clone()
        return None, stats
    low, high = cfg.bounds
    assert high is not None
    if mode in ("seq_tis", "seq_mis"):
        ratio = torch.exp(d.sum(dim=1, keepdim=True)).expand_as(d)  # rho_i on every token
    else:
        ratio = k
    if mode in ("token_tis", "seq_tis"):
        truncated = ratio > high
        w = torch.clamp(ratio, max=high)
    else:
        lo = 0.0 if low is None else low
        truncated = torch.zeros_like(on)
        w = torch.where((ratio >= lo) & (ratio <= high), ratio, zero)
    w = torch.where(on, w, zero)
    stats["mismatch_masked_frac"] = mean((w == 0).to(f64))
    stats["mismatch_truncated_frac"] = mean(truncated.to(f64))
    out_dtype = f64 if old_logp.dtype == f64 else torch.float32
    return w.to(out_dtype), stats
