"""From ``srpo eval``'s arguments to the pieces it runs: datasets, policy, sampler, verifiers.

The command line is turned into a run file (a ``RunConfig``) and then built by the same
code as ``srpo run`` — ``plan`` for the plugin names and options, ``load_datasets`` for the
data, ``Policy`` for the model and its chat template, the plugins' own constructors — so an
evaluation reads data, renders prompts, samples and scores exactly as training does, and a
bad argument fails the same way, in one line, before a model is loaded.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from srpo import registry
from srpo.api import PluginContext, Prompt, Sampler, Verifier
from srpo.config import (
    LoadedConfig,
    RunConfig,
    apply_overrides,
    format_validation_error,
    load_config,
    resolve_path,
)
from srpo.errors import SrpoError

CLI_FILE = "srpo eval"  # where errors about the synthesized run file point


@dataclass
class EvalSetup:
    """What an evaluation needs before a model is loaded (everything validated)."""

    loaded: LoadedConfig
    model_dir: Path
    datasets: dict[str, list[Prompt]]
    greedy_only: bool  # --temperature 0: the samples are greedy decodes
    plan: Any  # srpo.kernel.build.Plan: plugin classes with their validated options


def _pairs(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SrpoError(f"{flag} expects NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def _sampling_overrides(args: argparse.Namespace) -> list[str]:
    """The sampling flags the user gave, as ``--set`` overrides of ``sampler.options``
    (flags left out keep the run file's or the sampler's defaults)."""
    out = []
    if args.temperature is not None and args.temperature > 0:
        out.append(f"sampler.options.temperature={args.temperature}")
    for flag in ("top_p", "top_k", "max_new_tokens"):
        value = getattr(args, flag)
        if value is not None:
            out.append(f"sampler.options.{flag}={value}")
    return out


def _model_dir(path: Path) -> Path:
    """A model directory, or a checkpoint directory (``…/step-N``) holding one in model/."""
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    if not path.is_dir():
        raise SrpoError(
            f"{path}: MODEL is not a directory (a Hugging Face model directory "
            "or an srpo checkpoint …/checkpoints/step-N)"
        )
    if not (path / "config.json").is_file():
        raise SrpoError(f"{path}: MODEL is not a model directory (no config.json)")
    return path


def _from_cli(args: argparse.Namespace) -> LoadedConfig:
    """A run file from ``MODEL --data NAME=PATH ...``: paths absolute (relative to where
    srpo runs), one verifier per dataset (``--verifier NAME=VERIFIER``, default: the
    verifier named like the dataset), then ``--set`` and the sampling flags on top."""
    data = _pairs(args.data, "--data")
    if not data:
        raise SrpoError("no dataset: pass --data NAME=PATH (e.g. --data math=test.jsonl)")
    chosen = _pairs(args.verifier, "--verifier")
    extra = sorted(set(chosen) - set(data))
    if extra:
        raise SrpoError(f"--verifier {extra[0]}=...: no --data {extra[0]}=PATH to score")
    known = {info.name for info in registry.discover() if info.role == "verifier"}
    verifiers = {}
    for name in data:
        vname = chosen.get(name, name)
        if name not in chosen and vname not in known:
            raise SrpoError(
                f"no verifier for dataset {name!r}: pass --verifier {name}=VERIFIER "
                f"(installed: {', '.join(sorted(known))})"
            )
        verifiers[name] = {"name": vname}
    policy: dict[str, Any] = {"path": str(_model_dir(Path(args.model)).resolve())}
    if args.dtype:
        policy["dtype"] = args.dtype
    if args.no_chat_template:
        policy["chat_template"] = False
    if args.system_prompt is not None:
        policy["system_prompt"] = args.system_prompt
    spec = {"prompt_key": args.prompt_key, "reference_key": args.answer_key, "id_key": args.id_key}
    raw: dict[str, Any] = {
        "run": {"seed": args.seed, "device": args.device or "auto", "threads": args.threads},
        "policy": policy,
        "datasets": {
            n: {"path": str(Path(p).resolve()), **{k: v for k, v in spec.items() if v}}
            for n, p in data.items()
        },
        "sampler": {"name": args.sampler or "hf", "options": {}},
        "verifiers": verifiers,
        "loggers": [],
        "history": {"enabled": False},
    }
    apply_overrides(raw, [*(args.set or ()), *_sampling_overrides(args)])
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise format_validation_error(err, RunConfig, CLI_FILE, {}) from None
    return LoadedConfig(config=cfg, file=CLI_FILE)


def _checkpoint_model(loaded: LoadedConfig, which: str) -> Path:
    """``--checkpoint N`` (a step) or ``latest`` of the run file's run.output_dir."""
    from srpo.kernel.checkpoint import MODEL, find_checkpoint, list_checkpoints, verify

    run_dir = Path(loaded.config.run.output_dir)
    if which == "latest":
        path, _ = find_checkpoint(run_dir)
        if path is None:
            raise SrpoError(f"{run_dir}: no complete checkpoint (run.output_dir of the run file)")
        return path / MODEL
    if not which.isdigit():
        raise SrpoError(f"--checkpoint expects a step number or 'latest', got {which!r}")
    found = dict(list_checkpoints(run_dir))
    if int(which) not in found:
        have = ", ".join(str(s) for s in found) or "none"
        raise SrpoError(f"{run_dir}: no checkpoint of step {which} (have: {have})")
    why = verify(found[int(which)])
    if why is not None:
        raise SrpoError(f"{found[int(which)]}: not a usable checkpoint: {why}")
    return found[int(which)] / MODEL


