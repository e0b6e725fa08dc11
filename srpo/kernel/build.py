"""From a validated run file to a ready Kernel: plugins, data, policy, run directory.

Everything that can fail because of user input (plugin names and options, datasets, model
directory, output directory) is checked *before* the run directory is created, so a bad
run file writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import ValidationError

from srpo import registry
from srpo.algo import registry as algo_registry
from srpo.api import Plugin, PluginContext
from srpo.config import LoadedConfig, PluginSpec, RunConfig, format_validation_error, resolve_path
from srpo.data import load_dataset
from srpo.distributed import Dist, init_from_env, say
from srpo.errors import OptionError, PluginError, PluginStartError, SrpoError, warn
from srpo.kernel.checkpoint import (
    SHARDED,
    CheckpointError,
    CheckpointManager,
    check_config,
    load_state,
    load_weights,
    resolve_resume,
    set_rng_state,
)
from srpo.kernel.loop import Kernel, KernelSettings
from srpo.kernel.roles import Roles, close_plugins, sync_sampler
from srpo.ops import compiled_unsupported
from srpo.types import Prompt

RUN_MARKER = "srpo-run.json"


@dataclass
class Plan:
    """A run file resolved to plugin classes with validated options (nothing built yet)."""

    loaded: LoadedConfig
    sampler: tuple[type[Plugin], Any]
    verifiers: dict[str, tuple[type[Plugin], Any]]
    curriculum: tuple[type[Plugin], Any]
    loggers: list[tuple[type[Plugin], Any, bool]]


def _resolve(
    loaded: LoadedConfig, role: str, spec: PluginSpec, path: tuple[str | int, ...]
) -> tuple[type[Plugin], Any]:
    try:
        cls = registry.get(role, spec.name)
    except PluginError as e:
        raise loaded.error((*path, "name"), str(e)) from None
    try:
        options = cls.Options.model_validate(spec.options)
    except ValidationError as err:
        raise format_validation_error(
            err, cls.Options, loaded.file, loaded.lines, (*path, "options")
        ) from None
    try:
        cls.preflight(options, loaded.base_dir)
    except OptionError as e:
        keys = tuple(int(k) if k.isdigit() else k for k in e.key.split("."))
        raise loaded.error((*path, "options", *keys), e.message) from None
    except SrpoError:
        raise
    except Exception as e:  # a plugin's own bug in preflight: name the plugin, no traceback
        raise PluginStartError(
            f"{role} plugin {spec.name!r}: preflight check failed: {type(e).__name__}: {e}"
        ) from e
    return cls, options


def _check_algorithm(loaded: LoadedConfig) -> None:
    """The algorithm's named pieces exist (checked after the plugins are imported, since a
    plugin module may register more), and the compiled backend implements them if asked."""
    from srpo.algo import LossConfig

    a = loaded.config.algorithm
    for key, reg in (
        ("advantage", algo_registry.ADVANTAGES),
        ("policy_loss", algo_registry.POLICY_LOSSES),
        ("kl_estimator", algo_registry.KL_PENALTIES),
        ("aggregation", algo_registry.LOSS_AGGREGATIONS),
    ):
        if getattr(a, key) not in reg:
            raise loaded.error(("algorithm", key), reg.unknown(getattr(a, key)))
    cfg = LossConfig.from_options(a)
    if a.loss_backend == "compiled" and not cfg.fused:
        raise loaded.error(("algorithm", "loss_backend"), compiled_unsupported(cfg))


def plan(loaded: LoadedConfig) -> Plan:
    """Resolve every plugin and validate its options against its own schema, then the
    algorithm's names."""
    cfg = loaded.config
    p = Plan(
        loaded=loaded,
        sampler=_resolve(loaded, "sampler", cfg.sampler, ("sampler",)),
        verifiers={
            d: _resolve(loaded, "verifier", s, ("verifiers", d)) for d, s in cfg.verifiers.items()
        },
        curriculum=_resolve(loaded, "curriculum", cfg.curriculum, ("curriculum",)),
        loggers=[
            (*_resolve(loaded, "logger", s, ("loggers", i)), s.fatal)
            for i, s in enumerate(cfg.loggers)
        ],
    )
    _check_algorithm(loaded)
    return p


