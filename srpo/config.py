"""The run file: schema, YAML with line numbers, ``--set`` overrides, one-line errors.

A run file is YAML. Every problem is reported as ``plugins.yaml:LINE: key.path: what is
wrong (did you mean ...?)`` so the user can jump straight to it. Paths to models and data
are resolved relative to the run file; ``run.output_dir`` relative to the working
directory (where you ran ``srpo``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from srpo.algo.dapo import OverlongOptions
from srpo.algo.rollout_correction import RolloutCorrectionOptions
from srpo.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class PluginSpec(_Strict):
    """A plugin chosen by entry-point name, with its own options (validated by the plugin)."""

    name: str = Field(description="the plugin's entry-point name (`srpo plugins list`)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="the plugin's own options (its Options model)"
    )
    fatal: bool = Field(
        True,
        description="loggers only: a failing logger ends the run (true) or is dropped (false)",
    )  # loggers only: a failing logger ends the run (True) or is dropped


class RunSection(_Strict):
    name: str = Field("srpo-run", description="the run's name (trackers, reports)")
    output_dir: Path = Field(
        Path("runs/srpo-run"),
        description="the run directory, relative to where srpo runs (not to the run file)",
    )
    seed: int = Field(
        0, description="seed of every random choice (sampling, prompt order, plugins)"
    )
    epochs: int = Field(1, ge=1, description="passes over the curriculum's prompts")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")
    prompts_per_step: int = Field(32, ge=1, description="prompts per step (G rollouts each)")
    max_staleness: int = Field(
        0,
        ge=0,
        description="0: on-policy (generate, then train); k: the next steps' rollouts are "
        "generated beside the update, up to k steps ahead, so a step trains on rollouts of "
        "weights at most k updates old (docs/staleness.md)",
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="cpu, cuda (each rank takes GPU LOCAL_RANK) or auto"
    )
    threads: int | None = Field(None, ge=1, description="torch intra-op threads")


class OptimizerSection(_Strict):
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate (peak, after warm-up)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    grad_clip: float | None = Field(
        1.0, gt=0, description="clip the global gradient norm to this (none: no clipping)"
    )
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="learning-rate schedule after warm-up (decay to 0 at the end)"
    )
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warm-up")


class PolicySection(_Strict):
    path: Path = Field(description="Hugging Face model directory, relative to the run file")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the policy's weights"
    )
    micro_batch_size: int = Field(
        64,
        ge=1,
        description="rollouts per forward/backward pass, when max_tokens_per_micro_batch is "
        "not set",
    )
    max_tokens_per_micro_batch: int | None = Field(
        None,
        ge=1,
        description="token budget of one forward/backward pass (prompt + response tokens, "
        "padding included): rows sorted by length and packed into balanced micro-batches "
        "under it (a longer row runs alone); none: micro_batch_size rollouts per pass",
    )
    max_tokens_per_logprob_batch: int | None = Field(
        None,
        ge=1,
        description="the same budget for the no-grad old and reference log-prob passes "
        "(they keep no activations, so it can be larger); none: max_tokens_per_micro_batch",
    )
    padding_free: bool = Field(
        False,
        description="run each micro-batch as one packed row (sequences concatenated, "
        "per-sequence position_ids, attention kept inside each sequence): no padding tokens",
    )
    mini_batches: int = Field(1, ge=1, description="optimizer steps per training batch")
    ppo_epochs: int = Field(1, ge=1, description="passes over each training batch")
    # None: the tokenizer's when it has one; false: never; a string: this Jinja template
    # (for a base model without one, or to replace the tokenizer's)
    chat_template: bool | str | None = Field(
        None,
        description="none: the tokenizer's chat template if it has one; false: never; "
        "a string: this Jinja template",
    )
    system_prompt: str | None = Field(
        None, description="system message for prompts that have none (chat template only)"
    )
    reference_path: Path | None = Field(
        None, description="KL reference model directory (default: the initial policy)"
    )  # KL reference; default: the initial policy
    gradient_checkpointing: bool | Literal["auto", "selective"] = Field(
        "auto",
        description="recompute activations in backward: true (each layer whole, ~+30% compute), "
        "selective (keep matmul and attention outputs, recompute the elementwise ops: ~40% "
        "fewer activations for ~+5-10%), false, or auto: per pass the lightest of none, "
        "selective, full whose estimated activations fit activation_memory_gb",
    )
    activation_memory_gb: float | None = Field(
        None,
        gt=0,
        description="activations one forward/backward pass may keep before gradient_checkpointing "
        "auto recomputes them; none: half the memory available when the update begins",
    )
    fused_logprobs: bool = Field(
        True,
        description="log-probs and entropy from the fused linear op (hidden states x LM head, "
        "chunked): no [N, T, V] logits; models whose head is not a plain Linear use eager",
    )
    skip_zero_advantage: bool = Field(
        True,
        description="skip forward/backward of micro-batches whose groups all have zero "
        "advantage when nothing else gives a gradient (the update is bit-identical)",
    )
    optimizer: OptimizerSection = Field(
        default_factory=OptimizerSection, description="AdamW and its learning-rate schedule"
    )

    @field_validator("gradient_checkpointing", mode="before")
    @classmethod
    def _checkpointing_choice(cls, value: Any) -> Any:
        """One message for the union (pydantic would name only its bool branch)."""
        if isinstance(value, bool) or value in ("auto", "selective"):
            return value
        raise ValueError(f"true, false, selective or auto (got {value!r})")


class AlgorithmSection(_Strict):
    """The loss and its shaping. ``advantage``, ``policy_loss``, ``kl_estimator`` and
    ``aggregation`` name registered functions (``srpo.algo.registry``; a plugin module may
    register more), checked once the plugins are loaded; the other loss fields map one to
    one onto ``srpo.algo.LossConfig``."""

    group_size: int = Field(8, ge=1, description="G: rollouts generated per prompt")
    advantage: str = Field("grpo", description="advantage estimator: grpo, rloo, ...")
    policy_loss: str = Field("ppo_clip", description="surrogate: ppo_clip, ...")
    clip_low: float = Field(0.2, ge=0, lt=1, description="ratio lower bound 1 - clip_low")
    clip_high: float = Field(
        0.2, ge=0, description="ratio upper bound 1 + clip_high (DAPO clip-higher: 0.28)"
    )
    dual_clip: float | None = Field(
        None, gt=1, description="dual-clip constant c > 1 for negative advantages (none: off)"
    )
    kl_coef: float = Field(0.0, ge=0, description="weight of the KL term to the reference")
    kl_estimator: str = Field("k3", description="k1, k2, k3, ...")
    aggregation: str = Field(
        "token-mean", description="token-mean, seq-mean-token-mean, seq-mean-token-sum-norm, ..."
    )
    norm_constant: float | None = Field(
        None, gt=0, description="divisor of seq-mean-token-sum-norm (none: T, the padded length)"
    )
    std_normalize: bool = Field(
        True, description="divide advantages by the group's std: true GRPO, false Dr.GRPO"
    )
    eps: float = Field(1e-6, gt=0, description="added to the group std before dividing")
    loss_backend: Literal["auto", "compiled", "reference"] = Field(
        "auto",
        description="auto: the compiled op for the built-in GRPO family, torch otherwise; "
        "compiled; reference (the float64 torch oracle)",
    )
    overlong: OverlongOptions = Field(
        default_factory=OverlongOptions,
        description="DAPO's overlong filtering and soft overlong punishment",
    )  # DAPO length shaping
    rollout_correction: RolloutCorrectionOptions = Field(
        default_factory=RolloutCorrectionOptions,
        description="importance correction of the sampler/trainer log-prob mismatch: mode "
        "none | token_tis | seq_tis | seq_mis | icepop, with low/high bounds "
        "(srpo.algo.rollout_correction)",
    )


class DatasetSpec(_Strict):
    """One domain's prompts. ``format: auto`` goes by the path (``.jsonl``/``.json``,
    ``.parquet``, a directory of Parquet files, a ``save_to_disk`` directory); keys may be
    dotted paths into nested records, so verl's Parquet files are read as they are."""

    path: Path = Field(
        description="JSONL file, Parquet file or directory, or a save_to_disk directory; "
        "relative to the run file"
    )
    format: Literal["auto", "jsonl", "parquet", "hf"] = Field(
        "auto", description="auto: told from the path"
    )
    prompt_key: str = Field(
        "prompt", description="record field (or dotted path) of the prompt: text or chat messages"
    )
    reference_key: str = Field(
        "answer", description="record field (or dotted path) of the reference the verifier uses"
    )
    id_key: str | None = Field(
        "id", description="record field (or dotted path) of a stable id (none: the prompt text)"
    )
    limit: int | None = Field(None, ge=1, description="use only the first N records")

    @field_validator("prompt_key", "reference_key", "id_key")
    @classmethod
    def _dotted_key(cls, v: str | None) -> str | None:
        if v is not None and not all(part.strip() for part in v.split(".")):
            raise ValueError(
                f"{v!r} is not a key or a dotted path such as reward_model.ground_truth"
            )
        return v


