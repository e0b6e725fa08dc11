"""Per-token log-probs (and entropy) of a batch's responses under a causal LM.

Two paths with the same numbers: the fused LM head (``srpo.ops.linear_logprobs``: hidden
states of the real response tokens straight to their log-probs, no [n, T, V] logits) when the
model's logits are a bias-free ``decoder(x) @ lm_head.weight.T``, else the full logits. Its own
module because the update, the old/reference log-probs and samplers (``PolicyHandle``) all
need it, while it needs neither the optimizer nor the loss.
"""

from __future__ import annotations

from typing import Any

import torch

from srpo.api import warn
from srpo.distributed.fsdp import FUSED_METHOD, is_sharded
from srpo.ops import linear_logprobs
from srpo.types import RolloutBatch, left_pad


def model_inputs(
    batch: RolloutBatch,
    rows: torch.Tensor,
    pad_token_id: int,
    device: torch.device,
    width: int | None = None,
) -> dict[str, Any]:
    """Left-padded prompts followed by right-padded responses (their first ``width``
    columns; default all): every response starts at the same column, so response log-probs
    are one slice of the logits."""
    prompt_ids, prompt_mask = left_pad(
        [batch.prompt_token_ids[int(g)] for g in batch.group[rows]], pad_token_id
    )
    width = batch.response_ids.shape[1] if width is None else width
    ids = torch.cat([prompt_ids, batch.response_ids[rows, :width]], dim=1)
    mask = torch.cat([prompt_mask, batch.response_mask[rows, :width].long()], dim=1)
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "position_ids": position_ids.to(device),
        "prompt_len": prompt_ids.shape[1],
    }


def eager_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The materializing path: [n, T, V] logits → log_softmax → gather."""
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def unfusable_head(model: Any) -> str | None:
    """Why ``model``'s logits are not ``decoder(x) @ lm_head.weight.T`` (None: they are)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        return f"{type(model).__name__} has no Linear LM head"
    if head.bias is not None:
        return "the LM head has a bias"
    if not hasattr(model, "get_decoder"):
        return f"{type(model).__name__} has no get_decoder()"
    cfg = model.config
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(cfg, key, None) not in (None, 1.0):
            return f"the model scales its logits ({key}={getattr(cfg, key)})"
    return None


class FusableHeads:
    """Whether log-probs can be fused for a model (the head is a bias-free Linear applied to
    the decoder's output, with no logit scaling or soft-capping), checked once per model; a
    model that cannot gets one warning, and the eager path is used."""

    def __init__(self) -> None:
        self._checked: dict[int, tuple[Any, bool]] = {}

    def __call__(self, model: Any) -> bool:
        cached = self._checked.get(id(model))
        if cached is not None:
            return cached[1]
        why = unfusable_head(model)
        if why is not None:
            warn(f"policy.fused_logprobs: {why}; computing log-probs from full logits")
        self._checked[id(model)] = (model, why is None)  # the model: its id stays its own
        return why is None


def fused_forward(
    model: Any,
    inp: dict[str, Any],
    prompt_len: int,
    T: int,
    targets: torch.Tensor,
    real: torch.Tensor,
    temperature: float,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder hidden states at the response positions through the fused LM-head op, for
    the real (unpadded) response tokens only. A function of the model so that FSDP2 can run
    it as a forward method (``srpo.distributed.fsdp.shard_model``)."""
    hidden = model.get_decoder()(**inp, use_cache=False).last_hidden_state
    hidden = hidden[:, prompt_len - 1 : prompt_len - 1 + T]
    head = model.get_output_embeddings().weight
    return linear_logprobs(
        hidden[real], head, targets[real], temperature, with_entropy, into_weight_grad=True
    )


def response_logprobs(
    model: Any,
    batch: RolloutBatch,
    rows: torch.Tensor,
    pad_token_id: int,
    device: torch.device,
    fused: bool,
    with_entropy: bool = False,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[n, T] log-probs of the response tokens of ``rows`` under ``model`` at the batch's
    sampling temperature (float32), and optionally the per-token entropy (detached; 0 on
    pad); through the fused LM head when ``fused``. Responses are padded to the rows' own
    longest (``width``: to that many columns instead, e.g. the batch's, as before token
    budgets — for benchmarks)."""
    # the rows' own response width, not the batch's: a micro-batch of short answers does not
    # pay for the batch's longest one
    full_t = batch.response_ids.shape[1]
    T = response_width(batch.response_mask[rows]) if width is None else width
    inp = model_inputs(batch, rows, pad_token_id, device, T)
    lp = inp.pop("prompt_len")
    targets = batch.response_ids[rows, :T].to(device)
    if not fused:
        logits = model(**inp, use_cache=False).logits[:, lp - 1 : lp - 1 + T].float()
        logp, entropy = eager_logprobs(logits, targets, batch.temperature, with_entropy)
        return _widen(logp, full_t), None if entropy is None else _widen(entropy, full_t)
    # only real response tokens go through the LM head: padding costs nothing
    real = batch.response_mask[rows, :T].to(device)
    args = (inp, lp, T, targets, real, batch.temperature, with_entropy)
    if is_sharded(model):  # inside FSDP's forward: the LM head is gathered there
        logp_real, ent_real = getattr(model, FUSED_METHOD)(*args)
    else:
        logp_real, ent_real = fused_forward(model, *args)
    full = batch.response_mask[rows].to(device)
    logp = torch.zeros(full.shape, dtype=logp_real.dtype, device=device)
    logp = logp.masked_scatter(full, logp_real)
    entropy = None
    if with_entropy:
        entropy = torch.zeros_like(logp).masked_scatter(full, ent_real.to(logp.dtype))
    return logp, entropy


def response_width(mask: torch.Tensor) -> int:
    """Columns up to the last real response token of any row of ``mask`` [n, T]."""
    cols = mask.any(0).nonzero()
    return int(cols.max()) + 1 if cols.numel() else 0


def _widen(x: torch.Tensor, width: int) -> torch.Tensor:
    """[n, t] → [n, width], zeros on the right (the batch's response width)."""
    if x.shape[1] == width:
        return x
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))
