"""``srpo``: train with a run file, validate it, list plugins, inspect history.

Examples:
  srpo run examples/tiny/plugins.yaml                   # train the shipped tiny example
  srpo run plugins.yaml --set algorithm.group_size=16   # override any key
  srpo run plugins.yaml --resume                        # continue from the newest checkpoint
  srpo run plugins.yaml --nproc 2                       # data-parallel, 2 ranks (torchrun)
  srpo validate plugins.yaml                            # check a run file, run nothing
  srpo eval MODEL --data math=test.jsonl --n 16         # avg@16, pass@k, maj@k; no training
  srpo plugins list                                     # every plugin, with load errors
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from srpo import __version__
from srpo.errors import SrpoError, SrpoWarning


def _fail(message: str, code: int = 2) -> int:
    print(f"srpo: error: {_rank_prefix()}{message}", file=sys.stderr)
    return code


def _rank_prefix() -> str:
    """``rank N: `` in a data-parallel job (which process said it), else nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return f"rank {os.environ['RANK']}: "
    return ""


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N``: validate here (one error, not one per rank), then start the ranks."""
    from srpo.distributed.launch import LaunchSpec, launch

    if args.nproc < 1 or args.nnodes < 1:
        return _fail("--nproc and --nnodes must be at least 1")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        return _fail("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
    cmd_validate(args, quiet=True)
    rest = _rank_argv(sys.argv[1:] if args.owns_process else args.argv)
    spec = LaunchSpec(args.nproc, args.nnodes, args.rdzv_endpoint, args.rdzv_id)
    return launch(spec, rest)


def _rank_argv(argv: Sequence[str]) -> list[str]:
    """The command line each rank runs: this one without the launcher's options."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in LAUNCH_OPTIONS:
            skip = "=" not in a
            continue
        out.append(a)
    return out


LAUNCH_OPTIONS = ("--nproc", "--nnodes", "--rdzv-endpoint", "--rdzv-id")


