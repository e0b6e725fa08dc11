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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from srpo.algo import ADVANTAGES, LossConfig, correction_weights, make_loss_fn
from srpo.api import validate_override, warn
from srpo.config import AlgorithmSection, PolicySection
from srpo.distributed import Dist
from srpo.distributed.fsdp import FUSED_METHOD, copy_full_weights, is_sharded, shard_model
from srpo.distributed.fsdp import iter_full_weights as _iter_full_weights
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

    def result(self, dist: Dist | None = None) -> dict[str, float]:
        """The stats of the whole update: sums and weights of every rank's micro-batches
        added up (gathered as host numbers: ranks may hold different keys)."""
        on_device = [k for k, v in self.sums.items() if isinstance(v, torch.Tensor)]
        host = dict(self.sums)
        if on_device:  # one device-to-host copy for all stats
            values = torch.stack([self.sums[k] for k in on_device]).tolist()
            host.update(zip(on_device, values, strict=True))
        sums, weights = {k: float(v) for k, v in host.items()}, dict(self.weights)
        if dist is not None and dist.active:
            sums, weights = {}, {}
            for rank_sums, rank_weights in dist.all_gather((host, self.weights)):
                for k, v in rank_sums.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                for k, w in rank_weights.items():
                    weights[k] = weights.get(k, 0.0) + float(w)
        return {k: v / weights[k] if k in weights else v for k, v in sums.items()}


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


