"""The vectorized CPU kernels (csrc/grpo_cpu_rows.inc) and their helper-thread pool.

What test_ops_parity.py does not reach with its small batches: rows longer than one vector
(16 lanes) with a ragged tail, fully masked chunks in the middle of a row (skipped), rows of
every advantage sign (the per-row specialized loops), every ISA copy (SRPO_CPU_ISA caps the
run-time choice), the thread pool (results must not depend on the thread count, on concurrent
callers or on fork()), and the generic-row fallback for non-finite inputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

import srpo.ops as ops
from srpo.algo import STAT_NAMES, LossConfig, grpo_loss_reference

F64 = torch.float64
TOL = {  # as tests/test_ops_parity.py
    torch.float32: {"loss": 1e-5, "grad_rtol": 1e-4, "grad_atol": 1e-7},
    torch.bfloat16: {"loss": 1e-4, "grad_rtol": 8e-3, "grad_atol": 1e-6},
}


@pytest.fixture(scope="module", autouse=True)
def _compiled_available() -> None:
    assert ops.active_backend() != "reference", ops.backend_info()["errors"]


def long_batch(
    n: int = 96, t: int = 1037, seed: int = 0, dtype: torch.dtype = torch.float32, float_mask=False
) -> dict:
    """Groups of 8 with positive, negative and zero advantages; masks with holes."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (n,), generator=gen).double()
    rewards[:8] = 1.0  # a flat group: A = 0 rows
    old = -torch.rand(n, t, generator=gen) * 3
    logp = old + 0.4 * torch.randn(n, t, generator=gen)
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    mask[::3, 40:300] = False  # whole masked chunks between unmasked ones
    mask[1::5] &= torch.rand(n // 5 + (1 if n % 5 > 1 else 0), t, generator=gen) < 0.3
    if float_mask:
        mask = mask.float() * (0.5 + torch.rand(n, t, generator=gen))
    return {
        "rewards": rewards,
        "group_ids": torch.arange(n) // 8,
        "logp": logp.to(dtype),
        "old_logp": old.to(dtype),
        "mask": mask,
        "ref_logp": (old + 0.2 * torch.randn(n, t, generator=gen)).to(dtype),
    }


CFG = LossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, kl_coef=0.05, kl_estimator="k3")


def run(batch: dict, cfg: LossConfig, backend: str, as_f64: bool = False):
    b = dict(batch)
    if as_f64:
        b = {k: (v.to(F64) if v is not None and v.is_floating_point() else v) for k, v in b.items()}
    logp = b.pop("logp").detach().clone().requires_grad_()
    fn = grpo_loss_reference if backend == "reference" else ops.grpo_loss
    kw = {} if backend == "reference" else {"backend": backend}
    out = fn(logp=logp, cfg=cfg, **b, **kw)
    out.loss.backward()
    return out, logp.grad


