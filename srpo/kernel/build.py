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
from srpo.api import Plugin, PluginContext
from srpo.config import LoadedConfig, PluginSpec, format_validation_error, resolve_path
from srpo.data import load_jsonl
from srpo.errors import PluginError, SrpoError
from srpo.kernel.loop import Kernel, KernelSettings, Roles
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
    return cls, options


def plan(loaded: LoadedConfig) -> Plan:
    """Resolve every plugin and validate its options against its own schema."""
    cfg = loaded.config
    return Plan(
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


def load_datasets(loaded: LoadedConfig, eval_split: bool = False) -> dict[str, list[Prompt]]:
    cfg = loaded.config
    specs = cfg.eval.datasets if eval_split else cfg.datasets
    out = {}
    for domain, spec in specs.items():
        limit = cfg.eval.max_prompts if eval_split and cfg.eval.max_prompts else spec.limit
        out[domain] = load_jsonl(
            resolve_path(loaded, spec.path),
            domain,
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
        raise PluginError(
            f"{kind} plugin {cls.__module__}.{cls.__name__} failed to start: "
            f"{type(e).__name__}: {e}"
        ) from None


def build(loaded: LoadedConfig, *, overwrite: bool = False, history_factory: Any = None) -> Kernel:
    """Validate everything, then create the run directory and the Kernel."""
    from srpo.policy import Policy

    cfg = loaded.config
    p = plan(loaded)
    datasets = load_datasets(loaded)
    eval_sets = load_datasets(loaded, eval_split=True)
    run_dir = Path(cfg.run.output_dir)
    check_output_dir(run_dir, overwrite)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    device = cfg.run.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.run.seed)
    steps_per_epoch = -(-sum(len(v) for v in datasets.values()) // cfg.run.prompts_per_step)
    total = cfg.run.max_steps or steps_per_epoch * cfg.run.epochs
    if cfg.algorithm.loss_backend == "reference":
        from srpo.algo import grpo_loss_reference as loss_fn
    else:
        from functools import partial

        from srpo.ops import grpo_loss

        loss_fn = partial(
            grpo_loss, backend="compiled" if cfg.algorithm.loss_backend == "compiled" else "auto"
        )
    policy = Policy(
        resolve_path(loaded, cfg.policy.path),
        cfg.policy,
        cfg.algorithm,
        total,
        loss_fn=loss_fn,
        device=device,
    )
    ctx = PluginContext(
        run_dir=run_dir,
        seed=cfg.run.seed,
        datasets=datasets,
        tokenizer=policy.tokenizer,
        policy=policy,
        config=cfg.model_dump(mode="json"),
        num_workers=os.cpu_count() or 1,
    )
    sampler = _construct("sampler", *p.sampler, ctx)
    verifiers = {d: _construct("verifier", c, o, ctx) for d, (c, o) in p.verifiers.items()}
    curriculum = _construct("curriculum", *p.curriculum, ctx)
    loggers = [_construct("logger", c, o, ctx) for c, o, _ in p.loggers]
    fatal = {i for i, (_, _, f) in enumerate(p.loggers) if f}

    if run_dir.exists() and overwrite:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    domains = sorted(set(datasets) | set(eval_sets))
    (run_dir / RUN_MARKER).write_text(json.dumps({"srpo": 1, "domains": domains}) + "\n")
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    )
    history = reader = None
    if cfg.history.enabled and history_factory is not None:
        history, reader = history_factory(run_dir, cfg)
    settings = KernelSettings(
        group_size=cfg.algorithm.group_size,
        prompts_per_step=cfg.run.prompts_per_step,
        epochs=cfg.run.epochs,
        max_steps=cfg.run.max_steps,
        eval_every=cfg.eval.every,
        seed=cfg.run.seed,
        domains=domains,
    )
    roles = Roles(sampler, verifiers, curriculum, loggers, fatal)
    kernel = Kernel(
        roles,
        policy,
        settings,
        run_dir,
        cfg.model_dump(mode="json"),
        eval_sets,
        history=history,
        history_reader=reader,
    )
    kernel.seed_everything()
    return kernel


def close_roles(kernel: Kernel) -> None:
    """Close every plugin, even if some fail to close."""
    r = kernel.roles
    plugins: Sequence[Plugin] = [r.sampler, *r.verifiers.values(), r.curriculum, *r.loggers]
    for plugin in plugins:
        try:
            plugin.close()
        except Exception as e:  # closing must not hide the run's own outcome
            print(f"srpo: closing {type(plugin).__name__} failed: {e}")