def _tied_aliases(model: Any) -> list[str]:
    """State-dict names that repeat a tensor seen under an earlier name (a tied LM head)."""
    seen: set[int] = set()
    out = []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            out.append(name)
        seen.add(id(t))
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's global value (FSDP2 reductions return them); other tensors as they are."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _fused_forward(
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
    return linear_logprobs(hidden[real], head, targets[real], temperature, with_entropy)


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
        dist: Dist | None = None,
        keep_replica: bool = False,
    ) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.dist = dist if dist is not None else Dist.local()
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
        # Sharded runs: a full copy to generate with when the sampler uses the policy's own
        # model (made before sharding; refreshed after every update), then FSDP2.
        self._replica: Any = None
        if self.dist.active:
            if keep_replica:
                self._replica = copy.deepcopy(self.model).eval().requires_grad_(False)
            mixed = DTYPES[cfg.dtype] if self.device.type == "cuda" else None
            shard_model(self.model, _fused_forward, param_dtype=mixed)
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
        self._head_checked: dict[int, tuple[Any, bool]] = {}

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
        if not self._fusable(model):
            logits = model(**inp, use_cache=False).logits[:, lp - 1 : lp - 1 + T].float()
            return _eager_logprobs(logits, targets, batch.temperature, with_entropy)
        # only real response tokens go through the LM head: padding costs nothing
        real = batch.response_mask[rows].to(self.device)
        args = (inp, lp, T, targets, real, batch.temperature, with_entropy)
        if is_sharded(model):  # inside FSDP's forward: the LM head is gathered there
            logp_real, ent_real = getattr(model, FUSED_METHOD)(*args)
        else:
            logp_real, ent_real = _fused_forward(model, *args)
        logp = torch.zeros(real.shape, dtype=logp_real.dtype, device=self.device)
        logp = logp.masked_scatter(real, logp_real)
        entropy = None
        if with_entropy:
            entropy = torch.zeros_like(logp).masked_scatter(real, ent_real.to(logp.dtype))
        return logp, entropy

    def _fusable(self, model: Any) -> bool:
        """Whether log-probs can be fused (the head is a bias-free Linear applied to the
        decoder's output, with no logit scaling or soft-capping); if not, one warning, and
        the eager path is used."""
        if not self.cfg.fused_logprobs:
            return False
        cached = self._head_checked.get(id(model))
        if cached is not None:
            return cached[1]
        why = _unfusable_head(model)
        if why is not None:
            warn(f"policy.fused_logprobs: {why}; computing log-probs from full logits")
        self._head_checked[id(model)] = (model, why is None)  # the model: its id stays its own
        return why is None

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
        mine = [g for m in minis for g in self._my_groups(m)]  # every group, in one process
        reuse_logp = self.cfg.ppo_epochs == 1 and len(minis) == 1
        old_logp = None if reuse_logp else self._old_logprobs(batch, mine)
        ref_logp = self._logprobs_all(self.ref_model, batch, mine) if self.ref_model else None
        stats = _UpdateStats()
        for _ in range(self.cfg.ppo_epochs):
            for groups in minis:
                self._optimizer_step(batch, scores, mask, groups, old_logp, ref_logp, stats)
        metrics = stats.result(self.dist)
        self._refresh_replica()
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

        Data-parallel: every rank holds the whole batch and takes its share of the
        mini-batch's groups; shares are of the *global* token (sequence) count, and FSDP sums
        the ranks' gradients, so N ranks step exactly as one process. Ranks run the same
        number of forward/backward passes (FSDP's collectives pair up): one with fewer
        micro-batches to run adds idle ones that contribute a zero gradient.
        """
        flat = self._flat_groups(batch, scores, groups)
        seq_level = self.loss_config.aggregation != "token-mean"
        rows_all = torch.cat([(batch.group == g).nonzero().flatten() for g in groups])
        denom = float((mask[rows_all].any(1) if seq_level else mask[rows_all]).sum())
        mine = self._my_groups(groups)
        # informative groups first, flat ones in micro-batches of their own (skipped below
        # when that is exact); the same order with or without skipping, so both give the
        # same micro-batches and the same floating-point sums
        micro = self._micro_batches(batch, [g for g in mine if g not in flat])
        micro += self._micro_batches(batch, [g for g in mine if g in flat])
        will_run = sum(not self._no_gradient(batch, scores, rows) for rows in micro)
        runs = self.dist.all_max(will_run)
        self.optimizer.zero_grad(set_to_none=True)
        for rows in micro:
            m_host = mask[rows]
            tokens = max(float(m_host.sum()), 1.0)
            if self._no_gradient(batch, scores, rows):
                stats.add(_flat_micro_stats(m_host), tokens)
                stats.add({"skipped_tokens": float(m_host.sum())}, 0.0)
                continue
            share = float((m_host.any(1) if seq_level else m_host).sum()) / max(denom, 1.0)
            share *= self.dist.world_size  # FSDP averages the ranks' gradients: undo it
            micro_stats = self._micro_step(batch, scores, rows, m_host, old_logp, ref_logp, share)
            stats.add(micro_stats, tokens)
        for _ in range(runs - will_run):
            self._idle_micro_step(batch)
        if runs == 0:  # what backward of an all-zero loss leaves: zero gradients, still a step
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
                torch.stack([_full(torch.linalg.vector_norm(p.grad)) for p in params])
            )
        norm = _full(norm)  # a sharded model's norm is a DTensor: the global value
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)  # skip a poisoned step, keep weights
        else:
            self.optimizer.step()
        self.scheduler.step()
        return float(norm)

    def _my_groups(self, groups: list[int]) -> list[int]:
        """This rank's share of ``groups`` (all of them in one process)."""
        return [groups[i] for i in self.dist.shard(len(groups))]

    def _idle_micro_step(self, batch: RolloutBatch) -> None:
        """A forward/backward that changes no gradient, so this rank joins FSDP's
        collectives of a micro-batch it does not have (one row, loss times zero)."""
        logp, _ = self.response_logprobs(self.model, batch, torch.tensor([0]))
        (logp.sum() * 0.0).backward()

    @torch.no_grad()
    def _logprobs_all(
        self, model: Any, batch: RolloutBatch, groups: list[int] | None = None
    ) -> torch.Tensor:
        """Log-probs of the rows of ``groups`` (default: all) under ``model``, zero elsewhere.
        A sharded model runs as many forwards on every rank (idle ones to fill up)."""
        out = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=self.device)
        groups = list(range(len(batch.prompts))) if groups is None else groups
        micro = self._micro_batches(batch, groups)
        for rows in micro:
            out[rows] = self.response_logprobs(model, batch, rows)[0]
        if is_sharded(model):
            for _ in range(self.dist.all_max(len(micro)) - len(micro)):
                self.response_logprobs(model, batch, torch.tensor([0]))
        return out

    def _old_logprobs(self, batch: RolloutBatch, groups: list[int] | None = None) -> torch.Tensor:
        self.model.eval()
        out = self._logprobs_all(self.model, batch, groups)
        self.model.train()
        return out

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

    # -- state -----------------------------------------------------------------------------

    def save_pretrained(self, path: Path) -> None:
        """HF format (safetensors + config + tokenizer). Sharded: every rank calls it (the
        full weights are gathered to rank 0, on the CPU), rank 0 writes."""
        if not is_sharded(self.model):
            self.model.save_pretrained(path, safe_serialization=True)
            self.tokenizer.save_pretrained(path)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if self.dist.is_main:
            for alias in _tied_aliases(self.model):  # one copy of tied weights, as HF saves
                full.pop(alias, None)
            self.model.save_pretrained(path, state_dict=full, safe_serialization=True)
            self.tokenizer.save_pretrained(path)

    def save_sharded(self, path: Path) -> None:
        """Weights and optimizer state with ``torch.distributed.checkpoint``: each rank
        writes its own shard (collective; a sharded run only)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))

    def load_sharded(self, path: Path) -> None:
        """Read what ``save_sharded`` wrote (also from another number of ranks: DCP
        reshards), into the sharded model and optimizer in place."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )
        self._refresh_replica()

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and scheduler state (the weights are saved in HF format separately; a
        sharded run saves the optimizer with the weights, see ``save_sharded``)."""
        if is_sharded(self.model):
            return {"scheduler": self.scheduler.state_dict()}
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
