"""The embedded default sampler: ``transformers`` generation on the policy's own model.

It shares the policy's weights (no copy, so ``sync`` has nothing to do), except when
generation runs beside the update (``run.max_staleness`` > 0): it then generates from its own
copy, which ``sync`` refreshes. The behaviour
log-probs it returns are those of the distribution it sampled from: after temperature and,
when set, top-p/top-k truncation (renormalized). The trainer computes its log-probs at the
batch's temperature over the full vocabulary, so with top-p/top-k < full the two differ on
purpose; ``behaviour_logp_gap`` in the step metrics shows by how much. Only the sampled
token's log-prob is kept per step (``ChosenLogprobs``): O(n·T) memory, never [n, T, V].

Sampling does not use transformers' ``do_sample`` (global torch RNG, one draw for the whole
batch): ``SeededChooser`` samples every row from its own random stream, keyed by the
prompt's seed and the sample index, and greedy decoding takes its pick. So a rollout depends only on
(seed, weights, prompt), never on the batch it was generated in: data-parallel ranks
generating shares of a step reproduce one process (up to the model's own numerics).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field
from srpo_plugins.samplers._sampling import SamplingOptions, prompt_seeds, row_seed
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from srpo.api import (
    PluginContext,
    PolicyHandle,
    Prompt,
    RolloutBatch,
    Sampler,
    left_pad,
    splitmix64,
)


class HFSamplerOptions(SamplingOptions):
    batch_size: int = Field(512, ge=1, description="rollouts generated per forward batch")


class HFSampler(Sampler):
    Options = HFSamplerOptions
    #: generates with the policy's own model (in a sharded run: the policy's full replica)
    generates_with_policy_model = True

    def __init__(self, options: HFSamplerOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.options: HFSamplerOptions = options
        if context.policy is None:
            raise ValueError("the hf sampler generates with the policy's model: none was given")
        self.policy: PolicyHandle = context.policy
        self.tokenizer = context.policy.tokenizer
        self.own_model: Any = None  # generation beside the update: a copy only sync changes

    def prepare_overlap(self) -> None:
        """The update changes the policy's weights in place while the generation thread
        samples, so generate from a copy from now on (one more model's memory)."""
        if self.own_model is None:
            self.own_model = copy.deepcopy(self.policy.generation_model)
            self.own_model.requires_grad_(False).eval()

    @torch.no_grad()
    def sync(self, policy: PolicyHandle) -> dict[str, float] | None:
        if self.own_model is None:
            return None
        self.own_model.load_state_dict(policy.generation_model.state_dict())
        return None

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        *,
        greedy: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> RolloutBatch:
        prompt_ids = [self.policy.encode_prompt(p.chat) for p in prompts]
        if greedy:
            seed_list: list[int] = []
        elif seeds is None:  # seeded by the global RNG (run.seed): one draw per call
            seed_list = torch.randint(0, 2**62, (len(prompts),)).tolist()
        else:
            seed_list = prompt_seeds(seeds, prompts)
        flat = [(g, s) for g in range(len(prompts)) for s in range(n)]
        chunks = [
            flat[i : i + self.options.batch_size]
            for i in range(0, len(flat), self.options.batch_size)
        ]
        parts = [
            self._generate_chunk(
                prompt_ids, c, None if greedy else [row_seed(seed_list[g], s) for g, s in c]
            )
            for c in chunks
        ]
        T = max((p[0].shape[1] for p in parts), default=0)
        pad = int(self.tokenizer.pad_token_id)
        temperature = 0.0 if greedy else self.options.temperature

        def cat(i: int, value: float | int | bool) -> torch.Tensor:
            return torch.cat(
                [torch.nn.functional.pad(p[i], (0, T - p[i].shape[1]), value=value) for p in parts]
            )

        if not parts:
            empty = torch.zeros((0, 0))
            return RolloutBatch(
                list(prompts),
                torch.zeros(0, dtype=torch.long),
                torch.zeros(0, dtype=torch.long),
                prompt_ids,
                empty.long(),
                empty.bool(),
                empty,
                torch.zeros(0, dtype=torch.bool),
                [],
                temperature,
            )
        ids, mask, logp = cat(0, pad), cat(1, False), cat(2, 0.0)
        truncated = torch.cat([p[3] for p in parts])
        texts = self.tokenizer.batch_decode(ids.masked_fill(~mask, pad), skip_special_tokens=True)
        return RolloutBatch(
            prompts=list(prompts),
            group=torch.tensor([g for g, _ in flat], dtype=torch.long),
            sample=torch.tensor([s for _, s in flat], dtype=torch.long),
            prompt_token_ids=prompt_ids,
            response_ids=ids,
            response_mask=mask,
            behaviour_logp=logp,
            truncated=truncated,
            response_text=texts,
            temperature=temperature,
        )

    def _generate_chunk(
        self,
        prompt_ids: list[list[int]],
        rows: list[tuple[int, int]],
        row_seeds: list[int] | None,
    ) -> tuple[torch.Tensor, ...]:
        """Generate one chunk of (prompt, sample) rows; ``row_seeds`` None means greedy."""
        model = self.own_model if self.own_model is not None else self.policy.generation_model
        device = self.policy.device
        pad = int(self.tokenizer.pad_token_id)
        eos = self.tokenizer.eos_token_id
        ids, att = left_pad([prompt_ids[g] for g, _ in rows], pad)
        lp = ids.shape[1]
        recorder = None if row_seeds is None else ChosenLogprobs()
        # Our own config, not the model's generation_config.json: its defaults (top_p,
        # repetition penalty, ...) would change the sampling distribution behind our back.
        # Always greedy decoding, no sampling knobs (transformers warns about them on a
        # greedy config): when sampling, our processors warp the scores and SeededChooser
        # leaves only its sampled token for the argmax to take.
        config = GenerationConfig(
            max_new_tokens=self.options.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=eos,
            return_dict_in_generate=True,
        )
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=att.to(device),
            generation_config=config,
            logits_processor=None
            if row_seeds is None or recorder is None
            else self._processors(recorder, SeededChooser(row_seeds)),
        )
        resp = out.sequences[:, lp:].cpu()
        if resp.shape[1] == 0:
            z = torch.zeros((len(rows), 0))
            return z.long(), z.bool(), z, torch.ones(len(rows), dtype=torch.bool)
        is_eos = resp == eos
        seen_eos_before = (is_eos.cumsum(1) - is_eos.long()) > 0
        mask = ~seen_eos_before  # up to and including the first EOS
        if recorder is None:
            logp = torch.zeros(resp.shape)
        else:
            logp = recorder.result(out.sequences).cpu().masked_fill(~mask, 0.0)
        return resp, mask, logp, ~is_eos.any(1)

    def _processors(self, recorder: ChosenLogprobs, chooser: SeededChooser) -> LogitsProcessorList:
        """Temperature, top-k, top-p (the order transformers uses), then the recorder, so it
        sees exactly the distribution each token is sampled from, then the chooser."""
        o = self.options
        out = LogitsProcessorList()
        if o.temperature != 1.0:
            out.append(TemperatureLogitsWarper(o.temperature))
        if o.top_k:
            out.append(TopKLogitsWarper(top_k=o.top_k))
        if o.top_p < 1.0:
            out.append(TopPLogitsWarper(top_p=o.top_p))
        out.append(recorder)
        out.append(chooser)
        return out


