"""Padding-free response log-probs: a micro-batch's sequences packed into one row.

``srpo.policy.logprobs.response_logprobs`` runs an [n, P+T] batch of left-padded prompts and
right-padded responses; with long-tailed response lengths most of those slots are padding,
and every one of them costs the whole decoder stack (and attention costs the square of the
padded width). Here each sequence (its prompt + its *real* response tokens) is laid end to
end in one [1, L] row, ``position_ids`` restart at 0 per sequence, and attention never
crosses a sequence boundary, so every number equals the padded path's (to float rounding)
while the model only ever sees real tokens. Same contract and output as
``response_logprobs``: the caller switches with one flag.

How attention is kept inside each sequence (``attention_path``), measured on CPU in
``benchmarks/bench_packing.py`` (figures in ``benchmarks/RESULTS.md``, "Padding-free forward"):

* ``per_sequence`` (the default wherever the model runs transformers' ``sdpa``): one causal
  SDPA call per sequence over its slice of the packed row, through a wrapper of the
  registered ``sdpa`` attention function that acts only when the call carries
  ``SEQLENS_KWARG``. Attention costs sum(len²) instead of L² (block-diagonal mask) or
  n·W² (padded); the decoder's matmuls see only the L real tokens.
* ``block_mask``: transformers' own packed-sequence detection (``attention_mask=None`` and
  restarting ``position_ids``: ``masking_utils.find_packed_sequence_indices``) builds an
  [L, L] block-diagonal causal mask. Exact for every attention implementation and needs no
  wrapper, but SDPA then computes all L² scores: the fallback for models the wrapper
  cannot serve (sliding-window layers, eager attention).
* ``varlen`` (CUDA, a model loaded with ``attn_implementation="flash_attention_*"``):
  transformers' flash-attention varlen path, given ``cu_seq_lens_*``/``max_length_*`` so it
  does not re-derive them from ``position_ids``. No mask, no per-sequence loop.

FlexAttention is not a CPU option: in torch 2.13 it has no backward on CPU (it raises
``NotImplementedError``), and training needs the gradient.

Nothing on the model changes: no ``config._attn_implementation`` switch (transformers reads
it again when gradient checkpointing recomputes a layer during backward, long after a scoped
switch would have been undone), so generation and the padded path run exactly as before.
The one global effect is the ``sdpa`` wrapper, which calls the original function unchanged
for any call without ``SEQLENS_KWARG``.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from srpo.distributed.fsdp import is_sharded
from srpo.ops import linear_logprobs
from srpo.policy.logprobs import eager_logprobs
from srpo.types import RolloutBatch

#: Name of the FSDP forward method for the fused packed path (``register_packed_forward``).
PACKED_FUSED_METHOD = "srpo_packed_fused_forward"
#: The attention kwarg that makes the wrapped ``sdpa`` run one causal call per sequence: the
#: sequences' lengths, a tuple of ints (host values: no device sync per layer).
SEQLENS_KWARG = "srpo_packed_seqlens"
ATTENTION_PATHS = ("per_sequence", "block_mask", "varlen")


@dataclass(frozen=True)
class PackedInputs:
    """One packed row and where to read each real response token's log-prob from it."""

    input_ids: torch.Tensor  # [1, L] int64: prompt + real response tokens, sequence by sequence
    position_ids: torch.Tensor  # [1, L] int64: 0.. per sequence
    cu_seqlens: torch.Tensor  # [n + 1] int32: sequence starts in the row, then L
    seq_lens: tuple[int, ...]  # [n] host copy of the lengths
    pred_index: torch.Tensor  # [R] int64: the position whose output predicts each response token
    targets: torch.Tensor  # [R] int64: those response tokens (row-major order of ``real``)
    real: torch.Tensor  # [n, T] bool: the response mask of the rows

    def to(self, device: torch.device) -> PackedInputs:
        move = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return PackedInputs(**{**vars(self), **move})


