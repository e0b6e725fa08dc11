"""The vectorized CPU kernels (csrc/grpo_cpu_rows.inc) and their helper-thread pool.

What the device-parametrized parity cases (tests/test_ops_parity.py) do not reach: every ISA
copy (SRPO_CPU_ISA caps the run-time choice, read once per process, so each copy runs in a
child process), rows of every advantage sign and length around the vector width, the thread
pool (results must not depend on the thread count, on concurrent callers or on fork()), and
the generic-row fallback for non-finite inputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import srpo.ops as ops
from srpo.algo import KL_ESTIMATORS, STAT_NAMES, LossConfig
from tests.support.ops import (
    BF16,
    F32,
    ISA_BATCHES,
    ISA_CFG,
    TOL,
    assert_matches_reference,
    isa_batch,
    long_batch,
    outputs,
    require_compiled,
    run,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _compiled_available() -> None:
    require_compiled("cpu")


@pytest.mark.parametrize("dtype", [F32, BF16])
@pytest.mark.parametrize("float_mask", [False, True])
@pytest.mark.parametrize("kl", [None, *KL_ESTIMATORS])
def test_long_ragged_rows_match_reference(dtype, float_mask, kl) -> None:
    batch = long_batch(dtype=dtype, float_mask=float_mask, seed=len(str(kl)))
    cfg = LossConfig(
        clip_low=0.2,
        clip_high=0.28,
        dual_clip=3.0,
        kl_coef=0.05 if kl else 0.0,
        kl_estimator=kl or "k3",
        aggregation="seq-mean-token-mean",
    )
    if kl is None:
        batch["ref_logp"] = None
    assert_matches_reference(batch, cfg)


@pytest.mark.parametrize("t", [1, 15, 16, 17, 33, 64])
def test_short_rows_around_the_vector_width(t: int) -> None:
    assert_matches_reference(long_batch(n=24, t=t, seed=t), ISA_CFG)


def test_thread_count_does_not_change_a_bit() -> None:
    batch = long_batch(n=200, t=1000, seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = outputs(batch, ISA_CFG)
        torch.set_num_threads(max(2, before))
        parallel = [outputs(batch, ISA_CFG) for _ in range(3)]
    finally:
        torch.set_num_threads(before)
    for outs in parallel:
        for a, b in zip(serial, outs, strict=True):
            assert torch.equal(a, b)


def test_concurrent_callers() -> None:
    batches = [long_batch(n=64, t=700, seed=s) for s in range(4)]
    want = [outputs(b, ISA_CFG) for b in batches]
    got: dict[int, list[torch.Tensor]] = {}

    def worker(k: int) -> None:
        for _ in range(3):
            got[k] = outputs(batches[k], ISA_CFG)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    for k in range(4):
        for a, b in zip(want[k], got[k], strict=True):
            assert torch.equal(a, b)


def _child(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m tests.support.ops ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "tests.support.ops", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.skipif(sys.platform != "linux", reason="SRPO_CPU_ISA is read on x86-64 Linux")
def test_every_isa_copy_matches_reference(tmp_path: Path) -> None:
    """base (SSE2/NEON, 4 lanes), avx2 (8) and the best one (AVX-512 where present)."""
    results = {}
    for isa in ("base", "avx2", "best"):
        path = tmp_path / f"{isa}.pt"
        res = _child("isa-outputs", str(path), env=dict(os.environ, SRPO_CPU_ISA=isa))
        assert res.returncode == 0, res.stderr[-3000:]
        results[isa] = torch.load(path)
    for key in ISA_BATCHES:
        batch = isa_batch(key)
        want, g_want = run(batch, ISA_CFG, "reference", as_f64=True)
        tol = TOL[batch["logp"].dtype]
        for isa, outs in results.items():
            loss, grad, *stats = outs[key]
            msg = f"{isa} {key}"
            torch.testing.assert_close(
                loss.double(), want.loss, rtol=tol["loss"], atol=1e-7, msg=msg
            )
            torch.testing.assert_close(
                grad.double(), g_want, rtol=tol["grad_rtol"], atol=tol["grad_atol"], msg=msg
            )
            for k, v in zip(STAT_NAMES, stats, strict=True):
                torch.testing.assert_close(
                    v.double(), want.stats[k].double(), rtol=1e-5, atol=1e-6, msg=msg + k
                )


def test_nonfinite_rows_take_the_generic_path() -> None:
    """Non-finite values at mask != 0 in rows of every sign: exact per-input counts, and (with
    check_finite=False) the same loss/stats as the reference, NaN where it has NaN."""
    batch = long_batch(n=24, t=70, seed=8)
    batch["mask"][:] = True
    batch["logp"][0, 3] = float("inf")  # rows 0..7: A = 0 (flat group)
    batch["old_logp"][9, 20] = float("-inf")
    batch["logp"][10, 50] = float("nan")
    batch["ref_logp"][17, 69] = float("inf")
    batch["logp"][18, 0] = -float("inf")
    cfg = LossConfig(
        dual_clip=3.0, kl_coef=0.05, kl_estimator="k2", check_finite=False, clip_high=0.28
    )
    op = getattr(torch.ops, ops._loader.ensure_loaded()).grpo_fwd
    stats_vec = op(
        batch["rewards"],
        batch["group_ids"],
        batch["logp"],
        batch["old_logp"],
        batch["mask"],
        batch["ref_logp"],
        **ops.op_options(cfg),
        need_grad=False,
    )[1]
    assert stats_vec[len(STAT_NAMES) :].tolist() == [0.0, 3.0, 1.0, 1.0, 0.0]
    got, _ = run(batch, cfg, "compiled")
    want, _ = run(batch, cfg, "reference")
    torch.testing.assert_close(got.loss, want.loss, equal_nan=True)
    for k in STAT_NAMES:
        torch.testing.assert_close(got.stats[k], want.stats[k], equal_nan=True, msg=k)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_op_works_in_a_forked_child() -> None:
    """The helper threads do not survive fork(); the child must rebuild the pool, not hang."""
    res = _child("fork-check")
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
