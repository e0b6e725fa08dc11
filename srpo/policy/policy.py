"""Policy: wraps any ``AutoModelForCausalLM`` directory for RL.

It computes response-token log-probs, runs the GRPO-family update with gradient
accumulation over group-aligned micro-batches, and saves HF-format checkpoints that
``AutoModelForCausalLM.from_pretrained`` loads. The loss itself comes from ``loss_fn`` (by
default ``srpo.ops.make_loss_fn()``: the compiled op for the built-in GRPO family, the
registered torch pieces otherwise). It is what samplers see as ``srpo.api.PolicyHandle``.

This module holds the policy's state (model, reference model, optimizer, algorithm options)
and the weights samplers generate with; each job lives in a module of its own: loading
(``loading``), prompt encoding (``prompts``), log-probs (``logprobs``), the update
(``update``, with ``microbatch``, ``optimizer`` and ``update_stats``) and checkpoint I/O
(``checkpoint_io``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from srpo.algo import LossConfig
from srpo.api import validate_override
from srpo.config import AlgorithmSection, PolicySection
from srpo.distributed import Dist
from srpo.distributed.fsdp import copy_full_weights, is_sharded, shard_model
from srpo.distributed.fsdp import iter_full_weights as _iter_full_weights
from srpo.errors import PluginError, SrpoError
from srpo.ops import make_loss_fn
from srpo.policy.checkpoint_io import PolicyCheckpointIO
from srpo.policy.loading import DTYPES, load_model_dir
from srpo.policy.logprobs import FusableHeads, fused_forward, response_logprobs
from srpo.policy.optimizer import make_optimizer
from srpo.policy.packing import packed_response_logprobs, register_packed_forward
from srpo.policy.prompts import encode_prompt
from srpo.policy.recompute import ActivationRecompute
from srpo.policy.update import PolicyUpdate
from srpo.types import RolloutBatch


class Policy(PolicyUpdate, PolicyCheckpointIO):
    """The trainable model with its optimizer; owns log-probs, the update and checkpoints."""

    def __init__(
        self,
        model_dir: Path,
        cfg: PolicySection,
        algo: AlgorithmSection,
        total_steps: int,
        loss_fn: Callable[..., Any] | None = None,
        device: str = "cpu",
        dist: Dist | None = None,
        keep_replica: bool = False,
    ) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.dist = dist if dist is not None else Dist.local()
        self.model_dir, self.dtype = Path(model_dir), cfg.dtype  # for engines with a copy
        self.model, self.tokenizer = load_model_dir(model_dir, cfg.dtype)
        self.model.to(self.device)
        self.model.config.use_cache = True
        # transformers' checkpointing, switched per pass (off during generation: eval mode)
        try:
            self.recompute = ActivationRecompute(
                self.model, cfg.gradient_checkpointing, cfg.activation_memory_gb
            )
        except ValueError as e:
            raise SrpoError(f"policy.gradient_checkpointing: {e}") from None
        if isinstance(cfg.chat_template, str):  # saved with every checkpoint's tokenizer
            self.tokenizer.chat_template = cfg.chat_template
        self.use_chat_template = (
            bool(getattr(self.tokenizer, "chat_template", None))
            if cfg.chat_template is None
            else bool(cfg.chat_template)
        )
        self._run_file_algo = algo
        self.algo = algo
        self.loss_config = LossConfig.from_options(algo)
        self.ref_model = self._load_reference() if algo.kl_coef > 0 else None
        # Sharded runs: a full copy to generate with when the sampler uses the policy's own
        # model (made before sharding; refreshed after every update), then FSDP2.
        self._replica: Any = None
        if self.dist.active:
            if keep_replica:
                self._replica = copy.deepcopy(self.model).eval().requires_grad_(False)
            mixed = DTYPES[cfg.dtype] if self.device.type == "cuda" else None
            shard_model(self.model, fused_forward, param_dtype=mixed)
            if cfg.padding_free:
                register_packed_forward(self.model)
        self.optimizer, self.scheduler = make_optimizer(self.model, cfg, total_steps)
        self.loss_fn = loss_fn if loss_fn is not None else make_loss_fn()
        self._fusable_heads = FusableHeads()

    def _load_reference(self) -> Any:
        if self.cfg.reference_path is not None:
            ref, _ = load_model_dir(self.cfg.reference_path, self.cfg.dtype)
        else:
            ref = copy.deepcopy(self.model)
        return ref.to(self.device).eval().requires_grad_(False)

    def override_algorithm(self, changes: Mapping[str, Any]) -> None:
        """Take a curriculum stage's ``algorithm`` changes on top of the run file's section
        (``{}`` restores it); ``PluginError`` for an invalid change."""
        algo = validate_override(self._run_file_algo, changes, "algorithm")
        assert isinstance(algo, AlgorithmSection)
        try:
            loss_config = LossConfig.from_options(algo)
        except ValueError as e:
            raise PluginError(f"algorithm: {e}") from None
        if algo.kl_coef > 0 and self.ref_model is None:
            raise PluginError(
                "algorithm.kl_coef: a stage can turn the KL penalty on only when the run "
                "starts with it (set algorithm.kl_coef > 0 in the run file, and 0 in the "
                "stages that do not want it)"
            )
        self.algo, self.loss_config = algo, loss_config

    # -- prompts and log-probs ---------------------------------------------------------------

    def encode_prompt(self, prompt: str | Sequence[Mapping[str, str]]) -> list[int]:
        """Prompt token ids (``srpo.policy.prompts.encode_prompt``) with this run's tokenizer,
        chat-template choice and system prompt."""
        return encode_prompt(self.tokenizer, prompt, self.use_chat_template, self.cfg.system_prompt)

    def response_logprobs(
        self,
        model: Any,
        batch: RolloutBatch,
        rows: torch.Tensor,
        with_entropy: bool = False,
        width: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[n, T] log-probs of the response tokens under ``model`` at the batch's sampling
        temperature (float32), and optionally the per-token entropy (detached; 0 on pad).
        ``width``: pad the responses to that many columns (``logprobs.response_logprobs``).
        With ``policy.padding_free`` the rows run as one packed row (``packing``): the same
        numbers, no padding."""
        fused = self.cfg.fused_logprobs and self._fusable_heads(model)
        if self.cfg.padding_free and width is None:
            return packed_response_logprobs(model, batch, rows, self.device, fused, with_entropy)
        return response_logprobs(
            model,
            batch,
            rows,
            int(self.tokenizer.pad_token_id),
            self.device,
            fused,
            with_entropy,
            width,
        )

    # -- the weights samplers see ----------------------------------------------------------

    @property
    def generation_model(self) -> Any:
        """A full model with the current weights to generate with: the trainer's own in one
        process, the replica in a sharded run (``keep_replica``)."""
        if not self.dist.active:
            return self.model
        if self._replica is None:
            raise SrpoError(
                "this sampler generates with the policy's model, which is sharded in a "
                "data-parallel run; its class must set generates_with_policy_model = True "
                "so the policy keeps a full replica for it"
            )
        return self._replica

    def full_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) per parameter and buffer, gathered one at a time in a sharded
        run (every rank must consume it to the end); the model's own tensors otherwise."""
        if is_sharded(self.model):
            return _iter_full_weights(self.model)
        return iter(self.model.state_dict().items())

    def _refresh_replica(self) -> None:
        if self._replica is not None:
            copy_full_weights(self.model, self._replica)
