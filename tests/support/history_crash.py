"""Child process of the history kill -9 tests (``tests/test_history_crash.py``): appends and
commits deterministic steps forever. Run as ``python -m tests.support.history_crash ROOT``
from the repository root.

Prints ``open <committed_step>`` once the store is open (after any rewind), then each step
number right after ``commit`` returns (flushed), so the parent knows what was committed.
``--crash-after K`` makes the child SIGKILL itself at its K-th file-mutating syscall
(optionally after writing only half of that write: ``--torn``), a deterministic failpoint.
"""

from __future__ import annotations

import argparse
import os
import signal

import numpy as np

GROUP = 4
POOL = 40


def step_records(seed: int, step: int) -> dict:
    """The records of one step: a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    groups = int(rng.integers(1, 16))
    pool = np.random.default_rng(seed).integers(0, 2**64 - 1, POOL, dtype=np.uint64, endpoint=True)
    prompts = pool[rng.integers(0, POOL, groups)]
    n = groups * GROUP
    correct = rng.random(n) < 0.5
    lengths = rng.integers(0, 12, n)
    return {
        "prompt_id": np.repeat(prompts, GROUP),
        "epoch": np.full(n, step // 7, np.uint32),
        "step": np.full(n, step, np.uint32),
        "sample": np.tile(np.arange(GROUP, dtype=np.uint16), groups),
        "domain": rng.integers(0, 3, n).astype(np.uint8),
        "reward": np.where(correct, 1.0, rng.choice([0.0, -0.5], n)).astype(np.float32),
        "correct": correct.astype(np.uint8),
        "length": rng.integers(1, 5000, n).astype(np.uint32),
        "flags": (rng.random(n) < 0.05).astype(np.uint8),
        "stage": np.full(n, (step // 20) % 256, np.uint8),  # long runs wrap, never overflow
        "tokens": [rng.integers(0, 50000, k).astype(np.int32) for k in lengths],
    }


def _install_failpoint(k: int, torn: bool) -> None:
    count = [0]

    def wrap(name: str):
        real = getattr(os, name)

        def f(*a, **kw):
            count[0] += 1
            if count[0] >= k:
                if torn and name == "write" and len(a[1]) > 1:
                    real(a[0], bytes(a[1])[: len(a[1]) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **kw)

        setattr(os, name, f)

    for name in ("write", "fsync", "replace", "ftruncate", "truncate", "unlink"):
        wrap(name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--block-records", type=int, default=64)
    ap.add_argument("--segment-bytes", type=int, default=16 << 10)
    ap.add_argument("--rewind", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10**9)
    ap.add_argument("--crash-after", type=int, default=0)
    ap.add_argument("--torn", action="store_true")
    args = ap.parse_args()
    from srpo.history import HistoryStore

    if args.crash_after:
        _install_failpoint(args.crash_after, args.torn)
    w = HistoryStore(
        args.root,
        store_tokens=True,
        block_records=args.block_records,
        segment_bytes=args.segment_bytes,
    )
    c = w.committed_step
    if args.rewind and c is not None:
        w.truncate_after(max(0, c - args.rewind))
    print(f"open {w.committed_step}", flush=True)
    start = 0 if w.committed_step is None else w.committed_step + 1
    for step in range(start, start + args.steps):
        rec = step_records(args.seed, step)
        tokens = rec.pop("tokens")
        half = len(tokens) // 2
        w.append(**{k: v[:half] for k, v in rec.items()}, tokens=tokens[:half])
        w.append(**{k: v[half:] for k, v in rec.items()}, tokens=tokens[half:])
        w.commit(step)
        print(step, flush=True)
    w.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
