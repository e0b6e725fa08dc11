"""Policy: wraps any ``AutoModelForCausalLM`` directory for RL.

It computes response-token log-probs, runs the GRPO-family update with gradient
accumulation over group-aligned micro-batches, and saves HF-format checkpoints that
``AutoModelForCausalLM.from_pretrained`` loads. The loss itself comes from ``loss_fn`` (by
default ``srpo.algo.make_loss_fn()``: the compiled op for the built-in GRPO family, the
registered torch pieces otherwise). It is what samplers see as ``srpo.api.PolicyHandle``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from srpo.algo import ADVANTAGES, LossConfig, correction_weights, make_loss_fn
from srpo.api import validate_override, warn
from srpo.config import AlgorithmSection, PolicySection
from srpo.errors import PluginError, SrpoError
from srpo.ops import linear_logprobs
from srpo.types import RolloutBatch, Scores, left_pad

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_model_dir(path: Path, dtype: str = "float32") -> tuple[Any, PreTrainedTokenizerBase]:
    """Model + tokenizer from a local HF directory; a one-line error if it is not one."""
    if not path.is_dir():
        raise SrpoError(f"{path}: model directory not found")
    if not (path / "config.json").exists():
        raise SrpoError(f"{path}: not a transformers model directory (no config.json)")
    hf_logging.disable_progress_bar()  # srpo draws its own progress; keep the console clean
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    except (OSError, ValueError) as e:
        raise SrpoError(f"{path}: cannot load model: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier on the base LR at optimizer step ``s``: linear warmup, then the schedule."""

    def f(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


class _UpdateStats:
    """Loss stats over an update's micro-batches, kept as float64 device tensors so they
    reach the host once, at the end (a float() per micro-batch would stall a GPU's queue).
    Counts are summed; everything else is weighted by the micro-batch's tokens."""

    SUMMED = ("tokens", "sequences", "skipped_tokens")

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.weights: dict[str, float] = {}

    def add(self, stats: Mapping[str, Any], weight: float) -> None:
        for k, v in stats.items():
            if isinstance(v, torch.Tensor):
                v = v.to(torch.float64)
            if k in self.SUMMED:
                self.sums[k] = self.sums.get(k, 0.0) + v
                continue
            self.sums[k] = self.sums.get(k, 0.0) + v * weight
            self.weights[k] = self.weights.get(k, 0.0) + weight

    def result(self) -> dict[str, float]:
        on_device = [k for k, v in self.sums.items() if isinstance(v, torch.Tensor)]
        host = dict(self.sums)
        if on_device:  # one device-to-host copy for all stats
            values = torch.stack([self.sums[k] for k in on_device]).tolist()
            host.update(zip(on_device, values, strict=True))
        return {k: v / self.weights[k] if k in self.weights else v for k, v in host.items()}


def _eager_logprobs(
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


def _unfusable_head(model: Any) -> str | None:
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


def _flat_micro_stats(m_host: torch.Tensor) -> dict[str, Any]:
    """The loss stats a micro-batch of zero-advantage groups would report, known without
    running it (loss and clip shares 0); approx_kl, entropy, the behaviour gap and the
    mismatch_* stats need the forward pass and are averaged over the micro-batches that ran."""
    return {
        "loss": 0.0,
        "clip_frac_low": 0.0,
        "clip_frac_high": 0.0,
        "dual_clip_frac": 0.0,
        "kl": 0.0,
        "adv_abs_mean": 0.0,
        "zero_adv_group_frac": 1.0,
        "tokens": float(m_host.sum()),
        "sequences": float(m_host.any(1).sum()),
    }


class Policy:
    """The trainable model with its optimizer; owns log-probs, the update and checkpoints."""

    def __init__(
        self,
        model_dir: Path,
        cfg: PolicySection,
        algo: AlgorithmSection,
        total_steps: int,
        loss_fn: Callable[..., Any] | None = None,
        device: str = "cpu",
    ) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.model_dir, self.dtype = Path(model_dir), cfg.dtype  # for engines with a copy
        self.model, self.tokenizer = load_model_dir(model_dir, cfg.dtype)
        self.model.to(self.device)
        self.model.config.use_cache = True
        if cfg.gradient_checkpointing:  # transformers' own; off during generation (eval mode)
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
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
        opt = cfg.optimizer
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=opt.lr,
            betas=opt.betas,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
        )
        optimizer_steps = max(1, total_steps * cfg.mini_batches * cfg.ppo_epochs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(opt.schedule, opt.warmup_steps, optimizer_steps)
        )
        self.loss_fn = loss_fn if loss_fn is not None else make_loss_fn()
        self._head_checked: dict[int, tuple[Any, torch.Tensor | None]] = {}

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

    # -- prompts -------------------------------------------------------------------------

    def encode_prompt(self, prompt: str | Sequence[Mapping[str, str]]) -> list[int]:
        """Prompt token ids: a string, or chat messages (``[{"role", "content"}, ...]``),
        through the tokenizer's chat template when it has one (and the run uses it)."""
        if self.use_chat_template:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            system = self.cfg.system_prompt
            if system is not None and not any(m["role"] == "system" for m in messages):
                messages = [{"role": "system", "content": system}, *messages]
            ids = self.tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=True
            )
            # transformers 5 returns a BatchEncoding (a Mapping, not a dict); older: a list
            if isinstance(ids, Mapping) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return [int(t) for t in ids]
        if not isinstance(prompt, str):
            raise SrpoError(
                "prompt given as chat messages, but the policy uses no chat template "
                "(policy.chat_template is false, or the tokenizer has none)"
            )
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    # -- log-probs -------------------------------------------------------------------------

    def _inputs(self, batch: RolloutBatch, rows: torch.Tensor) -> dict[str, Any]:
        """Left-padded prompts followed by right-padded responses: every response starts at
        the same column, so response log-probs are one slice of the logits."""
        pad = int(self.tokenizer.pad_token_id)
        prompt_ids, prompt_mask = left_pad(
            [batch.prompt_token_ids[int(g)] for g in batch.group[rows]], pad
        )
        ids = torch.cat([prompt_ids, batch.response_ids[rows]], dim=1)
        mask = torch.cat([prompt_mask, batch.response_mask[rows].long()], dim=1)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        return {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": position_ids.to(self.device),
            "prompt_len": prompt_ids.shape[1],
        }

    def response_logprobs(
        self, model: Any, batch: RolloutBatch, rows: torch.Tensor, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[n, T] log-probs of the response tokens under ``model`` at the batch's sampling
        temperature (float32), and optionally the per-token entropy (detached; 0 on pad)."""
        inp = self._inputs(batch, rows)
        lp = inp.pop("prompt_len")
        T = batch.response_ids.shape[1]
        targets = batch.response_ids[rows].to(self.device)
        head = self._fused_head(model)
        if head is None:
            logits = model(**inp, use_cache=False).logits[:, lp - 1 : lp - 1 + T].float()
            return _eager_logprobs(logits, targets, batch.temperature, with_entropy)
        hidden = model.get_decoder()(**inp, use_cache=False).last_hidden_state
        hidden = hidden[:, lp - 1 : lp - 1 + T]
        # only real response tokens go through the LM head: padding costs nothing
        real = batch.response_mask[rows].to(self.device)
        logp_real, ent_real = linear_logprobs(
            hidden[real], head, targets[real], batch.temperature, with_entropy
        )
        logp = torch.zeros(real.shape, dtype=logp_real.dtype, device=self.device)
        logp = logp.masked_scatter(real, logp_real)
        entropy = None
        if with_entropy:
            entropy = torch.zeros_like(logp).masked_scatter(real, ent_real.to(logp.dtype))
        return logp, entropy

    def _fused_head(self, model: Any) -> torch.Tensor | None:
        """The LM head's weight when log-probs can be fused (the head is a bias-free Linear
        applied to the decoder's output, with no logit scaling or soft-capping); else None,
        with one warning, and the eager path is used."""
        if not self.cfg.fused_logprobs:
            return None
        cached = self._head_checked.get(id(model))
        if cached is not None:
            return cached[1]
        why = _unfusable_head(model)
        if why is not None:
            warn(f"policy.fused_logprobs: {why}; computing log-probs from full logits")
        weight = None if why is not None else model.get_output_embeddings().weight
        self._head_checked[id(model)] = (model, weight)
        return weight

    # -- the update ------------------------------------------------------------------------

    def _micro_batches(self, batch: RolloutBatch, groups: list[int]) -> list[torch.Tensor]:
        """Row sets of whole groups, about ``micro_batch_size`` rollouts each: the loss op
        normalizes advantages per group, so a group is never split."""
        out, cur, size = [], [], 0
        for g in groups:
            rows = (batch.group == g).nonzero().flatten()
            if size and size + len(rows) > self.cfg.micro_batch_size:
                out.append(torch.cat(cur))
                cur, size = [], 0
            cur.append(rows)
            size += len(rows)
        if cur:
            out.append(torch.cat(cur))
        return out

    def _mini_batches(self, batch: RolloutBatch) -> list[list[int]]:
        """Groups of each optimizer step: ``mini_batches`` interleaved slices."""
        k = self.cfg.mini_batches
        groups = list(range(len(batch.prompts)))
        return [m for m in (groups[i::k] for i in range(k)) if m]

    def update(
        self, batch: RolloutBatch, scores: Scores, loss_mask: torch.Tensor | None = None
    ) -> dict[str, float]:
        """One training batch: ``ppo_epochs`` × ``mini_batches`` optimizer steps, each
        accumulating gradients over group-aligned micro-batches.

        ``loss_mask`` [N, T] (default: the response mask) lets algorithms drop tokens, e.g.
        DAPO's overlong filtering of truncated responses. Host syncs: one per optimizer step
        (the gradient norm decides whether the step is taken) and one for the stats.
        """
        if batch.num_rollouts == 0:
            return {}
        if not batch.temperature > 0:
            raise ValueError("cannot train on greedy rollouts (RolloutBatch.temperature is 0)")
        self.model.train()
        mask = batch.response_mask if loss_mask is None else loss_mask
        minis = self._mini_batches(batch)
        reuse_logp = self.cfg.ppo_epochs == 1 and len(minis) == 1
        old_logp = None if reuse_logp else self._old_logprobs(batch)
        ref_logp = self._logprobs_all(self.ref_model, batch) if self.ref_model else None
        stats = _UpdateStats()
        for _ in range(self.cfg.ppo_epochs):
            for groups in minis:
                self._optimizer_step(batch, scores, mask, groups, old_logp, ref_logp, stats)
        metrics = stats.result()
        skipped = metrics.pop("skipped_tokens", 0.0)
        metrics["skipped_token_frac"] = skipped / max(metrics.get("tokens", 0.0), 1.0)
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        self.model.eval()
        return metrics

    def _optimizer_step(
        self,
        batch: RolloutBatch,
        scores: Scores,
        mask: torch.Tensor,
        groups: list[int],
        old_logp: torch.Tensor | None,
        ref_logp: torch.Tensor | None,
        stats: _UpdateStats,
    ) -> None:
        """Accumulate the gradient of one mini-batch over its micro-batches, then step. Each
        micro-batch's loss is weighted by its share of the mini-batch's tokens (sequences,
        for the seq-mean aggregations), so the step equals one pass over the whole batch.

        A micro-batch whose groups all have zero advantage, under a loss where that means a
        zero gradient, is not run at all: its tokens still count in the shares, and the
        gradient (hence the step) is bit-identical to running it.
        """
        flat = self._flat_groups(batch, scores, groups)
        # informative groups first, flat ones in micro-batches of their own (skipped below
        # when that is exact); the same order with or without skipping, so both give the
        # same micro-batches and the same floating-point sums
        micro = self._micro_batches(batch, [g for g in groups if g not in flat])
        micro += self._micro_batches(batch, [g for g in groups if g in flat])
        seq_level = self.loss_config.aggregation != "token-mean"
        rows_all = torch.cat(micro)
        denom = float((mask[rows_all].any(1) if seq_level else mask[rows_all]).sum())
        self.optimizer.zero_grad(set_to_none=True)
        ran = False
        for rows in micro:
            m_host = mask[rows]
            tokens = max(float(m_host.sum()), 1.0)
            if self._no_gradient(batch, scores, rows):
                stats.add(_flat_micro_stats(m_host), tokens)
                stats.add({"skipped_tokens": float(m_host.sum())}, 0.0)
                continue
            share = float((m_host.any(1) if seq_level else m_host).sum()) / max(denom, 1.0)
            micro_stats = self._micro_step(batch, scores, rows, m_host, old_logp, ref_logp, share)
            stats.add(micro_stats, tokens)
            ran = True
        if not ran:  # what backward of an all-zero loss leaves: zero gradients, still a step
            for p in self.model.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
        stats.add({"grad_norm": self._clip_and_step()}, 1.0)

    def _flat_groups(self, batch: RolloutBatch, scores: Scores, groups: list[int]) -> set[int]:
        """The groups whose advantages are all exactly 0 under the run's own estimator."""
        rows = torch.cat([(batch.group == g).nonzero().flatten() for g in groups])
        if rows.numel() == 0:
            return set()
        cfg = self.loss_config
        adv = ADVANTAGES.get(cfg.advantage)(scores.reward[rows], batch.group[rows], cfg)
        live = torch.zeros(len(batch.prompts), dtype=torch.bool)
        live[batch.group[rows][adv.advantages != 0]] = True
        return {g for g in groups if not live[g]}

    def _no_gradient(self, batch: RolloutBatch, scores: Scores, rows: torch.Tensor) -> bool:
        """Whether this micro-batch cannot change the weights: every advantage exactly 0
        (by the run's own estimator, on the rows the loss would see) and nothing else in
        the loss gives a gradient."""
        cfg = self.loss_config
        if not (self.cfg.skip_zero_advantage and cfg.zero_advantage_means_zero_gradient):
            return False
        adv = ADVANTAGES.get(cfg.advantage)(scores.reward[rows], batch.group[rows], cfg)
        return bool((adv.advantages == 0).all())

    def _micro_step(
        self,
        batch: RolloutBatch,
        scores: Scores,
        rows: torch.Tensor,
        m_host: torch.Tensor,
        old_logp: torch.Tensor | None,
        ref_logp: torch.Tensor | None,
        share: float,
    ) -> dict[str, torch.Tensor]:
        """Forward, loss and backward of one micro-batch; returns its detached stats.

        Rollout correction (``algorithm.rollout_correction``): the sampler's log-probs
        (``batch.behaviour_logp``) against the trainer's ``old`` give per-token weights on the
        surrogate term (None for mode ``none``) and the ``mismatch_*`` stats."""
        logp, entropy = self.response_logprobs(self.model, batch, rows, True)
        m = m_host.to(self.device)
        old = logp.detach() if old_logp is None else old_logp[rows]
        behaviour = batch.behaviour_logp[rows].to(self.device)
        weight, mismatch = correction_weights(
            old, behaviour, m, self.loss_config.rollout_correction
        )
        out = self.loss_fn(
            scores.reward[rows].to(self.device),
            batch.group[rows].to(self.device),
            logp,
            old,
            m,
            None if ref_logp is None else ref_logp[rows],
            cfg=self.loss_config,
            # only when there is one: a custom loss_fn without the argument keeps working
            **({} if weight is None else {"token_weight": weight}),
        )
        (out.loss * share).backward()
        tokens = float(m_host.sum())
        stats = {k: v.detach() for k, v in out.stats.items()}
        stats["loss"] = out.loss.detach()
        if tokens:
            if entropy is not None:
                stats["entropy"] = (entropy * m).sum() / tokens
            stats["behaviour_logp_gap"] = ((old - behaviour).abs() * m).sum() / tokens
            stats.update(mismatch)
        return stats

    def _clip_and_step(self) -> float:
        clip = self.cfg.optimizer.grad_clip
        params = [p for p in self.model.parameters() if p.grad is not None]
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in params])
            )
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)  # skip a poisoned step, keep weights
        else:
            self.optimizer.step()
        self.scheduler.step()
        return float(norm)

    @torch.no_grad()
    def _logprobs_all(self, model: Any, batch: RolloutBatch) -> torch.Tensor:
        out = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=self.device)
        for rows in self._micro_batches(batch, list(range(len(batch.prompts)))):
            out[rows] = self.response_logprobs(model, batch, rows)[0]
        return out

    def _old_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        self.model.eval()
        out = self._logprobs_all(self.model, batch)
        self.model.train()
        return out

    # -- state -----------------------------------------------------------------------------

    def save_pretrained(self, path: Path) -> None:
        """HF format (safetensors + config + tokenizer)."""
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and scheduler state (the weights are saved in HF format separately)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
