"""Policy: wraps any ``AutoModelForCausalLM`` directory for RL.

It computes response-token log-probs, runs the GRPO-family update with gradient
accumulation over group-aligned micro-batches, and saves HF-format checkpoints that
``AutoModelForCausalLM.from_pretrained`` loads. The loss itself comes from ``loss_fn`` (by
default ``srpo.ops.grpo_loss``: the compiled op when built, the torch reference otherwise).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from srpo.config import AlgorithmSection, PolicySection
from srpo.errors import SrpoError
from srpo.types import RolloutBatch, Scores

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
        self.cfg, self.algo, self.device = cfg, algo, torch.device(device)
        self.model, self.tokenizer = load_model_dir(model_dir, cfg.dtype)
        self.model.to(self.device)
        self.model.config.use_cache = True
        self.use_chat_template = (
            bool(getattr(self.tokenizer, "chat_template", None))
            if cfg.chat_template is None
            else cfg.chat_template
        )
        self.ref_model = None
        if algo.kl_coef > 0:
            if cfg.reference_path is not None:
                self.ref_model, _ = load_model_dir(cfg.reference_path, cfg.dtype)
            else:
                self.ref_model = copy.deepcopy(self.model)
            self.ref_model.to(self.device).eval().requires_grad_(False)
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
        if loss_fn is None:
            from srpo.ops import grpo_loss as loss_fn
        self.loss_fn = loss_fn
        self.temperature = 1.0  # set by the kernel from the sampler: log-probs must match it

    # -- prompts -------------------------------------------------------------------------

    def encode_prompt(self, text: str) -> list[int]:
        """Prompt token ids, through the tokenizer's chat template when it has one."""
        if self.use_chat_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            return list(ids["input_ids"] if isinstance(ids, dict) else ids)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- log-probs -------------------------------------------------------------------------

    def _inputs(self, batch: RolloutBatch, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Left-padded prompts followed by right-padded responses: every response starts at
        the same column, so response log-probs are one slice of the logits."""
        pad = int(self.tokenizer.pad_token_id)
        prompts = [batch.prompt_token_ids[int(g)] for g in batch.group[rows]]
        lp = max(len(p) for p in prompts)
        n = len(prompts)
        prompt_ids = torch.full((n, lp), pad, dtype=torch.long)
        prompt_mask = torch.zeros((n, lp), dtype=torch.long)
        for i, p in enumerate(prompts):
            prompt_ids[i, lp - len(p) :] = torch.tensor(p, dtype=torch.long)
            prompt_mask[i, lp - len(p) :] = 1
        ids = torch.cat([prompt_ids, batch.response_ids[rows]], dim=1)
        mask = torch.cat([prompt_mask, batch.response_mask[rows].long()], dim=1)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        return {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": position_ids.to(self.device),
            "prompt_len": lp,
        }

    def response_logprobs(
        self, model: Any, batch: RolloutBatch, rows: torch.Tensor, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[n, T] log-probs of the response tokens under ``model`` at the sampling
        temperature (float32), and optionally the per-token entropy (detached)."""
        inp = self._inputs(batch, rows)
        lp = inp.pop("prompt_len")
        T = batch.response_ids.shape[1]
        logits = model(**inp, use_cache=False).logits[:, lp - 1 : lp - 1 + T].float()
        if self.temperature != 1.0:
            logits = logits / self.temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        targets = batch.response_ids[rows].to(self.device).unsqueeze(-1)
        logp = logp_all.gather(-1, targets).squeeze(-1)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy

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

    def _loss_kwargs(self) -> dict[str, Any]:
        from srpo.algo import LossConfig

        a = self.algo
        return {
            "cfg": LossConfig(
                clip_low=a.clip_low,
                clip_high=a.clip_high,
                dual_clip=a.dual_clip,
                kl_coef=a.kl_coef,
                kl_estimator=a.kl_estimator,
                aggregation=a.aggregation,
                norm_constant=a.norm_constant,
                std_normalize=a.std_normalize,
                eps=a.eps,
            )
        }

    def update(
        self, batch: RolloutBatch, scores: Scores, loss_mask: torch.Tensor | None = None
    ) -> dict[str, float]:
        """One training batch: ``ppo_epochs`` × ``mini_batches`` optimizer steps, each
        accumulating gradients over group-aligned micro-batches.

        ``loss_mask`` [N, T] (default: the response mask) lets algorithms drop tokens, e.g.
        DAPO's overlong filtering of truncated responses.
        """
        if batch.num_rollouts == 0:
            return {}
        self.model.train()
        mask = batch.response_mask if loss_mask is None else loss_mask
        n_groups = len(batch.prompts)
        group_order = list(range(n_groups))
        minis = [group_order[i :: self.cfg.mini_batches] for i in range(self.cfg.mini_batches)]
        minis = [m for m in minis if m]
        reuse_logp = self.cfg.ppo_epochs == 1 and len(minis) == 1
        old_logp = None if reuse_logp else self._old_logprobs(batch)
        ref_logp = self._ref_logprobs(batch) if self.ref_model is not None else None
        # Stats accumulate as float64 device tensors and reach the host once, at the end:
        # a float() per micro-batch would stall a GPU's queue every micro-batch. Counts
        # (tokens, shares) come from the mask, which lives on the host.
        sums: dict[str, Any] = {}
        weights: dict[str, float] = {}
        kw = self._loss_kwargs()
        seq_level = self.algo.aggregation != "token-mean"
        for _ in range(self.cfg.ppo_epochs):
            for groups in minis:
                micro = self._micro_batches(batch, groups)
                rows_all = torch.cat(micro)
                denom = float((mask[rows_all].any(1) if seq_level else mask[rows_all]).sum())
                self.optimizer.zero_grad(set_to_none=True)
                for rows in micro:
                    logp, entropy = self.response_logprobs(self.model, batch, rows, True)
                    m_host = mask[rows]
                    m = m_host.to(self.device)
                    old = logp.detach() if old_logp is None else old_logp[rows]
                    out = self.loss_fn(
                        scores.reward[rows].to(self.device),
                        batch.group[rows].to(self.device),
                        logp,
                        old,
                        m,
                        None if ref_logp is None else ref_logp[rows],
                        **kw,
                    )
                    share = float((m_host.any(1) if seq_level else m_host).sum()) / max(denom, 1.0)
                    (out.loss * share).backward()
                    tokens = float(m_host.sum())
                    stats = {k: v.detach() for k, v in out.stats.items()}
                    stats["loss"] = out.loss.detach()
                    if entropy is not None and tokens:
                        stats["entropy"] = (entropy * m).sum() / tokens
                    b = batch.behaviour_logp[rows].to(self.device)
                    if tokens:
                        stats["behaviour_logp_gap"] = ((old - b).abs() * m).sum() / tokens
                    for k, v in stats.items():
                        v = v.to(torch.float64)
                        if k in ("tokens", "sequences"):
                            sums[k] = sums.get(k, 0.0) + v
                            continue
                        sums[k] = sums.get(k, 0.0) + v * max(tokens, 1.0)
                        weights[k] = weights.get(k, 0.0) + max(tokens, 1.0)
                grad_norm = self._clip_and_step()
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm
                weights["grad_norm"] = weights.get("grad_norm", 0.0) + 1.0
        on_device = [k for k, v in sums.items() if isinstance(v, torch.Tensor)]
        host = dict(sums)  # one device-to-host copy per update, not one per micro-batch stat
        if on_device:
            values = torch.stack([sums[k] for k in on_device]).tolist()
            host.update(zip(on_device, values, strict=True))
        metrics = {k: v / weights[k] if k in weights else v for k, v in host.items()}
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        self.model.eval()
        return metrics

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

    def _ref_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        return self._logprobs_all(self.ref_model, batch)

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
