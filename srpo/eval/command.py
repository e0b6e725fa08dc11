"""``srpo eval``: the subcommand's arguments and what it does with them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Evaluate a model (a Hugging Face directory or an srpo checkpoint) on datasets with their
verifiers, the way RL papers report: greedy accuracy, avg@n (Pass@1 averaged over n
samples, with its standard error across prompts), pass@k (the unbiased estimator of Chen
et al. 2021), maj@k (where the verifier normalizes answers: math), mean response length and
the share of responses cut at --max-new-tokens. Data formats, verifiers, samplers and the
chat template are those of training: a run file's --set keys apply here too."""

EPILOG = """\
examples:
  srpo eval examples/tiny/model --data math=examples/tiny/data/math_test.jsonl \\
      --data code=examples/tiny/data/code_test.jsonl --n 4 --limit 8
  srpo eval Qwen2.5-7B/ --data aime=aime24.parquet --verifier aime=math \\
      --answer-key reward_model.ground_truth --n 16 --temperature 0.6 --top-p 0.95 \\
      --max-new-tokens 4096 --sampler vllm --out aime.json --samples aime.jsonl
  srpo eval --run plugins.yaml --checkpoint 200 --n 8     # a run's held-out sets, step 200
  srpo eval --run plugins.yaml --checkpoint latest --temperature 0   # greedy only
  srpo eval MODEL --data math=test.jsonl --set sampler.options.kv_cache_gb=4 --sampler vllm

resuming: with --samples FILE every scored sample is appended to FILE at once; run the
same command again after an interruption and only the missing prompts are generated (the
same seed draws the same samples). FILE remembers the model, sampler options, n, seed and
verifiers, and is refused when they differ.

exit status: 0 evaluated; 2 bad input (one line: srpo: error: ...); 130 interrupted."""


def add_eval_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval`` on the ``srpo`` CLI's subparsers."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model or checkpoint: greedy, avg@n, pass@k, maj@k",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="model or checkpoint directory")
    p.add_argument(
        "--run",
        dest="run_file",
        metavar="RUN_FILE",
        help="take model, datasets (eval.datasets, else datasets), verifiers, "
        "sampler and chat template from this run file",
    )
    p.add_argument(
        "--checkpoint",
        metavar="STEP",
        help="with --run: the checkpoint of this step (or 'latest') of run.output_dir",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY.PATH=VALUE",
        help="override a run-file key (repeatable), e.g. "
        "--set verifiers.code.options.site_packages=false",
    )
    d = p.add_argument_group("data (with MODEL)")
    d.add_argument(
        "--data",
        action="append",
        metavar="NAME=PATH",
        help="a dataset (JSONL, Parquet, save_to_disk dir), repeatable",
    )
    d.add_argument(
        "--verifier",
        action="append",
        metavar="NAME=VERIFIER",
        help="the verifier of dataset NAME (default: the one named NAME)",
    )
    d.add_argument("--prompt-key", help="record field of the prompt (default: prompt)")
    d.add_argument("--answer-key", help="record field of the reference (default: answer)")
    d.add_argument("--id-key", help="record field of a stable id (default: id)")
    d.add_argument("--limit", type=int, metavar="N", help="first N prompts of each dataset")
    s = p.add_argument_group("sampling")
    s.add_argument("--n", type=int, default=1, help="samples per prompt (default 1)")
    s.add_argument(
        "--temperature", type=float, help="sampling temperature; 0: greedy only (needs --n 1)"
    )
    s.add_argument("--top-p", type=float, dest="top_p")
    s.add_argument("--top-k", type=int, dest="top_k")
    s.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    s.add_argument("--sampler", help="sampler plugin: hf (default) or vllm")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    s.add_argument("--no-greedy", action="store_true", help="skip the greedy decode per prompt")
    s.add_argument(
        "--batch-prompts",
        type=int,
        default=32,
        metavar="N",
        help="prompts per generate call (and per progress/resume step)",
    )
    m = p.add_argument_group("model (with MODEL)")
    m.add_argument("--device", choices=("cpu", "cuda", "auto"), help="default: auto")
    m.add_argument("--dtype", choices=("float32", "bfloat16"))
    m.add_argument("--threads", type=int, help="torch intra-op threads")
    m.add_argument(
        "--no-chat-template",
        action="store_true",
        help="feed the prompt text as is, even if the tokenizer has a chat template",
    )
    m.add_argument("--system-prompt", help="system message for prompts without one")
    o = p.add_argument_group("output")
    o.add_argument(
        "--pass-k",
        type=int,
        nargs="+",
        metavar="K",
        help="ks for pass@k and maj@k (default 1, 2, 4, ... up to --n)",
    )
    o.add_argument("--out", metavar="FILE.json", help="write the metrics as JSON")
    o.add_argument(
        "--samples", metavar="FILE.jsonl", help="append every scored sample here; rerun to resume"
    )
    p.set_defaults(func=cmd_eval)
    return p