def load_datasets(loaded: LoadedConfig, eval_split: bool = False) -> dict[str, list[Prompt]]:
    """Every domain's prompts (or held-out prompts), each file read and checked in full
    (up to its limit) before anything runs; the format comes from ``DatasetSpec.format``."""
    cfg = loaded.config
    specs = cfg.eval.datasets if eval_split else cfg.datasets
    out = {}
    for domain, spec in specs.items():
        limit = cfg.eval.max_prompts if eval_split and cfg.eval.max_prompts else spec.limit
        out[domain] = load_dataset(
            resolve_path(loaded, spec.path),
            domain,
            format=spec.format,
            prompt_key=spec.prompt_key,
            reference_key=spec.reference_key,
            id_key=spec.id_key,
            limit=limit,
        )
    return out


def check_output_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to mix two runs in one directory (unless told to replace the old one)."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise SrpoError(f"{run_dir}: run.output_dir exists and is not a directory")
    if any(run_dir.iterdir()):
        if not (run_dir / RUN_MARKER).exists():
            raise SrpoError(
                f"{run_dir}: run.output_dir is not empty and is not an srpo run "
                "directory; choose another run.output_dir"
            )
        if not overwrite:
            raise SrpoError(
                f"{run_dir}: run.output_dir holds another run; pass --overwrite to "
                "replace it, or --set run.output_dir=NEW_DIR"
            )


def _construct(kind: str, cls: type[Plugin], options: Any, ctx: PluginContext) -> Any:
    try:
        return cls(options, ctx)
    except SrpoError:
        raise
    except Exception as e:
        raise PluginStartError(
            f"{kind} plugin {cls.__module__}.{cls.__name__} failed to start: "
            f"{type(e).__name__}: {e}"
        ) from None


def _prepare_resume(
    run_dir: Path, target: str, new_config: dict[str, Any], allow: Sequence[str]
) -> tuple[Path, dict[str, Any]]:
    """Find and read the checkpoint to resume from and check the run file still fits it.

    Reads only: a refused resume leaves the run directory exactly as it was.
    """
    if not (run_dir / RUN_MARKER).exists():
        raise CheckpointError(
            f"{run_dir}: nothing to resume: run.output_dir holds no srpo run "
            "(drop --resume to start one)"
        )
    path = resolve_resume(target, run_dir)
    state = load_state(path)
    changes = check_config(_with_defaults(state["config"]), new_config, allow, path)
    for key, old, new in changes:
        say(f"srpo: run file change accepted: {key}: {old!r} → {new!r}")
    return path, state