def pack_sequences(
    prompts: Sequence[Sequence[int]], response_ids: torch.Tensor, response_mask: torch.Tensor
) -> PackedInputs:
    """Pack n sequences (``prompts[i]`` + the tokens of ``response_ids[i]`` where
    ``response_mask[i]``) into one row. Response tokens are taken where the mask is True, in
    column order: exactly the tokens the padded path's attention mask lets the model see,
    with the positions its ``cumsum`` gives them, so a mask with holes packs the same way."""
    if len(prompts) != response_ids.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {response_ids.shape[0]} responses")
    real = response_mask.bool()
    ids: list[torch.Tensor] = []
    pred: list[torch.Tensor] = []
    lens: list[int] = []
    start = 0
    for i, prompt in enumerate(prompts):
        resp = response_ids[i][real[i]]
        if not len(prompt) and len(resp):
            raise ValueError(f"row {i}: an empty prompt cannot predict its first response token")
        seq = torch.cat([torch.as_tensor(list(prompt), dtype=torch.long), resp.long()])
        # token k of the response (at seq index len(prompt) + k) is predicted from index - 1
        pred.append(start + len(prompt) - 1 + torch.arange(len(resp)))
        ids.append(seq)
        lens.append(len(seq))
        start += len(seq)
    lengths = torch.tensor(lens, dtype=torch.long)
    starts = torch.cumsum(lengths, 0) - lengths
    position_ids = torch.arange(start) - torch.repeat_interleave(starts, lengths)
    return PackedInputs(
        input_ids=torch.cat(ids).unsqueeze(0) if ids else torch.zeros(1, 0, dtype=torch.long),
        position_ids=position_ids.unsqueeze(0),
        cu_seqlens=torch.cat([starts, torch.tensor([start])]).to(torch.int32),
        seq_lens=tuple(lens),
        pred_index=torch.cat(pred) if pred else torch.zeros(0, dtype=torch.long),
        targets=response_ids[real].long(),
        real=real,
    )


def pack_rows(batch: RolloutBatch, rows: torch.Tensor) -> PackedInputs:
    """``pack_sequences`` of a batch's ``rows`` (host tensors)."""
    prompts = [batch.prompt_token_ids[int(g)] for g in batch.group[rows]]
    return pack_sequences(prompts, batch.response_ids[rows], batch.response_mask[rows])


@dataclass(frozen=True)
class TokenSlots:
    """Token slots each layout runs the decoder over, for one row set, against its real
    tokens (prompt + real response tokens): ``update/pad_frac`` = slots ÷ tokens − 1."""

    tokens: int
    padded: int  # n × (longest prompt of the rows + their response width)
    packed: int  # the packed row holds real tokens only

    def pad_frac(self, packed: bool) -> float:
        return (self.packed if packed else self.padded) / max(self.tokens, 1) - 1.0


def token_slots(batch: RolloutBatch, rows: torch.Tensor) -> TokenSlots:
    prompt_lens = [len(batch.prompt_token_ids[int(g)]) for g in batch.group[rows]]
    tokens = sum(prompt_lens) + int(batch.response_mask[rows].sum())
    # the padded path pads responses to the rows' own last real column (response_width)
    cols = batch.response_mask[rows].any(0).nonzero()
    width = int(cols.max()) + 1 if cols.numel() else 0
    padded = len(prompt_lens) * (max(prompt_lens, default=0) + width)
    return TokenSlots(tokens=tokens, padded=padded, packed=tokens)


# -- attention -------------------------------------------------------------------------------


class _PerSequenceSdpa:
    """The registered ``sdpa`` attention function, wrapped: with ``SEQLENS_KWARG`` it runs the
    original once per sequence, on that sequence's slice of q/k/v with no mask (so SDPA's own
    causal kernel), and concatenates; without it, it is the original call, untouched. The
    original does the GQA, scaling and dropout handling, so both paths share that code."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.calls = 0  # packed calls served: proves the model's attention came through here

    def __call__(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        seq_lens = kwargs.pop(SEQLENS_KWARG, None)
        if seq_lens is None:
            return self.original(module, query, key, value, attention_mask, *args, **kwargs)
        if kwargs.get("sliding_window") is not None:
            raise ValueError("per-sequence packed attention cannot serve sliding-window layers")
        self.calls += 1
        outs, start = [], 0
        for n in seq_lens:
            end = start + n
            q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
            outs.append(self.original(module, q, k, v, None, *args, **kwargs)[0])
            start = end
        return torch.cat(outs, dim=1), None


def per_sequence_sdpa() -> _PerSequenceSdpa:
    """Install (once per process) and return the ``sdpa`` wrapper."""
    from transformers import AttentionInterface

    current = AttentionInterface._global_mapping["sdpa"]
    if isinstance(current, _PerSequenceSdpa):
        return current
    wrapper = _PerSequenceSdpa(current)
    AttentionInterface.register("sdpa", wrapper)
    return wrapper


def _has_sliding_layers(config: Any) -> bool:
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return True
    return bool(getattr(config, "use_sliding_window", False)) and bool(
        getattr(config, "sliding_window", None)
    )


def attention_path(model: Any) -> str:
    """The fastest exact path this model can take (see the module docstring)."""
    cfg = model.config
    impl = getattr(cfg, "_attn_implementation", None) or ""
    if impl.startswith("flash_attention"):
        return "varlen"
    if impl == "sdpa" and not _has_sliding_layers(cfg):
        return "per_sequence"
    return "block_mask"


def decoder_kwargs(packed: PackedInputs, path: str) -> dict[str, Any]:
    """The decoder's inputs for one packed row under attention ``path``."""
    inp: dict[str, Any] = {"input_ids": packed.input_ids, "position_ids": packed.position_ids}
    if path == "per_sequence":
        # a 4-D mask is passed through as given, so transformers builds no [L, L] mask; this
        # one has no elements, so any attention that ignored SEQLENS_KWARG would fail loudly
        marker = torch.ones(1, 1, 0, 0, dtype=torch.bool, device=packed.input_ids.device)
        inp.update(attention_mask=marker, **{SEQLENS_KWARG: packed.seq_lens})
    elif path == "varlen":
        inp.update(
            attention_mask=None,
            cu_seq_lens_q=packed.cu_seqlens,
            cu_seq_lens_k=packed.cu_seqlens,
            max_length_q=max(packed.seq_lens, default=0),
            max_length_k=max(packed.seq_lens, default=0),
        )
    elif path == "block_mask":  # no mask: transformers reads the packing off position_ids
        inp.update(attention_mask=None)
    else:
        raise ValueError(f"unknown attention path {path!r} (one of {ATTENTION_PATHS})")
    return inp