class EvalSection(_Strict):
    datasets: dict[str, DatasetSpec] = Field(
        default_factory=dict,
        description="held-out prompts per domain (as top-level datasets), scored greedily",
    )
    every: int = Field(0, ge=0, description="evaluate every N steps (0: before and after only)")
    max_prompts: int | None = Field(
        None, ge=1, description="evaluate at most this many prompts per domain"
    )
    n_samples: int = Field(
        0,
        ge=0,
        description="sampled responses per held-out prompt besides the greedy decode, for "
        "avg@n (± standard error), pass@k, maj@k, length and truncation as `srpo eval` "
        "reports them; 0: greedy accuracy only",
    )
    temperature: float | None = Field(
        None,
        gt=0,
        description="sampling temperature of those samples (none: the sampler's own, as it "
        "is at that point of training); the other sampler options are the training ones",
    )
    pass_k: list[int] | None = Field(
        None,
        description="ks of pass@k and maj@k, each at most n_samples (none: 1, 2, 4, ... "
        "up to n_samples)",
    )

    @field_validator("pass_k")
    @classmethod
    def _ks_within_n(cls, v: list[int] | None, info: Any) -> list[int] | None:
        if v is None or "n_samples" not in info.data:
            return v
        n = info.data["n_samples"]
        for k in v:
            if k < 1:
                raise ValueError(f"k must be at least 1, got {k}")
            if k > n:
                raise ValueError(f"pass@{k} needs eval.n_samples >= {k} (n_samples is {n})")
        return sorted(set(v))


