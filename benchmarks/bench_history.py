"""History store benchmarks (pytest-benchmark), and the scale comparison with Parquet/SQLite.

    pytest benchmarks/bench_history.py                       # micro + scale (16M records)
    SRPO_HISTORY_BENCH_RECORDS=1000000 pytest benchmarks/bench_history.py -s
    python benchmarks/bench_history.py --records 1000000     # scale only, prints a table

Scale: P prompts x 16 rollouts, one epoch, pass rate per prompt ~ Beta(0.3, 0.3) (many
all-correct and all-wrong groups), written in step-sized batches (the same batches, same
size, for all three stores). Each store then computes the per-prompt epoch summary
(n, n_correct, mean reward, last step) in a fresh subprocess, which reports its wall time
and peak RSS (``ru_maxrss``, whole process, imports included; ``delta`` = peak minus the
RSS just before the summary started). Caches are warm for all three alike.
Durability: ours fsyncs at every commit (one per batch); Parquet and SQLite are fsynced
once at the end (SQLite commits each batch with WAL, synchronous=NORMAL).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from srpo.history import HistoryStore
from srpo.history.synth import PromptPool, epoch_batches

ROOT = Path(__file__).resolve().parents[1]

GROUP = 16
BATCH = 16384
KINDS = ("srpo", "srpo_nofsync", "parquet", "sqlite")
LABELS = {
    "srpo": "srpo (fsync/commit)",
    "srpo_nofsync": "srpo (fsync at close)",
    "parquet": "parquet zstd",
    "sqlite": "sqlite",
}
SUMMARY_COLS = ["prompt_id", "correct", "reward", "step"]


def scale_records() -> int:
    return int(float(os.environ.get("SRPO_HISTORY_BENCH_RECORDS", 16_000_000)))


def batches(records: int, batch: int = BATCH, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    pool = PromptPool.make(max(1, records // GROUP), seed=seed)
    yield from epoch_batches(pool, group=GROUP, epoch=0, batch_records=batch, seed=seed)


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


# --------------------------------------------------------------------------- writers


def write_srpo(path: Path, records: int, batch: int, durable: bool = True) -> float:
    busy = 0.0
    with HistoryStore(path, block_records=batch, durable=durable) as w:
        for b in batches(records, batch):
            t = time.perf_counter()
            w.append(**b)
            w.commit(int(b["step"][0]))
            busy += time.perf_counter() - t
    return busy


def write_parquet(path: Path, records: int, batch: int) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    busy, writer = 0.0, None
    for b in batches(records, batch):
        t = time.perf_counter()
        table = pa.table(b)
        writer = writer or pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
        busy += time.perf_counter() - t
    t = time.perf_counter()
    assert writer is not None
    writer.close()
    _fsync(path)
    return busy + time.perf_counter() - t


def write_sqlite(path: Path, records: int, batch: int) -> float:
    t = time.perf_counter()
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(
        "CREATE TABLE h (prompt_id INTEGER, epoch INTEGER, step INTEGER, sample INTEGER,"
        " domain INTEGER, reward REAL, correct INTEGER, length INTEGER, flags INTEGER,"
        " stage INTEGER)"
    )
    busy = time.perf_counter() - t
    for b in batches(records, batch):
        t = time.perf_counter()
        cols = [b["prompt_id"].view(np.int64)] + [b[k] for k in list(b)[1:]]
        rows = list(zip(*(c.tolist() for c in cols), strict=True))
        con.executemany("INSERT INTO h VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        con.commit()
        busy += time.perf_counter() - t
    t = time.perf_counter()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    _fsync(path)
    return busy + time.perf_counter() - t


# --------------------------------------------------------------------------- summaries


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def summary_child(kind: str, path: str) -> None:
    """Runs in a fresh process: one epoch summary, prints timing + memory as JSON."""
    if kind == "srpo":
        from srpo.history import HistoryReader

        r = HistoryReader(path)
    elif kind == "parquet":
        import pyarrow.parquet as pq
    base = _rss_now()
    t = time.perf_counter()
    if kind == "srpo":
        s = r.epoch_summary([0])
        ids, n, nc = s.prompt_id, s.n, s.n_correct
    elif kind == "parquet":
        table = pq.read_table(path, columns=SUMMARY_COLS)
        g = table.group_by("prompt_id").aggregate(
            [("prompt_id", "count"), ("correct", "sum"), ("reward", "mean"), ("step", "max")]
        )
        ids, n, nc = (
            g.column(c).to_numpy() for c in ("prompt_id", "prompt_id_count", "correct_sum")
        )
    else:
        con = sqlite3.connect(path)
        rows = con.execute(
            "SELECT prompt_id, COUNT(*), SUM(correct), AVG(reward), MAX(step) FROM h"
            " WHERE epoch = 0 GROUP BY prompt_id"
        ).fetchall()
        ids = np.array([r[0] for r in rows], np.int64).view(np.uint64)
        n = np.array([r[1] for r in rows])
        nc = np.array([r[2] for r in rows])
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    order = np.argsort(ids)
    check = int((ids[order][:1000].astype(np.float64) * n[order][:1000]).sum() % 1e9) + int(
        nc.sum()
    )
    print(
        json.dumps(
            {
                "seconds": dt,
                "peak_rss": peak,
                "delta_rss": peak - base,
                "prompts": int(ids.size),
                "check": check,
            }
        )
    )


def run_summary(kind: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--summary-child", kind, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- scale run


def scale(records: int, batch: int = BATCH, workdir: Path | None = None) -> dict:
    """Write the same records into all three stores; measure; returns a results dict."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-history-", dir=workdir))
    paths = {
        "srpo": tmp / "history",
        "srpo_nofsync": tmp / "history2",
        "parquet": tmp / "h.parquet",
        "sqlite": tmp / "h.sqlite",
    }
    writers = {
        "srpo": write_srpo,
        "parquet": write_parquet,
        "sqlite": write_sqlite,
        "srpo_nofsync": lambda p, r, b: write_srpo(p, r, b, durable=False),
    }
    res: dict = {"records": records, "prompts": records // GROUP, "batch": batch}
    try:
        for kind in KINDS:
            busy = writers[kind](paths[kind], records, batch)
            size = (
                _dir_bytes(paths[kind]) if kind.startswith("srpo") else paths[kind].stat().st_size
            )
            summ = run_summary(kind.split("_")[0], paths[kind])
            if kind == "srpo_nofsync":
                shutil.rmtree(paths[kind])
            res[kind] = {
                "append_seconds": busy,
                "append_records_per_s": records / busy,
                "bytes": size,
                "bytes_per_record": size / records,
                **{f"summary_{k}": v for k, v in summ.items()},
            }
        checks = {res[k]["summary_check"] for k in KINDS}
        res["summaries_agree"] = len(checks) == 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def print_table(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"{res['records']:,} records ({res['prompts']:,} prompts x {GROUP}), "
        f"batches of {res['batch']}"
    )
    for c in ("store", "append rec/s", "bytes", "B/rec", "summary s", "peak RSS", "summary ΔRSS"):
        t.add_column(c, justify="right")
    for k in KINDS:
        r = res[k]
        t.add_row(
            LABELS[k],
            f"{r['append_records_per_s']:,.0f}",
            f"{r['bytes']:,}",
            f"{r['bytes_per_record']:.3f}",
            f"{r['summary_seconds']:.3f}",
            f"{r['summary_peak_rss'] / 2**20:,.0f} MiB",
            f"{r['summary_delta_rss'] / 2**20:,.0f} MiB",
        )
    Console(width=120).print(t)
    s, f, p = res["srpo"], res["srpo_nofsync"], res["parquet"]
    print(
        f"vs parquet: append x{s['append_records_per_s'] / p['append_records_per_s']:.2f} "
        f"(fsync per commit), x{f['append_records_per_s'] / p['append_records_per_s']:.2f} "
        f"(fsync at close, as parquet); bytes x{s['bytes'] / p['bytes']:.3f}; summary "
        f"x{p['summary_seconds'] / s['summary_seconds']:.2f} faster; "
        f"summaries agree: {res['summaries_agree']}"
    )


# --------------------------------------------------------------------------- pytest


def test_append_commit_one_step(benchmark, tmp_path: Path) -> None:
    """One training step: append 4096 records (one call) + durable commit (fsync)."""
    b = next(batches(4096 * 4, batch=4096))
    w = HistoryStore(tmp_path / "h", block_records=65536)
    step = [0]

    def one() -> None:
        w.append(**{**b, "step": np.uint32(step[0])})
        w.commit(step[0])
        step[0] += 1

    benchmark(one)
    w.close()


def test_append_commit_one_step_no_fsync(benchmark, tmp_path: Path) -> None:
    """Same without fsync (durable=False): the encoding + write cost alone."""
    b = next(batches(4096 * 4, batch=4096))
    w = HistoryStore(tmp_path / "h", block_records=65536, durable=False)
    step = [0]

    def one() -> None:
        w.append(**{**b, "step": np.uint32(step[0])})
        w.commit(step[0])
        step[0] += 1

    benchmark(one)
    w.close()


def test_scale_vs_parquet_and_sqlite(benchmark, tmp_path: Path) -> None:
    records = scale_records()
    res = benchmark.pedantic(
        scale, args=(records,), kwargs={"workdir": tmp_path}, rounds=1, iterations=1
    )
    benchmark.extra_info.update(res)
    print_table(res)
    assert res["summaries_agree"]
    assert res["srpo"]["summary_peak_rss"] < 2 * 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=float, default=scale_records())
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--json", help="also write results here")
    ap.add_argument("--summary-child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.summary_child:
        summary_child(*args.summary_child)
        return
    res = scale(int(args.records), args.batch)
    print_table(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