def prepare(args: argparse.Namespace) -> EvalSetup:
    """Validate the arguments and read the datasets; nothing heavy is loaded yet."""
    from srpo.kernel.build import load_datasets, plan

    if args.run_file and args.model:
        raise SrpoError("pass MODEL or --run RUN_FILE, not both")
    if not args.run_file and not args.model:
        raise SrpoError("nothing to evaluate: pass MODEL (and --data NAME=PATH) or --run RUN_FILE")
    if args.n < 1:
        raise SrpoError(f"--n must be at least 1, got {args.n}")
    greedy_only = args.temperature == 0
    if greedy_only and args.n != 1:
        raise SrpoError("--temperature 0 is greedy decoding: every sample is the same; use --n 1")
    if args.temperature is not None and args.temperature < 0:
        raise SrpoError(f"--temperature must be >= 0, got {args.temperature}")
    bad = [k for k in args.pass_k or () if not 1 <= k <= args.n]
    if bad:
        raise SrpoError(f"--pass-k {bad[0]}: k must be between 1 and --n ({args.n})")
    if args.run_file:
        if args.data or args.verifier:
            raise SrpoError("--data/--verifier go with MODEL; with --run, edit the run file")
        sets = [*(args.set or ()), *_sampling_overrides(args)]
        if args.sampler:
            sets.append(f"sampler.name={args.sampler}")
        loaded = load_config(args.run_file, sets)
        if args.checkpoint:
            model_dir = _checkpoint_model(loaded, args.checkpoint)
        else:
            model_dir = _model_dir(resolve_path(loaded, loaded.config.policy.path))
        eval_split = bool(loaded.config.eval.datasets)  # held-out sets, else training sets
    else:
        if args.checkpoint:
            raise SrpoError("--checkpoint goes with --run (MODEL may itself be a checkpoint)")
        loaded = _from_cli(args)
        model_dir = loaded.config.policy.path
        eval_split = False
    p = plan(loaded)  # every plugin name and its options, before the data and the model
    datasets = load_datasets(loaded, eval_split=eval_split)
    if args.limit is not None:
        if args.limit < 1:
            raise SrpoError(f"--limit must be at least 1, got {args.limit}")
        datasets = {d: v[: args.limit] for d, v in datasets.items()}
    return EvalSetup(loaded, model_dir, datasets, greedy_only, p)


@dataclass
class Built:
    """The live pieces: the policy (model + chat template), the sampler, the verifiers."""

    policy: Any
    sampler: Sampler
    verifiers: dict[str, Verifier]

    def close(self) -> None:
        from srpo.kernel.roles import close_plugins

        close_plugins([self.sampler, *self.verifiers.values()])


def build(setup: EvalSetup) -> Built:
    """Load the model as a ``Policy`` (so prompts go through the run's chat template and
    the sampler sees the ``PolicyHandle`` it sees in training) and construct the plugins.
    No KL reference model: nothing is trained."""
    import os

    import torch

    from srpo.kernel.build import _construct, _device
    from srpo.policy import Policy

    cfg = setup.loaded.config
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    algo = cfg.algorithm.model_copy(update={"kl_coef": 0.0})
    policy = Policy(setup.model_dir, cfg.policy, algo, 1, device=_device(cfg.run.device))
    policy.model.eval()
    p = setup.plan
    ctx = PluginContext(
        run_dir=Path.cwd(),
        seed=cfg.run.seed,
        datasets=setup.datasets,
        tokenizer=policy.tokenizer,
        policy=policy,
        config=cfg.model_dump(mode="json"),
        num_workers=os.cpu_count() or 1,
        base_dir=setup.loaded.base_dir,
    )
    built: list[Any] = []
    try:
        sampler = _construct("sampler", *p.sampler, ctx)
        built.append(sampler)
        verifiers = {}
        for domain in setup.datasets:
            verifiers[domain] = _construct("verifier", *p.verifiers[domain], ctx)
            built.append(verifiers[domain])
    except BaseException:
        from srpo.kernel.roles import close_plugins

        close_plugins(built)
        raise
    return Built(policy, sampler, verifiers)