def _with_defaults(old: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's run file as today's schema reads it: a field added since it was written
    takes its default, which (by the schema's rule that defaults keep the old behaviour) is
    not a change. A run file today's schema refuses is compared as it was saved."""
    try:
        return RunConfig.model_validate(old).model_dump(mode="json")
    except ValidationError:
        return old


def _rewind_history(history: Any, saved: dict[str, Any] | None, where: Path) -> int:
    """Cut the store back to the checkpoint's committed position; refuse if it lost records."""
    if history is None or saved is None:
        return 0
    have_step, have = history.committed_step, history.committed_records
    want_step, want = saved["committed_step"], saved["records"]
    if want_step is not None and (have_step is None or have_step < want_step or have < want):
        raise CheckpointError(
            f"{where}: the history store holds less than this checkpoint committed "
            f"(step {have_step}, {have} records; expected step {want_step}, {want} records)"
        )
    if want_step is None:
        return 0
    dropped = history.truncate_after(want_step)
    if history.committed_records != want:
        raise CheckpointError(
            f"{where}: the history store has {history.committed_records} records up to step "
            f"{want_step}, the checkpoint recorded {want}"
        )
    return dropped


def build(
    loaded: LoadedConfig,
    *,
    overwrite: bool = False,
    history_factory: Any = None,
    resume: str | None = None,
    allow_config_change: Sequence[str] = (),
) -> Kernel:
    """Validate everything, then create (or, with ``resume``, reopen) the run directory and
    the Kernel. ``resume`` is ``"auto"`` (the newest complete checkpoint of
    run.output_dir) or a checkpoint/run directory path. ``history_factory(run_dir, cfg)``
    returns ``(store, open_reader)`` (see ``srpo.kernel.history_hook``).

    If anything fails after plugins were constructed, they (and the history store) are
    closed before the error propagates: no worker pool or sandbox outlives a failed start.
    """
    cfg = loaded.config
    p = plan(loaded)
    datasets = load_datasets(loaded)
    eval_sets = load_datasets(loaded, eval_split=True)
    run_dir = Path(cfg.run.output_dir)
    config = cfg.model_dump(mode="json")
    ckpt: Path | None = None
    state: dict[str, Any] = {}
    if resume is not None:
        if overwrite:
            raise SrpoError(
                "--resume continues the run in run.output_dir, --overwrite "
                "replaces it: pass one of them"
            )
        ckpt, state = _prepare_resume(run_dir, resume, config, allow_config_change)
    else:
        check_output_dir(run_dir, overwrite)
    device = _device(cfg.run.device)
    dist = init_from_env(device)
    _warn_staleness(loaded, dist)
    if dist.active and device == "cuda":
        device = f"cuda:{dist.local_rank}"
    keep_replica = bool(getattr(p.sampler[0], "generates_with_policy_model", False))
    policy = _make_policy(
        loaded, sum(len(v) for v in datasets.values()), device, dist, keep_replica
    )
    ctx = PluginContext(
        run_dir=run_dir,
        seed=cfg.run.seed,
        datasets=datasets,
        tokenizer=policy.tokenizer,
        policy=policy,
        config=config,
        num_workers=os.cpu_count() or 1,
        base_dir=loaded.base_dir,
    )
    built: list[Plugin] = []
    history = None
    try:
        roles = _construct_roles(p, ctx, built, with_loggers=dist.is_main)
        domains = sorted(set(datasets) | set(eval_sets))
        dist.barrier()  # every rank checked the directory before rank 0 creates it
        if ckpt is None and dist.is_main:
            _create_run_dir(run_dir, overwrite, domains, config)
        open_reader = None
        if cfg.history.enabled and history_factory is not None and dist.is_main:
            history, open_reader = history_factory(run_dir, cfg)
        dist.barrier()
        kernel = Kernel(
            roles,
            policy,
            _settings(cfg, domains),
            run_dir,
            config,
            eval_sets,
            history=history,
            open_reader=open_reader,
            checkpoints=CheckpointManager(run_dir, cfg.checkpoint.keep, dist),
            dist=dist,
        )
        if ckpt is None:
            kernel.seed_everything()
            return kernel
        _restore(kernel, ckpt, state, history)
    except BaseException:
        close_plugins(built)
        if history is not None:
            history.close()
        raise
    if dist.is_main:
        _write_config(run_dir, config)  # the run file now in force (allowed changes included)
    return kernel


def _warn_staleness(loaded: LoadedConfig, dist: Dist) -> None:
    """``run.max_staleness`` > 0: a word when stale rollouts would be trained without the
    importance correction that accounts for their age."""
    cfg = loaded.config
    if not cfg.run.max_staleness:
        return
    if cfg.algorithm.rollout_correction.mode == "none" and dist.is_main:
        warn(
            f"run.max_staleness is {cfg.run.max_staleness} and "
            "algorithm.rollout_correction.mode is none: rollouts up to that many updates old "
            "are trained as if on-policy; token_tis weights each token by trainer/behaviour "
            "probability (the decoupled objective, docs/staleness.md)"
        )


def _device(run_device: str) -> str:
    if run_device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return run_device


def _make_policy(
    loaded: LoadedConfig, train_prompts: int, device: str, dist: Dist, keep_replica: bool
) -> Any:
    """Threads and seed first (model loading draws from the RNG), then the policy with the
    loss of ``algorithm.loss_backend`` (sharded with FSDP2 in a data-parallel run)."""
    from srpo.ops import make_loss_fn
    from srpo.policy import Policy

    cfg = loaded.config
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    steps_per_epoch = -(-train_prompts // cfg.run.prompts_per_step)
    total = cfg.run.max_steps or steps_per_epoch * cfg.run.epochs
    return Policy(
        resolve_path(loaded, cfg.policy.path),
        cfg.policy,
        cfg.algorithm,
        total,
        loss_fn=make_loss_fn(cfg.algorithm.loss_backend),
        device=device,
        dist=dist,
        keep_replica=keep_replica,
    )


def _construct_roles(
    p: Plan, ctx: PluginContext, built: list[Plugin], with_loggers: bool = True
) -> Roles:
    """Construct every plugin, appending each to ``built`` as soon as it exists (so the
    caller can close what was built if a later one fails). Loggers only on rank 0."""

    def make(kind: str, cls: type[Plugin], options: Any) -> Any:
        plugin = _construct(kind, cls, options, ctx)
        built.append(plugin)
        return plugin

    sampler = make("sampler", *p.sampler)
    verifiers = {d: make("verifier", c, o) for d, (c, o) in p.verifiers.items()}
    curriculum = make("curriculum", *p.curriculum)
    chosen = p.loggers if with_loggers else []
    loggers = [make("logger", c, o) for c, o, _ in chosen]
    fatal = {i for i, (_, _, f) in enumerate(chosen) if f}
    return Roles(sampler, verifiers, curriculum, loggers, fatal)


def _create_run_dir(
    run_dir: Path, overwrite: bool, domains: list[str], config: dict[str, Any]
) -> None:
    if run_dir.exists() and overwrite:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text(json.dumps({"srpo": 1, "domains": domains}) + "\n")
    _write_config(run_dir, config)


def _settings(cfg: RunConfig, domains: list[str]) -> KernelSettings:
    return KernelSettings(
        group_size=cfg.algorithm.group_size,
        prompts_per_step=cfg.run.prompts_per_step,
        epochs=cfg.run.epochs,
        max_steps=cfg.run.max_steps,
        eval_every=cfg.eval.every,
        seed=cfg.run.seed,
        domains=domains,
        checkpoint_every=cfg.checkpoint.every,
        max_staleness=cfg.run.max_staleness,
    )


def _write_config(run_dir: Path, config: dict[str, Any]) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _restore(kernel: Kernel, ckpt: Path, state: dict[str, Any], history: Any) -> None:
    """Put a freshly built kernel into the checkpoint's state; the RNGs last, after
    everything that may draw from them (model loading, plugin construction)."""
    step = int(state["step"])
    if history is not None:  # check before deleting anything
        have, want = history.committed_step, (state.get("history") or {}).get("committed_step")
        if want is not None and (have is None or have < want):
            raise CheckpointError(
                f"{ckpt}: the history store committed up to step {have}, the checkpoint "
                f"needs step {want}"
            )
    dist = kernel.dist
    sharded = (ckpt / SHARDED).is_dir()
    if sharded != dist.active:
        saved_by = "a data-parallel (torchrun) run" if sharded else "a one-process run"
        raise CheckpointError(
            f"{ckpt}: saved by {saved_by}; resume it the same way"
            + (" (torchrun --nproc-per-node N ... or srpo run --nproc N)" if sharded else "")
        )
    gone, dropped = [], 0
    if dist.is_main:
        gone = kernel.checkpoints.discard_after(step) if kernel.checkpoints is not None else []
        dropped = _rewind_history(history, state.get("history"), ckpt)
    dist.barrier()
    if dist.active:
        kernel.policy.load_sharded(ckpt / SHARDED)
    else:
        load_weights(kernel.policy.model, ckpt / "model")
    sync_sampler(kernel.roles.sampler, kernel.policy)  # an engine with its own copy reloads
    kernel.policy.load_state_dict(state["policy"])
    kernel.load_state_dict(state["kernel"])
    if kernel.checkpoints is not None:
        kernel.checkpoints.last_step = step
    set_rng_state(state["rng"])
    c = kernel.counters
    extra = f"; discarded newer checkpoints {', '.join(g.name for g in gone)}" if gone else ""
    say(
        f"srpo: resuming from {ckpt} (step {c.step}, epoch {c.epoch}); dropped {dropped} "
        f"history records after it{extra}"
    )


def close_roles(kernel: Kernel) -> None:
    """Close every plugin of a kernel's run, even if some fail to close."""
    close_plugins(kernel.roles.all())
