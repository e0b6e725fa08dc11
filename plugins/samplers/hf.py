"""The embedded default sampler: ``transformers`` generation on the policy's own model.

It shares the policy's weights (no copy, so ``sync`` has nothing to do). The behaviour
log-probs it returns are those of the distribution it sampled from: after temperature and,
when set, top-p/top-k truncation (renormalized). The trainer computes its log-probs at the
batch's temperature over the full vocabulary, so with top-p/top-k < full the two differ on
purpose; ``behaviour_logp_gap`` in the step metrics shows by how much. Only the sampled
token's log-prob is kept per step (``ChosenLogprobs``): O(n·T) memory, never [n, T, V].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field
from srpo_plugins.samplers._sampling import SamplingOptions
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
)


class HFSamplerOptions(SamplingOptions):
    batch_size: int = Field(512, ge=1, description="rollouts generated per forward batch")


class HFSampler(Sampler):
    Options = HFSamplerOptions

    def __init__(self, options: HFSamplerOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.options: HFSamplerOptions = options
        if context.policy is None:
            raise ValueError("the hf sampler generates with the policy's model: none was given")
        self.policy: PolicyHandle = context.policy
        self.tokenizer = context.policy.tokenizer

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], n: int, *, greedy: bool = False) -> RolloutBatch:
        prompt_ids = [self.policy.encode_prompt(p.chat) for p in prompts]
        flat = [(g, s) for g in range(len(prompts)) for s in range(n)]
        chunks = [
            flat[i : i + self.options.batch_size]
            for i in range(0, len(flat), self.options.batch_size)
        ]
        parts = [self._generate_chunk(prompt_ids, c, greedy) for c in chunks]
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
        self, prompt_ids: list[list[int]], rows: list[tuple[int, int]], greedy: bool
    ) -> tuple[torch.Tensor, ...]:
        model, device = self.policy.model, self.policy.device
        pad = int(self.tokenizer.pad_token_id)
        eos = self.tokenizer.eos_token_id
        ids, att = left_pad([prompt_ids[g] for g, _ in rows], pad)
        lp = ids.shape[1]
        recorder = None if greedy else ChosenLogprobs()
        # Our own config, not the model's generation_config.json: its defaults (top_p,
        # repetition penalty, ...) would change the sampling distribution behind our back.
        # Sampling knobs are off (our processors apply them); greedy decoding gets none at
        # all, since transformers warns about sampling flags on a greedy config.
        knobs = {} if greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
        config = GenerationConfig(
            max_new_tokens=self.options.max_new_tokens,
            do_sample=not greedy,
            pad_token_id=pad,
            eos_token_id=eos,
            return_dict_in_generate=True,
            **knobs,
        )
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=att.to(device),
            generation_config=config,
            logits_processor=None if greedy else self._processors(recorder),
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

    def _processors(self, recorder: ChosenLogprobs) -> LogitsProcessorList:
        """Temperature, top-k, top-p (the order transformers uses), then the recorder, so it
        sees exactly the distribution each token was sampled from."""
        o = self.options
        out = LogitsProcessorList()
        if o.temperature != 1.0:
            out.append(TemperatureLogitsWarper(o.temperature))
        if o.top_k:
            out.append(TopKLogitsWarper(top_k=o.top_k))
        if o.top_p < 1.0:
            out.append(TopPLogitsWarper(top_p=o.top_p))
        out.append(recorder)
        return out


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