class SeededChooser(LogitsProcessor):
    """Samples each row's next token from the (warped) scores with the row's own random
    stream, then leaves only that token finite so greedy decoding takes it.

    Gumbel-max: ``argmax(log_softmax(scores) + Gumbel noise)`` is an exact sample of
    ``softmax(scores)``. The noise is counter-based: token v's uniform at step t of row r is
    splitmix64 of (the row's seed, t, v), computed with integer tensor ops on the scores'
    device. So row r's t-th token depends only on its seed and its own scores — not on the
    other rows, the chunking, the global RNG or the device — and on a GPU a [rows, V] draw
    is a few vectorized ops (per-row CPU generators cost ~2 s per decode step at 512 rows ×
    150k vocab).
    """

    #: rows per noise block: bounds the int64 temporaries to ~block·V·8 bytes each
    block = 64

    def __init__(self, seeds: Sequence[int]) -> None:
        self.seeds = [int(s) for s in seeds]
        self.step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.seeds):
            raise RuntimeError(f"{scores.shape[0]} rows for {len(self.seeds)} seeds")
        keys = [splitmix64(s ^ splitmix64(self.step)) for s in self.seeds]
        self.step += 1
        logp = torch.log_softmax(scores.float(), dim=-1)
        chosen = torch.cat(
            [
                (logp[i : i + self.block] + gumbel(keys[i : i + self.block], logp)).argmax(-1)
                for i in range(0, len(keys), self.block)
            ]
        )
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen[:, None], 0.0)


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64_tensor(x: torch.Tensor) -> torch.Tensor:
    """``splitmix64`` elementwise on int64 (two's-complement wrapping = arithmetic mod 2**64)."""
    x = x + _GOLDEN
    x = (x ^ _srl(x, 30)) * _MIX1
    x = (x ^ _srl(x, 27)) * _MIX2
    return x ^ _srl(x, 31)


def gumbel(keys: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """[len(keys), V] standard Gumbel noise (float32, on ``like``'s device): row r is the
    splitmix64 stream keyed by ``keys[r]``, one 53-bit uniform in (0, 1) per token."""
    V = like.shape[-1]
    key = torch.tensor([_signed(k) for k in keys], dtype=torch.int64, device=like.device)
    counter = torch.arange(V, dtype=torch.int64, device=like.device) * _GOLDEN
    bits = splitmix64_tensor(key[:, None] + counter)
    u = (_srl(bits, 11).double() + 0.5) * 2.0**-53
    return (-torch.log(-torch.log(u))).float()


class ChosenLogprobs(LogitsProcessor):
    """Keeps the log-prob of each sampled token under the processed distribution: O(n·T)
    memory instead of transformers' ``output_scores`` [n, T, V].

    A logits processor sees step t's scores before its token is drawn, so it holds one
    step's log-softmax [n, V] and gathers the token when it appears in ``input_ids`` at the
    next call (the last step's in ``result``).
    """

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None
        self.chosen: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids[:, -1])
        self.pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        if self.pending is not None:
            self.chosen.append(self.pending.gather(1, tokens[:, None]).squeeze(1))
            self.pending = None

    def result(self, sequences: torch.Tensor) -> torch.Tensor:
        """[n, T] log-probs of the generated tokens (``sequences`` = prompt + response)."""
        self._take(sequences[:, -1])
        return torch.stack(self.chosen, dim=1)
