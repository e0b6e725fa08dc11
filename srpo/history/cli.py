"""``srpo history stats|verify|export|show RUN_DIR``: look into a run's history store.

Exit codes: 0 ok, 1 corruption found (``verify``), 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from srpo.errors import SrpoError
from srpo.history.manifest import list_shards
from srpo.history.schema import FLAG_TRUNCATED, FLAG_VERIFIER_ERROR

_BARS = " ▁▂▃▄▅▆▇█"


class _BadInput(SrpoError):
    """A bad command line (no store there, an unparsable id, a missing extra)."""


def _store_root(run_dir: str) -> Path:
    """RUN_DIR/history when it holds a store, else RUN_DIR itself when it does."""
    p = Path(run_dir)
    if not p.is_dir():
        raise _BadInput(f"{run_dir}: no such directory")
    for cand in (p / "history", p):
        if cand.is_dir() and list_shards(cand):
            return cand
    raise _BadInput(f"{run_dir}: not a history store (no history/shard-*.manifest.json)")


def _reader(run_dir: str) -> Any:
    from srpo.history.reader import HistoryReader

    return HistoryReader(_store_root(run_dir))


def _guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn expected failures into one stderr line and exit code 2 (never a traceback)."""

    def run(args: argparse.Namespace) -> int:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn(args)
        except (SrpoError, OSError, ValueError) as e:  # HistoryError is an SrpoError
            print(f"srpo history {args.history_command}: error: {e}", file=sys.stderr)
            return 2
        except BrokenPipeError:  # `... | head`
            return 0

    run.__name__ = fn.__name__
    return run


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _console() -> Any:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)


def _spark(hist: Sequence[int]) -> str:
    top = max(hist) or 1
    return "".join(_BARS[round(h / top * (len(_BARS) - 1))] for h in hist)


