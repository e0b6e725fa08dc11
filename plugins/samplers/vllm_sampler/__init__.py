"""The ``vllm`` sampler: rollouts from a vLLM engine, colocated in the trainer's process
(``mode: colocate``) or in a server process of its own (``mode: server``, see ``remote``).

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

In server mode the same requests, pushes and probes go over a connection to the server
(``protocol``): the sampler builds the same sampling parameters and the batch from the same
plain completions, so for the same seeds, weights and thread count both modes sample the
same tokens with the same log-probs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from srpo_plugins.samplers._sampling import SamplingOptions, prompt_seeds
from srpo_plugins.samplers.vllm_sampler.engine import (
    Completion,
    completions,
    engine_args,
    start_engine,
    vllm_missing,
)
from srpo_plugins.samplers.vllm_sampler.process import server_gpus
from srpo_plugins.samplers.vllm_sampler.protocol import parse_address
from srpo_plugins.samplers.vllm_sampler.remote import RemoteEngine
from srpo_plugins.samplers.vllm_sampler.weight_sync import backend_for
from srpo_plugins.samplers.vllm_sampler.weights import (
    PROBE_TOLERANCE,
    engine_logprobs,
    full_weights,
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
    mode: Literal["colocate", "server"] = Field(
        "colocate",
        description="where the engine runs: colocate (in the trainer's process) or server "
        "(a process of its own, started and stopped by the sampler, or attached at url); "
        "see docs/vllm.md#server-mode",
    )
    url: str | None = Field(
        None,
        description="server mode: attach to an engine server already running at host:port "
        "or unix:/path (python -m srpo_plugins.samplers.vllm_sampler.server; the key in "
        "SRPO_VLLM_KEY on both sides) instead of starting one; it is left running at the end",
    )
    cpus: list[int] | None = Field(
        None,
        min_length=1,
        description="server mode, on CPU: the cores the engine server runs on (one engine "
        "thread per core); the trainer's threads move to the cores left. None: no pinning, "
        "the engine runs as many threads as the trainer",
    )
    devices: list[int] | None = Field(
        None,
        min_length=1,
        description="server mode, on CUDA: the GPUs the engine server runs on (as "
        "nvidia-smi numbers them; tensor_parallel_size of them); weights then go by vLLM's "
        "NCCL transfer. None: the trainer's GPU, shared (weights by CUDA IPC handles; split "
        "it with gpu_memory_utilization)",
    )
    weight_transport: Literal["auto", "shm", "socket"] = Field(
        "auto",
        description="server mode: how weights reach the engine after each update: shm (CPU: "
        "vLLM's weight-transfer calls, the flattened weights in one /dev/shm file mapped by "
        "the server), socket (streamed over the connection into vLLM's reload: a server on "
        "another machine); auto: for a local server shm on CPU and vLLM's IPC (shared GPU) or "
        "NCCL (devices) weight transfer on CUDA, else socket",
    )
    startup_timeout_s: float = Field(
        300.0,
        gt=0,
        description="server mode: the engine server must be up, its engine loaded, within "
        "this many seconds, else it is stopped and the run does not start",
    )
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
        if self.mode == "colocate" and (
            self.url is not None or self.cpus is not None or self.devices is not None
        ):
            raise ValueError("url, cpus and devices apply to mode: server only")
        if self.devices is not None and len(set(self.devices)) != len(self.devices):
            raise ValueError("devices: a GPU is listed twice")
        if self.devices is not None and len(self.devices) != self.tensor_parallel_size:
            raise ValueError(
                f"devices: {len(self.devices)} GPU(s) for tensor_parallel_size "
                f"{self.tensor_parallel_size}: give one per tensor-parallel rank"
            )
        if self.cpus is not None and self.url is not None:
            raise ValueError("cpus pins a server the sampler starts: pin one at url yourself")
        if self.cpus is not None and len(set(self.cpus)) != len(self.cpus):
            raise ValueError("cpus: a core is listed twice")
        if self.url is not None:
            parse_address(self.url)  # a ValueError naming the forms it takes


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
        self.llm: Any = None  # the in-process engine (colocate)
        self.remote: RemoteEngine | None = None  # the engine server (server)
        if options.mode == "server":
            self.remote = _start_server(options, policy, context.seed)
            self.engine_dtype = str(self.remote.info["dtype"])
        else:
            self.llm = start_engine(options, policy, context.seed)
            dtype = self.llm.llm_engine.model_config.dtype
            self.engine_dtype = str(dtype).removeprefix("torch.")
        self.probe = probe_tokens(policy)
        try:
            if self.remote is not None and options.url is not None:
                # an attached engine outlives runs and may hold the last one's weights
                run_with_deadline(
                    lambda: self.remote.push(lambda: full_weights(policy), 0),  # type: ignore[union-attr]
                    options.sync_timeout_s,
                    "weight sync at start",
                )
            self._check_probe(policy, "at start")
        except BaseException:
            if self.remote is not None:  # a server is a process (or a connection): stop it
                self.remote.close()
            raise

    # -- generation ------------------------------------------------------------------------

    def _params(self, n: int, greedy: bool, seed: int) -> dict[str, Any]:
        """``SamplingParams`` keywords (plain data: they also go to a server)."""
        o = self.options
        common = {
            "n": n,
            "max_tokens": o.max_new_tokens,
            "stop_token_ids": [int(self.tokenizer.eos_token_id)],
            "detokenize": False,
            "seed": seed,
        }
        if greedy:
            return {"temperature": 0.0, **common}
        return {
            "temperature": o.temperature,
            "top_p": o.top_p,
            "top_k": o.top_k or 0,
            "logprobs": 0,  # the sampled token's log-prob only
            **common,
        }

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        *,
        greedy: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> RolloutBatch:
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
        params = [self._params(n, greedy, seed) for seed in request_seeds]
        if self.remote is not None:
            done = self.remote.generate(prompt_ids, params, not greedy) if prompts else []
            return self._batch(list(prompts), prompt_ids, done, n, greedy)
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
        sampling = [SamplingParams(**p) for p in params]
        self._wake()
        outputs = self.llm.generate(requests, sampling, use_tqdm=False) if prompts else []
        if self.options.enable_sleep_mode:  # the policy trains next: give it the GPU memory
            self.llm.sleep(level=1)  # level 1 keeps a host copy: a refill round can generate
            self.asleep = True
        return self._batch(list(prompts), prompt_ids, completions(outputs, not greedy), n, greedy)

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def _batch(
        self,
        prompts: list[Prompt],
        prompt_ids: list[list[int]],
        outputs: list[list[Completion]],
        n: int,
        greedy: bool,
    ) -> RolloutBatch:
        """Completions → a RolloutBatch (rows grouped by prompt, samples in order)."""
        rows = [c for out in outputs for c in out]
        T = max((len(toks) for toks, _, _ in rows), default=0)
        pad = int(self.tokenizer.pad_token_id)
        N = len(rows)
        ids = torch.full((N, T), pad, dtype=torch.long)
        mask = torch.zeros((N, T), dtype=torch.bool)
        logp = torch.zeros((N, T), dtype=torch.float32)
        for i, (toks, lps, _) in enumerate(rows):
            ids[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            mask[i, : len(toks)] = True
            if not greedy:
                assert lps is not None
                logp[i, : len(toks)] = torch.tensor(lps)
        texts = self.tokenizer.batch_decode(ids.masked_fill(~mask, pad), skip_special_tokens=True)
        return RolloutBatch(
            prompts=prompts,
            group=torch.arange(len(prompts)).repeat_interleave(n)[:N],
            sample=torch.arange(n).repeat(len(prompts))[:N],
            prompt_token_ids=prompt_ids,
            response_ids=ids,
            response_mask=mask,
            behaviour_logp=logp,
            truncated=torch.tensor([c[2] == "length" for c in rows], dtype=torch.bool),
            response_text=texts,
            temperature=0.0 if greedy else self.options.temperature,
        )

    def prepare_overlap(self) -> None:
        """Server mode generates beside the update (the engine is another process; this
        thread only waits on its connection). Colocated, the engine shares the trainer's
        process and cores, and vLLM's in-process engine is not known to be safe to drive from
        a second thread: refused."""
        if self.remote is None:
            raise PluginError(
                "sampler vllm: run.max_staleness > 0 needs sampler.options.mode: server (the "
                "colocated engine runs in the trainer's process and cannot generate beside "
                "the update)"
            )

    # -- weights ---------------------------------------------------------------------------

    def sync(self, policy: PolicyHandle) -> dict[str, float]:
        if self.wedged:
            raise PluginError("sampler vllm: an earlier weight sync never finished")
        self.syncs += 1
        t = time.perf_counter()
        self._wake()
        remote = self.remote
        push = (
            (lambda: remote.push(lambda: full_weights(policy), self.syncs))
            if remote is not None
            else (lambda: push_weights(self.llm, policy))
        )
        try:
            run_with_deadline(push, self.options.sync_timeout_s, "weight sync")
        except PluginError:
            self.wedged = True
            if remote is not None:
                remote.abandon()
            raise
        metrics = {"sync/push_s": time.perf_counter() - t, "sync/count": float(self.syncs)}
        if self._probe_due():
            if remote is not None and remote.sync is not None:
                self._check_version(remote)
            metrics.update(self._check_probe(policy, f"after sync {self.syncs}"))
        return metrics

    def _check_version(self, remote: RemoteEngine) -> None:
        """The engine's weight version is the push count (vLLM's ``finish_weight_update``
        set it): a push that did not finish on the engine's side fails here by name."""
        got = remote.weight_version()
        if got != str(self.syncs):
            raise PluginError(
                f"sampler vllm: after sync {self.syncs} the engine's weight version is {got}: "
                "the push did not finish on the engine's side"
            )

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
        remote = self.remote
        logprobs_of = (
            remote.prompt_logprobs
            if remote is not None
            else (lambda ids: engine_logprobs(self.llm, ids))
        )
        try:
            mean, worst = run_with_deadline(
                lambda: probe_gap(logprobs_of, policy, self.probe),
                self.options.sync_timeout_s,
                "sync probe",
            )
        except PluginError:
            if remote is not None:  # a request left unanswered: the connection is out of step
                remote.abandon()
            raise
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
        remote, self.remote = getattr(self, "remote", None), None
        if remote is not None:  # stopped (killed if need be) even after a wedged sync
            remote.close()
            return
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None or self.wedged:  # a stuck worker thread may hold the engine's locks
            return
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None) or getattr(llm, "shutdown", None)
        if callable(shutdown):
            shutdown()