def cmd_validate(args: argparse.Namespace, quiet: bool = False) -> int:
    from srpo.config import load_config
    from srpo.kernel.build import load_datasets, plan

    loaded = load_config(args.run_file, args.set or ())
    plan(loaded)
    data = load_datasets(loaded)
    evals = load_datasets(loaded, eval_split=True)
    sizes = ", ".join(f"{d}: {len(v)}" for d, v in data.items())
    esizes = ", ".join(f"{d}: {len(v)}" for d, v in evals.items()) or "none"
    if not quiet:
        print(f"{args.run_file}: OK (train prompts {sizes}; held-out {esizes})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Train; exit 0 when complete, 130/143 after SIGINT/SIGTERM (checkpointed), 1 when a
    plugin failed at run time (checkpointed when possible), 2 for bad input."""
    from srpo.kernel.signals import GracefulStop, exit_at_once_while_setting_up

    if getattr(args, "nproc", None):
        return _launch(args)
    owns_process = getattr(args, "owns_process", False)
    if owns_process:  # before the heavy imports: a Ctrl-C from here on is a clean 130
        exit_at_once_while_setting_up()
    from srpo.config import load_config
    from srpo.distributed import describe_rank_failure, shutdown
    from srpo.errors import PluginError
    from srpo.kernel.build import build, close_roles
    from srpo.kernel.history_hook import open_history

    loaded = load_config(args.run_file, args.set or ())
    try:
        kernel = build(
            loaded,
            overwrite=args.overwrite,
            history_factory=open_history,
            resume=args.resume,
            allow_config_change=args.allow_config_change or (),
        )
    except KeyboardInterrupt:  # in-process callers only (the process exits in the handler)
        print("\nsrpo: interrupted while setting up the run: nothing was trained", file=sys.stderr)
        return 130
    # When this is the process, the handler is swapped for SIG_IGN in one step at the end
    # (never back to SIG_DFL first), so a late signal cannot kill a run that completed.
    stop = GracefulStop(kernel, ignore_after=owns_process)
    status = None
    try:
        with stop:  # also around the clean-up: a signal there is recorded, not a traceback
            try:
                status = kernel.run()
                stop.completed = status == "completed"
            finally:
                close_roles(kernel)
                if kernel.history is not None:
                    kernel.history.close()
    except PluginError as e:
        return _fail(str(e), e.exit_code)
    except Exception as e:
        if not kernel.dist.active:
            raise
        return _fail(describe_rank_failure(e), 1)  # one line per rank, not N tracebacks
    finally:
        if status is not None:  # every rank got here: leave the job together
            shutdown(kernel.dist)
    if status == "completed":
        if stop.signum is not None:
            print(
                f"srpo: {signal.Signals(stop.signum).name} arrived after the run completed; "
                "nothing was lost",
                file=sys.stderr,
            )
        return 0
    if stop.exit_code is not None:
        where = kernel.checkpoints.last_step if kernel.checkpoints is not None else None
        saved = f"checkpoint of step {where} saved; " if where is not None else ""
        if kernel.dist.is_main:
            print(
                f"srpo: stopped by {stop.target.stop_requested}: {saved}continue with --resume",
                file=sys.stderr,
            )
        return stop.exit_code
    return 1


def cmd_plugins_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from srpo import registry

    table = Table(show_edge=False)
    for col in ("role", "name", "distribution", "version", "status"):
        table.add_column(col)
    broken = [info for info in registry.discover() if not info.ok]
    for info in registry.discover():
        status = "ok" if info.ok else "[red]BROKEN (see below)[/red]"
        table.add_row(info.role, info.name, info.distribution or "?", info.version or "?", status)
    console = Console(highlight=False)
    console.print(table)
    for info in broken:  # full text, unwrapped: the reason is what the user needs
        print(
            f"broken {info.role} plugin {info.name!r} ({info.target}, from "
            f"{info.distribution} {info.version}): {info.error}"
        )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import torch

    from srpo import ops, registry

    print(
        f"srpo {__version__}, torch {torch.__version__}, cuda available: "
        f"{torch.cuda.is_available()}"
    )
    print(f"loss op backend: {ops.active_backend()}")
    for k, v in ops.backend_info().items():
        print(f"  {k}: {v}")
    bad = [p for p in registry.discover() if not p.ok]
    print(f"plugins: {len(registry.discover()) - len(bad)} ok, {len(bad)} broken")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srpo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"srpo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="train with a run file",
        description="Train with a run file (YAML). Paths inside it are "
        "relative to the file; run.output_dir is relative to the current "
        "directory.",
    )
    run.add_argument("run_file", help="the run file, e.g. examples/tiny/plugins.yaml")
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY.PATH=VALUE",
        help="override a run-file key (repeatable), e.g. --set run.max_steps=10",
    )
    run.add_argument(
        "--overwrite", action="store_true", help="replace an existing run in run.output_dir"
    )
    run.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="PATH",
        help="continue the run in run.output_dir from its newest complete checkpoint, or from "
        "PATH (a checkpoint directory, e.g. RUN/checkpoints/step-000012)",
    )
    run.add_argument(
        "--allow-config-change",
        action="append",
        metavar="KEY.PATH",
        help="with --resume: accept that this run-file key (or section) changed since the "
        "checkpoint (repeatable), e.g. --allow-config-change run.max_steps",
    )
    dp = run.add_argument_group(
        "data-parallel training (one rank per process; FSDP2; NCCL on CUDA, gloo on CPU)",
        "--nproc N starts N ranks on this machine, the same as "
        "'torchrun --nproc-per-node N -m srpo run RUN_FILE'. Across machines, run the same "
        "command on each with --nnodes M --rdzv-endpoint HOST:PORT.",
    )
    dp.add_argument("--nproc", type=int, metavar="N", help="ranks on this machine")
    dp.add_argument("--nnodes", type=int, default=1, metavar="M", help="machines (default 1)")
    dp.add_argument(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="c10d rendezvous address every node can reach (the first node's, say)",
    )
    dp.add_argument("--rdzv-id", metavar="ID", help="job id shared by the nodes (multi-node)")
    run.set_defaults(func=cmd_run)

    val = sub.add_parser(
        "validate",
        help="check a run file and its data; run nothing",
        description="Validate the run file, plugin options and datasets. "
        "Exit 0 when valid, 2 with a one-line located error otherwise.",
    )
    val.add_argument("run_file")
    val.add_argument("--set", action="append", metavar="KEY.PATH=VALUE")
    val.set_defaults(func=cmd_validate)

    plugins = sub.add_parser("plugins", help="inspect installed plugins")
    psub = plugins.add_subparsers(dest="plugins_command", metavar="SUBCOMMAND")
    pl = psub.add_parser("list", help="every plugin with role, distribution, version, errors")
    pl.set_defaults(func=cmd_plugins_list)
    plugins.set_defaults(func=cmd_plugins_list)

    doc = sub.add_parser("doctor", help="which loss backend is active, and plugin health")
    doc.set_defaults(func=cmd_doctor)

    try:
        from srpo.history.cli import add_history_commands
    except ImportError:  # pragma: no cover - the store is part of srpo; defensive only
        pass
    else:
        add_history_commands(sub)
    from srpo.eval.command import add_eval_command

    add_eval_command(sub)
    try:
        from srpo.report.cli import add_report_command
    except ImportError:  # the report needs optional pieces; srpo trains without it
        pass
    else:
        add_report_command(sub)
    return parser


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show srpo's warnings (``srpo.errors.warn``) as ``srpo: warning: ...`` lines on stderr,
    not as Python's two-line ``file:line: SrpoWarning`` form; other warnings as usual."""
    previous = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, SrpoWarning):
            print(f"srpo: warning: {message}", file=sys.stderr, flush=True)
        else:
            previous(message, category, *args, **kwargs)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    """The ``srpo`` program. Called without ``argv`` it is the process (console script or
    ``python -m srpo.cli``) and may set process-wide signal dispositions at exit; with an
    ``argv`` list it is a library call (tests) and leaves them as it found them."""
    if argv is None and sys.argv[1:2] == ["run"]:
        # from the first moment, not only from cmd_run: a signal while the CLI's own modules
        # load is one line and 130/143 too, never a KeyboardInterrupt traceback
        from srpo.kernel.signals import exit_at_once_while_setting_up

        exit_at_once_while_setting_up()
    parser = make_parser()
    args = parser.parse_args(argv)
    args.owns_process = argv is None
    args.argv = list(argv) if argv is not None else None
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _warnings_as_lines():
            code = int(args.func(args) or 0)
    except SrpoError as e:
        code = _fail(str(e), e.exit_code)
    except KeyboardInterrupt:  # outside a training run's own handler: exit quietly
        print("\nsrpo: interrupted", file=sys.stderr)
        code = 130
    dist = sys.modules.get("srpo.distributed")  # loaded by a run; never imported for this
    if args.owns_process and dist is not None:
        dist.end_rank_process(code)  # a torchrun rank ends there (its docstring says why)
    return code


if __name__ == "__main__":
    sys.exit(main())