class BehaviourSection(_Strict):
    """Reasoning-behaviour metrics of every step's rollouts (``srpo/kernel/behaviour.py``)."""

    enabled: bool = Field(
        True,
        description="report response length (mean, p50, p90, max), truncation share and "
        "reflection-pattern rates every step, by domain and by correct/incorrect",
    )
    patterns: dict[str, str] | None = Field(
        None,
        description="reflection patterns, name: regex (Python syntax, case-insensitive); "
        "none: the SRPO paper's reflection words (recheck, rethink, reassess, re-evaluate, "
        "re-examine, double-check, let me check, verify, wait, alternatively, however, "
        "mistake)",
    )
    extra_patterns: dict[str, str] = Field(
        default_factory=dict,
        description="more patterns, name: regex, counted besides `patterns`",
    )

    @field_validator("patterns", "extra_patterns")
    @classmethod
    def _valid_patterns(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        from srpo.kernel.behaviour import check_patterns

        if v is not None:
            check_patterns(v)
        return v

    def all_patterns(self) -> dict[str, str]:
        """The patterns counted: ``patterns`` (or the defaults), then ``extra_patterns``."""
        from srpo.kernel.behaviour import DEFAULT_PATTERNS

        base = DEFAULT_PATTERNS if self.patterns is None else self.patterns
        return {**base, **self.extra_patterns}


class HistorySection(_Strict):
    enabled: bool = Field(True, description="record every rollout's outcome in the store")
    store_tokens: bool = Field(False, description="also store the rollouts' token ids")


class CheckpointSection(_Strict):
    every: int = Field(
        0, ge=0, description="steps between checkpoints (0: only at the end and on a stop)"
    )
    keep: int = Field(
        2, ge=1, description="newest complete checkpoints kept (the newest is never deleted)"
    )


class RunConfig(_Strict):
    run: RunSection = Field(
        default_factory=RunSection, description="the run: name, directory, seed, length, device"
    )
    policy: PolicySection = Field(description="the model being trained and its optimizer")
    algorithm: AlgorithmSection = Field(
        default_factory=AlgorithmSection, description="the GRPO-family loss and its shaping"
    )
    datasets: dict[str, DatasetSpec] = Field(description="training prompts, one dataset per domain")
    eval: EvalSection = Field(
        default_factory=EvalSection,
        description="held-out evaluation: greedy, and with n_samples avg@n, pass@k, maj@k",
    )
    behaviour: BehaviourSection = Field(
        default_factory=BehaviourSection,
        description="reasoning-behaviour metrics every step: lengths, truncation, reflection",
    )
    sampler: PluginSpec = Field(description="the rollout generator (srpo.samplers plugin)")
    verifiers: dict[str, PluginSpec] = Field(
        description="one verifier per dataset domain (srpo.verifiers plugins)"
    )
    curriculum: PluginSpec = Field(
        default_factory=lambda: PluginSpec(name="uniform"),
        description="which prompts each step trains on (srpo.curricula plugin)",
    )
    loggers: list[PluginSpec] = Field(
        default_factory=lambda: [PluginSpec(name="console"), PluginSpec(name="jsonl")],
        description="where events and metrics go (srpo.loggers plugins)",
    )
    history: HistorySection = Field(
        default_factory=HistorySection, description="the history store of rollout outcomes"
    )
    checkpoint: CheckpointSection = Field(
        default_factory=CheckpointSection, description="how often to checkpoint, how many to keep"
    )

    @field_validator("datasets")
    @classmethod
    def _some_data(cls, v: dict[str, DatasetSpec]) -> dict[str, DatasetSpec]:
        if not v:
            raise ValueError("at least one dataset (domain: {path: ...}) is required")
        return v


@dataclass
class LoadedConfig:
    """A validated run file plus where each key came from (for later, plugin-level errors)."""

    config: RunConfig
    file: str
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    def error(self, path: Sequence[str | int], message: str) -> ConfigError:
        """A ConfigError located at the deepest known line along ``path``."""
        return ConfigError(
            message, file=self.file, line=_line_for(self.lines, path), path=_dotted(path)
        )

    @property
    def base_dir(self) -> Path:
        return Path(self.file).resolve().parent


def _dotted(path: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in path)


def _line_for(lines: Mapping[tuple[str, ...], int], path: Sequence[str | int]) -> int | None:
    key = tuple(str(p) for p in path)
    while key:
        if key in lines:
            return lines[key]
        key = key[:-1]
    return lines.get((), None)


def _walk(node: yaml.Node, path: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> Any:
    """Turn a composed YAML node into Python data, recording each key's 1-based line."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            sub = (*path, str(key))
            lines[sub] = key_node.start_mark.line + 1
            if key in out:
                raise ConfigError("duplicate key", line=lines[sub], path=_dotted(sub))
            out[key] = _walk(value_node, sub, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(v, (*path, str(i)), lines) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    lines: dict[tuple[str, ...], int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = {} if node is None else _walk(node, (), lines)
    except ConfigError as e:
        raise ConfigError(e.message, file=file, line=e.line, path=e.path) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise ConfigError(
            f"invalid YAML: {e.problem or e}", file=file, line=mark.line + 1 if mark else None
        ) from None
    return data, lines


def _coerce_scalar(text: str) -> Any:
    """``--set`` values are YAML scalars: 1e-3 -> float, true -> bool, [1,2] -> list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> None:
    """Apply ``key.path=value`` overrides in place; list items by index (``loggers.0.name``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key.path=value, got {item!r}", file="--set")
        key, _, value = item.partition("=")
        parts = key.strip().split(".")
        cur: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(cur, list):
                if not part.isdigit() or int(part) >= len(cur):
                    raise ConfigError(f"no list item {part!r}", file="--set", path=key)
                if last:
                    cur[int(part)] = _coerce_scalar(value)
                else:
                    cur = cur[int(part)]
            elif isinstance(cur, dict):
                if last:
                    cur[part] = _coerce_scalar(value)
                else:
                    cur = cur.setdefault(part, {})
            else:
                raise ConfigError(f"{'.'.join(parts[:i])} is not a mapping", file="--set", path=key)


def _allowed_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """Field names of the sub-model at ``loc`` (for "did you mean" hints)."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            f = current.model_fields.get(str(part))
            if f is None:
                return []
            current = _inner_model(f.annotation)
        else:
            current = _inner_model(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside ``X``, ``dict[str, X]``, ``list[X]`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in reversed(getattr(annotation, "__args__", ()) or ()):
        inner = _inner_model(arg)
        if inner is not None:
            return inner
    return None


def format_validation_error(
    err: ValidationError,
    model: type[BaseModel],
    file: str,
    lines: Mapping[tuple[str, ...], int],
    prefix: Sequence[str | int] = (),
) -> ConfigError:
    """The first pydantic error as one located line, with a spelling hint for unknown keys."""
    errors = err.errors()
    # a typo shows up twice (unknown key + missing key): name the typo, it is the cause
    e = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    full = [*prefix, *loc]
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        msg = "unknown key" + (
            f" (did you mean {close[0]!r}?)"
            if close
            else (f" (expected one of: {', '.join(allowed)})" if allowed else "")
        )
    elif e["type"] == "missing":
        msg = "required key is missing"
    elif "input" in e and e["type"] not in ("value_error",):
        msg = f"{msg} (got {e['input']!r})"
    return ConfigError(msg, file=file, line=_line_for(lines, full), path=_dotted(full))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> LoadedConfig:
    """Read, override and validate a run file; raises ConfigError with one located line."""
    p = Path(path)
    file = str(path)
    try:
        raw_bytes = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError("run file not found", file=file) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, expected a YAML run file", file=file) from None
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw_bytes[: e.start].count(b"\n") + 1
        raise ConfigError(f"not valid UTF-8 (byte {e.start})", file=file, line=line) from None
    data, lines = _parse_yaml(text, file)
    if not isinstance(data, dict):
        raise ConfigError(
            "the run file must be a mapping of sections (run, policy, ...)", file=file, line=1
        )
    apply_overrides(data, overrides)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise format_validation_error(err, RunConfig, file, lines) from None
    loaded = LoadedConfig(config=cfg, file=file, lines=lines)
    missing = sorted(set(cfg.datasets) - set(cfg.verifiers))
    if missing:
        raise loaded.error(
            ("verifiers",),
            f"no verifier for domain {missing[0]!r} "
            f"(datasets has {sorted(cfg.datasets)}, verifiers has "
            f"{sorted(cfg.verifiers)})",
        )
    for domain in cfg.eval.datasets:
        if domain not in cfg.verifiers:
            raise loaded.error(("eval", "datasets", domain), "no verifier for this domain")
    return loaded


def resolve_path(loaded: LoadedConfig, p: Path) -> Path:
    """Model/data paths are relative to the run file."""
    return p if p.is_absolute() else (loaded.base_dir / p)