def _start_server(options: VLLMSamplerOptions, policy: PolicyHandle, seed: int) -> RemoteEngine:
    """The engine server for ``mode: server``, after the checks of what it does not do yet.

    Data parallel: one engine server per rank, as in colocate mode — each rank pushes the
    weights it gathered into its own engine and generates its own share of the step's
    prompts with the kernel's seeds, so no rank waits on another's push. A server shared by
    the ranks (``url``) would need the ranks to agree on who pushes and when, which the
    sampler contract does not provide; ``cpus`` would need a split per rank: both refused.
    """
    cuda = policy.device.type == "cuda"
    if options.enable_sleep_mode:
        raise PluginError(
            "sampler vllm: enable_sleep_mode applies to mode: colocate (a server keeps its "
            "memory; share a GPU with gpu_memory_utilization)"
        )
    if cuda and options.cpus is not None:
        raise PluginError("sampler vllm: cpus pins a CPU engine server: on CUDA use devices")
    if not cuda and options.devices is not None:
        raise PluginError("sampler vllm: devices names GPUs: the policy is on the CPU")
    if cuda and options.weight_transport == "shm":
        raise PluginError(
            "sampler vllm: weight_transport: shm is the CPU transport: on CUDA use auto "
            "(vLLM's IPC or NCCL transfer) or socket"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and any(v is not None for v in (options.url, options.cpus, options.devices)):
        raise PluginError(
            f"sampler vllm: mode: server with {world} ranks starts one engine server per "
            "rank: url (one shared server), cpus (one core set) and devices (one GPU set) are "
            "not supported there"
        )
    missing = vllm_missing()
    if missing is not None:
        raise PluginError(f"sampler vllm: {missing}")
    args = engine_args(options, policy, seed)
    gpus = server_gpus(policy.device, options.devices)
    args["weight_transfer_config"] = {"backend": backend_for(policy.device, gpus)}
    return RemoteEngine(options, args, torch.get_num_threads(), gpus)