@_guard
def cmd_stats(args: argparse.Namespace) -> int:
    with _reader(args.run_dir) as r:
        s = r.stats()
    if args.json:
        print(json.dumps(s, indent=1, default=str))
        return 0
    from rich.table import Table

    con = _console()
    con.print(f"[bold]history store[/bold] {_store_root(args.run_dir)}")
    t = Table(show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    rows = [
        ("records", f"{s['records']:,}"),
        ("epochs", f"{len(s['epochs'])}"),
        ("prompts", f"{s['prompts']:,}"),
        ("shards / segments / blocks", f"{s['shards']} / {s['segments']} / {s['blocks']}"),
        ("bytes on disk", _human(s["bytes_on_disk"])),
        ("raw bytes", _human(s["raw_bytes"])),
        ("compression ratio", f"{s['compression_ratio']:.1f}x"),
        ("bytes / record", f"{s['bytes_per_record']:.2f}"),
        ("committed step", ", ".join(f"shard {k}: {v}" for k, v in s["committed_steps"].items())),
    ]
    if s["problems"]:
        rows.append(("problems", f"[red]{s['problems']} (run `srpo history verify`)[/red]"))
    for k, v in rows:
        t.add_row(k, v)
    con.print(t)
    if s["per_epoch"]:
        e = Table(title="per-epoch pass rate (per prompt)")
        for col in (
            "epoch",
            "records",
            "prompts",
            "pass rate",
            "reward",
            "all wrong",
            "mixed",
            "all correct",
            "histogram 0→1",
        ):
            e.add_column(col, justify="right")
        for ep, d in s["per_epoch"].items():
            e.add_row(
                str(ep),
                f"{d['records']:,}",
                f"{d['prompts']:,}",
                f"{d['pass_rate']:.3f}",
                f"{d['reward_mean']:.3f}",
                f"{d['all_wrong']:.1%}",
                f"{d['mixed']:.1%}",
                f"{d['all_correct']:.1%}",
                _spark(d["pass_rate_hist"]),
            )
        con.print(e)
    return 0


@_guard
def cmd_verify(args: argparse.Namespace) -> int:
    with _reader(args.run_dir) as r:
        problems = r.verify()
        records = sum(r.counts("epoch").values())
    if not problems:
        print(f"ok: {records:,} committed records, all checksums match")
        return 0
    for p in problems:
        print(f"CORRUPT {p}")
    print(f"{len(problems)} problem(s); the rest of the store is readable")
    return 1


def _epochs(r: Any, wanted: list[int] | None) -> list[int]:
    have = r.epochs()
    return have if not wanted else [e for e in have if e in set(wanted)]


@_guard
def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise _BadInput("parquet export needs pyarrow (pip install pyarrow)") from None
    with _reader(args.run_dir) as r:
        epochs = _epochs(r, args.epoch)
        if args.format == "parquet":
            out = Path(args.output or "history.parquet")
            writer, n = None, 0
            for e in epochs:
                for blk in r.iter_epoch(e):
                    if "token_ids" in blk:
                        off = np.concatenate(
                            ([0], np.cumsum(blk.pop("token_count"), dtype=np.int64))
                        )
                        blk["tokens"] = pa.LargeListArray.from_arrays(off, blk.pop("token_ids"))
                    t = pa.table(blk)
                    writer = writer or pq.ParquetWriter(out, t.schema, compression="zstd")
                    writer.write_table(t)
                    n += t.num_rows
            if writer is None:
                raise _BadInput("nothing to export (no committed records)")
            writer.close()
            print(f"wrote {n:,} records to {out}", file=sys.stderr)
            return 0
        f = open(args.output, "w") if args.output else sys.stdout  # noqa: SIM115
        try:
            for e in epochs:
                for blk in r.iter_epoch(e):
                    _write_jsonl(f, blk)
        finally:
            if f is not sys.stdout:
                f.close()
    return 0


def _write_jsonl(f: Any, blk: dict[str, np.ndarray]) -> None:
    toks = None
    if "token_ids" in blk:
        counts = blk.pop("token_count")
        toks = np.split(blk.pop("token_ids"), np.cumsum(counts)[:-1]) if counts.size else []
    names = list(blk)
    cols = [blk[k].tolist() for k in names]
    for i, row in enumerate(zip(*cols, strict=True)):
        rec = dict(zip(names, row, strict=True))
        if toks is not None:
            rec["tokens"] = toks[i].tolist()
        f.write(json.dumps(rec) + "\n")


@_guard
def cmd_show(args: argparse.Namespace) -> int:
    try:
        pid = int(args.prompt, 0)
    except ValueError:
        raise _BadInput(f"--prompt {args.prompt!r}: not an integer id") from None
    with _reader(args.run_dir) as r:
        h = r.prompt_history(pid)
    n = int(h["step"].size)
    if n == 0:
        print(f"prompt {pid}: no committed rollouts")
        return 0
    from rich.table import Table

    t = Table(
        title=f"prompt {pid & (2**64 - 1)}: {n} rollouts, pass rate {h['correct'].mean():.3f}"
    )
    for col in (
        "epoch",
        "step",
        "sample",
        "domain",
        "stage",
        "reward",
        "correct",
        "length",
        "flags",
    ):
        t.add_column(col, justify="right")
    for i in range(n):
        fl = int(h["flags"][i])
        flags = ",".join(
            name
            for bit, name in (
                (FLAG_TRUNCATED, "truncated"),
                (FLAG_VERIFIER_ERROR, "verifier-error"),
            )
            if fl & bit
        )
        t.add_row(
            str(h["epoch"][i]),
            str(h["step"][i]),
            str(h["sample"][i]),
            str(h["domain"][i]),
            str(h["stage"][i]),
            f"{h['reward'][i]:.3f}",
            "✓" if h["correct"][i] else "✗",
            str(h["length"][i]),
            flags,
        )
    _console().print(t)
    return 0


def add_history_commands(subparsers: Any) -> None:
    """Register ``history {stats,verify,export,show}`` on an argparse subparsers object."""
    p = subparsers.add_parser("history", help="inspect a run's history store")
    sub = p.add_subparsers(dest="history_command", required=True, metavar="COMMAND")

    s = sub.add_parser("stats", help="records, size, compression, per-epoch pass rates")
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_stats)

    v = sub.add_parser("verify", help="check every checksum (exit 1 when corrupt)")
    v.add_argument("run_dir", metavar="RUN_DIR")
    v.set_defaults(func=cmd_verify)

    e = sub.add_parser("export", help="write the records as JSON lines or Parquet")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    e.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="default: stdout (jsonl), ./history.parquet (parquet)",
    )
    e.add_argument("--epoch", type=int, action="append", help="only this epoch (repeatable)")
    e.set_defaults(func=cmd_export)

    w = sub.add_parser("show", help="every rollout of one prompt")
    w.add_argument("run_dir", metavar="RUN_DIR")
    w.add_argument("--prompt", required=True, metavar="ID", help="prompt id (decimal or 0x hex)")
    w.set_defaults(func=cmd_show)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``main(["history", "stats", RUN_DIR])`` (``history`` optional)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("stats", "verify", "export", "show"):
        argv.insert(0, "history")
    parser = argparse.ArgumentParser(prog="srpo")
    subs = parser.add_subparsers(dest="command", required=True)
    add_history_commands(subs)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