def _settings(args: argparse.Namespace, setup: Any) -> dict[str, Any]:
    """What the samples depend on: the samples file's header, and the JSON's settings."""
    cfg, plan = setup.loaded.config, setup.plan
    return {
        "model": str(Path(setup.model_dir).resolve()),
        "sampler": {"name": cfg.sampler.name, "options": plan.sampler[1].model_dump(mode="json")},
        "greedy_only": setup.greedy_only,
        "n": args.n,
        "seed": args.seed,
        "chat_template": cfg.policy.chat_template,
        "system_prompt": cfg.policy.system_prompt,
        "verifiers": {
            d: {
                "name": cfg.verifiers[d].name,
                "options": plan.verifiers[d][1].model_dump(mode="json"),
            }
            for d in setup.datasets
        },
    }


def cmd_eval(args: argparse.Namespace) -> int:
    """Exit 0 with the table printed; bad input raises ``SrpoError`` (one line, exit 2)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from srpo.api import normalizes_answers
    from srpo.errors import SrpoError, warn
    from srpo.eval import report, setup
    from srpo.eval.estimators import default_ks
    from srpo.eval.runner import run_eval, summarize
    from srpo.eval.samples import SampleStore

    prepared = setup.prepare(args)
    if args.batch_prompts < 1:
        raise SrpoError(f"--batch-prompts must be at least 1, got {args.batch_prompts}")
    n = 1 if prepared.greedy_only else args.n
    ks = sorted(set(args.pass_k)) if args.pass_k else default_ks(n)
    settings = _settings(args, prepared)
    store = SampleStore(Path(args.samples) if args.samples else None, settings)
    built = setup.build(prepared)
    total = sum(len(v) for v in prepared.datasets.values())
    try:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as bar:
            task = bar.add_task("evaluating prompts", total=total)
            run_eval(
                built.sampler,
                built.verifiers,
                prepared.datasets,
                store,
                n=n,
                seed=args.seed,
                greedy=not args.no_greedy,
                greedy_only=prepared.greedy_only,
                batch_prompts=args.batch_prompts,
                advance=lambda k: bar.advance(task, k),
            )
        voting = {d: normalizes_answers(v) for d, v in built.verifiers.items()}
    finally:
        built.close()
        store.close()
    metrics = summarize(
        store, prepared.datasets, n=n, ks=ks, greedy_only=prepared.greedy_only, majority=voting
    )
    how = (
        "greedy"
        if prepared.greedy_only
        else (f"n={n}, temperature {built.sampler.options.temperature}")
    )
    title = f"{Path(prepared.model_dir)} ({how}, seed {args.seed})"
    if store.resumed:
        print(f"srpo: resumed {store.resumed} scored samples from {args.samples}", file=sys.stderr)
    report.print_table(metrics, n, title)
    trunc = metrics["overall"].get("truncated")
    if isinstance(trunc, float) and trunc > 0.1:
        warn(
            f"{100 * trunc:.0f}% of the responses were cut at max_new_tokens "
            f"({built.sampler.options.max_new_tokens}): raise --max-new-tokens"
        )
    if args.out:
        report.write_json(Path(args.out), metrics, {**settings, "pass_k": ks})
        print(f"wrote {args.out}")
    return 0