def assert_matches_reference(batch: dict, cfg: LossConfig, dtype: torch.dtype) -> None:
    got, g_got = run(batch, cfg, "compiled")
    want, g_want = run(batch, cfg, "reference", as_f64=True)
    tol = TOL[dtype]
    torch.testing.assert_close(got.loss.double(), want.loss, rtol=tol["loss"], atol=1e-7)
    torch.testing.assert_close(g_got.double(), g_want, rtol=tol["grad_rtol"], atol=tol["grad_atol"])
    for k in STAT_NAMES:
        torch.testing.assert_close(
            got.stats[k].double(), want.stats[k].double(), rtol=1e-5, atol=1e-6, msg=k
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("float_mask", [False, True])
@pytest.mark.parametrize("kl", [None, "k1", "k2", "k3"])
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
    assert_matches_reference(batch, cfg, dtype)


@pytest.mark.parametrize("t", [1, 15, 16, 17, 33, 64])
def test_short_rows_around_the_vector_width(t: int) -> None:
    assert_matches_reference(long_batch(n=24, t=t, seed=t), CFG, torch.float32)


def _outputs(batch: dict, cfg: LossConfig = CFG) -> list[torch.Tensor]:
    out, grad = run(batch, cfg, "compiled")
    return [out.loss, grad, *out.stats.values()]


def test_thread_count_does_not_change_a_bit() -> None:
    batch = long_batch(n=200, t=1000, seed=3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = _outputs(batch)
        torch.set_num_threads(max(2, before))
        parallel = [_outputs(batch) for _ in range(3)]
    finally:
        torch.set_num_threads(before)
    for outs in parallel:
        for a, b in zip(serial, outs, strict=True):
            assert torch.equal(a, b)


def test_concurrent_callers() -> None:
    batches = [long_batch(n=64, t=700, seed=s) for s in range(4)]
    want = [_outputs(b) for b in batches]
    got: dict[int, list[torch.Tensor]] = {}

    def worker(k: int) -> None:
        for _ in range(3):
            got[k] = _outputs(batches[k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    for k in range(4):
        for a, b in zip(want[k], got[k], strict=True):
            assert torch.equal(a, b)


_ISA_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from test_ops_cpu_kernels import CFG, long_batch, run
    outs = {{}}
    for dtype in (torch.float32, torch.bfloat16):
        for fm in (False, True):
            out, grad = run(long_batch(n=48, t=531, seed=5, dtype=dtype, float_mask=fm), CFG,
                            "compiled")
            outs[(str(dtype), fm)] = [out.loss, grad, *out.stats.values()]
    torch.save(outs, sys.argv[1])
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="SRPO_CPU_ISA is read on x86-64 Linux")
def test_every_isa_copy_matches_reference(tmp_path: Path) -> None:
    """base (SSE2/NEON, 4 lanes), avx2 (8) and the best one (AVX-512 where present)."""
    script = tmp_path / "isa.py"
    script.write_text(_ISA_SCRIPT.format(tests=str(Path(__file__).parent)))
    results = {}
    for isa in ("base", "avx2", "best"):
        env = dict(os.environ, SRPO_CPU_ISA=isa)
        path = tmp_path / f"{isa}.pt"
        res = subprocess.run(
            [sys.executable, str(script), str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        results[isa] = torch.load(path)
    for dtype in (torch.float32, torch.bfloat16):
        for fm in (False, True):
            batch = long_batch(n=48, t=531, seed=5, dtype=dtype, float_mask=fm)
            want, g_want = run(batch, CFG, "reference", as_f64=True)
            tol = TOL[dtype]
            for isa, outs in results.items():
                loss, grad, *stats = outs[(str(dtype), fm)]
                msg = f"{isa} {dtype} float_mask={fm}"
                torch.testing.assert_close(
                    loss.double(), want.loss, rtol=tol["loss"], atol=1e-7, msg=msg
                )
                torch.testing.assert_close(
                    grad.double(),
                    g_want,
                    rtol=tol["grad_rtol"],
                    atol=tol["grad_atol"],
                    msg=msg,
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
    ns = ops._loader.ensure_loaded()
    args = (
        batch["rewards"],
        batch["group_ids"],
        batch["logp"],
        batch["old_logp"],
        batch["mask"],
        batch["ref_logp"],
        0.2,
        0.28,
        3.0,
        0.05,
        2,
        0,
        0.0,
        True,
        1e-6,
        1e-6,
        False,
    )
    stats_vec = getattr(torch.ops, ns).grpo_fwd(*args)[1]
    assert stats_vec[len(STAT_NAMES) :].tolist() == [0.0, 3.0, 1.0, 1.0]
    got, _ = run(batch, cfg, "compiled")
    want, _ = run(batch, cfg, "reference")
    torch.testing.assert_close(got.loss, want.loss, equal_nan=True)
    for k in STAT_NAMES:
        torch.testing.assert_close(got.stats[k], want.stats[k], equal_nan=True, msg=k)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_op_works_in_a_forked_child() -> None:
    """The helper threads do not survive fork(); the child must rebuild the pool, not hang.

    Tensors stay below ATen's parallel grain (32768 elements): torch's own OpenMP regions hang
    in a forked child (libgomp is not fork-safe), whatever srpo does. 128 x 200 still makes two
    row blocks for srpo's pool.
    """
    code = textwrap.dedent(
        f"""
        import os, sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_ops_cpu_kernels import CFG, long_batch, run
        torch.set_num_threads(2)
        b = long_batch(n=128, t=200, seed=1)
        want = run(b, CFG, "compiled")[0].loss.item()
        pid = os.fork()
        if pid == 0:
            ok = run(b, CFG, "compiled")[0].loss.item() == want
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        print("OK")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
