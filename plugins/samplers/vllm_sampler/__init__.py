"""The ``vllm`` sampler: rollouts from a colocated, in-process vLLM engine.

Token in, token out: prompts go in as the policy's chat-template token ids, responses come
back as token ids with the log-prob of each sampled token under the distribution it was
drawn from (vLLM's ``processed_logprobs``: after temperature, top-k, top-p). Nothing is
re-tokenized, so what the trainer scores is exactly what was sampled.

The engine holds its own copy of the weights. After every update the policy's weights are
pushed into it in place, within ``sync_timeout_s``, and a probe (``verify_sync``) checks
that the engine's log-probs of a fixed sequence equal the policy's: a sync that left the
engine on stale weights stops the run with the gap in one line instead of training on
the wrong behaviour policy. Residual mismatch between engine and trainer (kernels, dtype)
is what ``algorithm.rollout_correction`` corrects; the ``mismatch_*`` metrics show its size.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from srpo_plugins.samplers._sampling import SamplingOptions, prompt_seeds
from srpo_plugins.samplers.vllm_sampler.engine import start_engine, vllm_missing
from srpo_plugins.samplers.vllm_sampler.weights import (
    PROBE_TOLERANCE,
    probe_gap,
    probe_tokens,
    push_weights,
    run_with_deadline,
)

from srpo.api import (
    OptionError,
    PluginContext,
    PluginError,
    PolicyHandle,
    Prompt,
    RolloutBatch,
    Sampler,
    StateDict,
    splitmix64,
)


class VLLMSamplerOptions(SamplingOptions):
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="the engine's dtype; auto: the policy's (policy.dtype)"
    )
    gpu_memory_utilization: float = Field(
        0.5,
        gt=0,
        le=1,
        description="share of GPU memory the engine may take (weights + KV cache); the "
        "policy and optimizer need the rest. On CPU vLLM reads it as a share of RAM unless "
        "kv_cache_gb is set",
    )
    kv_cache_gb: float | None = Field(
        None, gt=0, description="KV-cache size in GiB (overrides gpu_memory_utilization's)"
    )
    max_model_len: int | None = Field(
        None, ge=16, description="longest prompt + response in tokens; None: the model's"
    )
    enable_prefix_caching: bool = Field(
        True, description="reuse the KV of the prompt shared by a group's G rollouts"
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine (tensor parallel)")
    enforce_eager: bool | None = Field(
        None, description="no CUDA graphs / compilation; None: eager on CPU, graphs on CUDA"
    )
    enable_sleep_mode: bool = Field(
        False,
        description="CUDA only: free the engine's weights and KV cache while the policy "
        "trains (sleep after generating, wake to sync), so both fit on one GPU",
    )
    sync_timeout_s: float = Field(
        300.0, gt=0, description="a weight sync taking longer stops the run (exit 1)"
    )
    verify_sync: Literal["every", "never"] | int = Field(
        10,
        description="probe the engine after a sync: every sync, never, or N = the first "
        "and every Nth (the engine is also probed once when it starts)",
    )
    probe_tolerance: float | None = Field(
        None,
        gt=0,
        description="largest mean |engine − policy| log-prob the probe accepts; None: "
        "1e-4 for float32, 5e-2 for bfloat16, 1e-2 for float16",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "ERROR", description="vLLM's own log level (VLLM_LOGGING_LEVEL wins when set)"
    )

    def model_post_init(self, _context: Any) -> None:
        if isinstance(self.verify_sync, int) and self.verify_sync < 1:
            raise ValueError("verify_sync: an interval must be >= 1 (or 'every', 'never')")


class VLLMSampler(Sampler):
    Options = VLLMSamplerOptions

    @classmethod
    def preflight(cls, options: BaseModel, base_dir: Path) -> None:
        missing = vllm_missing()
        if missing is not None:
            raise OptionError("name", missing)

    def __init__(self, options: VLLMSamplerOptions, context: PluginContext) -> None:
        super().__init__(options, context)
        self.options: VLLMSamplerOptions = options
        if context.policy is None:
            raise ValueError("the vllm sampler loads the policy's model: none was given")
        policy = context.policy
        self.tokenizer = policy.tokenizer
        self.seed = context.seed
        self.calls = 0  # generate() calls so far: part of every request's seed (exact resume)
        self.syncs = 0
        self.wedged = False  # a sync thread that never returned still holds the engine
        self.asleep = False  # enable_sleep_mode: between generating and the next sync
        self.llm = start_engine(options, policy, context.seed)
        self.engine_dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        self.probe = probe_tokens(policy)
        self._check_probe(policy, "at start")

    # -- generation ------------------------------------------------------------------------

    def _params(self, n: int, greedy: bool, seed: int) -> Any:
        from vllm import SamplingParams

        o = self.options
        common = {
            "n": n,
            "max_tokens": o.max_new_tokens,
            "stop_token_ids": [int(self.tokenizer.eos_token_id)],
            "detokenize": False,
            "seed": seed,
        }
        if greedy:
            return SamplingParams(temperature=0.0, **common)
        return SamplingParams(
            temperature=o.temperature,
            top_p=o.top_p,
            top_k=o.top_k or 0,
            logprobs=0,  # the sampled token's log-prob only
            **common,
        )

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        *,
        greedy: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> RolloutBatch:
        from vllm.inputs import TokensPrompt

        policy = self.context.policy
        assert policy is not None
        prompt_ids = [policy.encode_prompt(p.chat) for p in prompts]
        if seeds is None:  # our own: from (run seed, calls so far, prompt index)
            base = (self.seed * 1_000_003 + self.calls * 7_919) % 2**31
            request_seeds = [(base + i) % 2**31 for i in range(len(prompts))]
        else:  # the kernel's: prompt i's samples depend on seeds[i] only (data parallel)
            request_seeds = [
                splitmix64(x & (2**64 - 1)) % 2**31 for x in prompt_seeds(seeds, prompts)
            ]
        self.calls += 1
        requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
        params = [self._params(n, greedy, seed) for seed in request_seeds]
        self._wake()
        outputs = self.llm.generate(requests, params, use_tqdm=False) if prompts else []
        if self.options.enable_sleep_mode:  # the policy trains next: give it the GPU memory
            self.llm.sleep(level=1)  # level 1 keeps a host copy: a refill round can generate
            self.asleep = True
        return self._batch(list(prompts), prompt_ids, outputs, n, greedy)

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def _batch(
        self,
        prompts: list[Prompt],
        prompt_ids: list[list[int]],
        outputs: list[Any],
        n: int,
        greedy: bool,
    ) -> RolloutBatch:
        """vLLM's request outputs → a RolloutBatch (rows grouped by prompt, samples in order)."""
        rows = [c for out in outputs for c in out.outputs]
        T = max((len(c.token_ids) for c in rows), default=0)
        pad = int(self.tokenizer.pad_token_id)
        N = len(rows)
        ids = torch.full((N, T), pad, dtype=torch.long)
        mask = torch.zeros((N, T), dtype=torch.bool)
        logp = torch.zeros((N, T), dtype=torch.float32)
        for i, c in enumerate(rows):
            toks = list(c.token_ids)
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            mask[i, : len(toks)] = True
            if not greedy:
                logp[i, : len(toks)] = torch.tensor(
                    [step[t].logprob for step, t in zip(c.logprobs, toks, strict=True)]
                )
        texts = self.tokenizer.batch_decode(ids.masked_fill(~mask, pad), skip_special_tokens=True)
        return RolloutBatch(
            prompts=prompts,
            group=torch.arange(len(prompts)).repeat_interleave(n)[:N],
            sample=torch.arange(n).repeat(len(prompts))[:N],
            prompt_token_ids=prompt_ids,
            response_ids=ids,
            response_mask=mask,
            behaviour_logp=logp,
            truncated=torch.tensor([c.finish_reason == "length" for c in rows], dtype=torch.bool),
            response_text=texts,
            temperature=0.0 if greedy else self.options.temperature,
        )

    # -- weights ---------------------------------------------------------------------------

    def sync(self, policy: PolicyHandle) -> dict[str, float]:
        if self.wedged:
            raise PluginError("sampler vllm: an earlier weight sync never finished")
        self.syncs += 1
        t = time.perf_counter()
        self._wake()
        try:
            run_with_deadline(
                lambda: push_weights(self.llm, policy),
                self.options.sync_timeout_s,
                "weight sync",
            )
        except PluginError:
            self.wedged = True
            raise
        metrics = {"sync/push_s": time.perf_counter() - t, "sync/count": float(self.syncs)}
        if self._probe_due():
            metrics.update(self._check_probe(policy, f"after sync {self.syncs}"))
        return metrics

    def _probe_due(self) -> bool:
        v = self.options.verify_sync
        if v == "never":
            return False
        if v == "every":
            return True
        return self.syncs == 1 or self.syncs % v == 0

    def _check_probe(self, policy: PolicyHandle, when: str) -> dict[str, float]:
        """Probe the engine against the policy; ``PluginError`` naming the gap if it fails."""
        if self.options.verify_sync == "never":
            return {}
        mean, worst = run_with_deadline(
            lambda: probe_gap(self.llm, policy, self.probe),
            self.options.sync_timeout_s,
            "sync probe",
        )
        tolerance = self.options.probe_tolerance or PROBE_TOLERANCE.get(self.engine_dtype, 1e-2)
        if not mean <= tolerance:  # NaN fails too
            raise PluginError(
                f"sampler vllm: sync probe failed {when}: the engine's log-probs differ from "
                f"the policy's by {mean:.3g} on average (max {worst:.3g}; tolerance "
                f"{tolerance:g}): its weights are not the policy's"
            )
        return {"sync/probe_gap": mean, "sync/probe_gap_max": worst}

    # -- state -----------------------------------------------------------------------------

    def state_dict(self) -> StateDict:
        return {"calls": self.calls, "syncs": self.syncs}

    def load_state_dict(self, state: StateDict) -> None:
        self.calls = int(state.get("calls", 0))
        self.syncs = int(state.get("syncs", 0))

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None or self.wedged:  # a stuck worker thread may hold the engine's locks
            return
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None) or getattr(llm, "shutdown", None)
        if callable(shutdown):
            shutdown()