# -- log-probs -------------------------------------------------------------------------------


def packed_fused_forward(
    model: Any,
    inp: dict[str, Any],
    pred_index: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder hidden states of the packed row at the predicting positions through the fused
    LM-head op. A function of the model so that FSDP2 can run it as a forward method
    (``register_packed_forward``), gathering the LM head around it."""
    hidden = model.get_decoder()(**inp, use_cache=False).last_hidden_state[0, pred_index]
    head = model.get_output_embeddings().weight
    return linear_logprobs(hidden, head, targets, temperature, with_entropy, into_weight_grad=True)


def register_packed_forward(model: Any) -> Any:
    """Make ``packed_fused_forward`` an FSDP2 forward method of an already sharded ``model``
    (as ``shard_model`` does for the padded ``fused_forward``)."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    setattr(model, PACKED_FUSED_METHOD, types.MethodType(packed_fused_forward, model))
    register_fsdp_forward_method(model, PACKED_FUSED_METHOD)
    return model


def _keeps_logits(model: Any) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep`` (then only the R predicting
    positions go through the LM head, not all L)."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def packed_response_logprobs(
    model: Any,
    batch: RolloutBatch,
    rows: torch.Tensor,
    device: torch.device,
    fused: bool,
    with_entropy: bool = False,
    *,
    attention: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[n, T] log-probs of the response tokens of ``rows`` under ``model`` (float32, 0 on
    pad) and optionally their entropy (detached, 0 on pad), from one packed row: the same
    numbers as ``response_logprobs``. ``attention`` forces a path (default:
    ``attention_path(model)``)."""
    path = attention or attention_path(model)
    packed = pack_rows(batch, rows).to(device)
    wrapper = per_sequence_sdpa() if path == "per_sequence" else None
    calls = wrapper.calls if wrapper is not None else 0
    inp = decoder_kwargs(packed, path)
    if fused:
        args = (inp, packed.pred_index, packed.targets, batch.temperature, with_entropy)
        if is_sharded(model):  # inside FSDP's forward: the LM head is gathered there
            if not hasattr(model, PACKED_FUSED_METHOD):
                raise RuntimeError(
                    "packed log-probs of a sharded model need register_packed_forward(model)"
                )
            logp_real, ent_real = getattr(model, PACKED_FUSED_METHOD)(*args)
        else:
            logp_real, ent_real = packed_fused_forward(model, *args)
    else:
        if _keeps_logits(model):
            out = model(**inp, use_cache=False, logits_to_keep=packed.pred_index)
            logits = out.logits[0]
        else:
            logits = model(**inp, use_cache=False).logits[0, packed.pred_index]
        logp_real, ent_real = eager_logprobs(
            logits.float(), packed.targets, batch.temperature, with_entropy
        )
    if wrapper is not None and wrapper.calls == calls and packed.input_ids.shape[1]:
        raise RuntimeError(
            f"{type(model).__name__}: its attention does not go through transformers' "
            "registered 'sdpa' function; use attention='block_mask'"
        )
    real = packed.real
    logp = torch.zeros(real.shape, dtype=logp_real.dtype, device=device)
    logp = logp.masked_scatter(real, logp_real)
    entropy = None
    if with_entropy:
        assert ent_real is not None
        entropy = torch.zeros_like(logp).masked_scatter(real, ent_real.to(logp.dtype))
    return logp, entropy
