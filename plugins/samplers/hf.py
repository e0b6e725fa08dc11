"""The embedded default sampler: ``transformers`` generation on the policy's own model.

It shares the policy's weights (no copy, so ``sync`` has nothing to do). The behaviour
log-probs it returns are those of the distribution it sampled from: after temperature and,
when set, top-p/top-k truncation (renormalized). The trainer computes its log-probs at the
batch's temperature over the full vocabulary, so with top-p/top-k < full the two differ on
purpose; ``behaviour_logp_gap`` in the step metrics shows by how much.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from srpo.api import (
    PluginContext,
    PluginOptions,
    PolicyHandle,
    Prompt,
    RolloutBatch,
    Sampler,
    left_pad,
)


class HFSamplerOptions(PluginOptions):
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(64, ge=1)
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
        prompt_ids = [self.policy.encode_prompt(p.text) for p in prompts]
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
        o = self.options
        sampling = (
            {}
            if greedy
            else {
                "do_sample": True,
                "temperature": o.temperature,
                "top_p": o.top_p,
                "top_k": o.top_k or 0,
            }
        )
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=att.to(device),
            max_new_tokens=o.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=eos,
            do_sample=not greedy,
            output_scores=True,
            return_dict_in_generate=True,
            **{k: v for k, v in sampling.items() if k != "do_sample"},
        )
        resp = out.sequences[:, lp:].cpu()
        T = resp.shape[1]
        if T == 0:
            z = torch.zeros((len(rows), 0))
            return z.long(), z.bool(), z, torch.ones(len(rows), dtype=torch.bool)
        is_eos = resp == eos
        seen_eos_before = (is_eos.cumsum(1) - is_eos.long()) > 0
        mask = ~seen_eos_before  # up to and including the first EOS
        scores = torch.stack(out.scores, dim=1).float().cpu()  # [n, T, V] processed logits
        if greedy:
            logp = torch.zeros(resp.shape)
        else:
            logp = torch.log_softmax(scores, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
            logp = logp.masked_fill(~mask, 0.0)
        truncated = ~is_eos.any(1)
        return resp, mask, logp, truncated
