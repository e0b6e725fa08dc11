"""The compiled op (srpo.ops) against the float64 torch reference: loss, gradient, stats.

Tolerances (vs the reference run in float64 on the same input values):
  float64  rtol 1e-9             (same math, only summation order differs)
  float32  rtol 1e-5, grad 1e-4  (float32 accumulation, polynomial exp <= 2 ulp)
  bfloat16 rtol 1e-4, grad 8e-3  (float32 math; the gradient is rounded to bf16: 2^-8)
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import srpo.ops as ops
from srpo.algo import STAT_NAMES, LossConfig, grpo_loss_reference

F64 = torch.float64
TOL = {
    torch.float64: {"loss": 1e-9, "grad_rtol": 1e-9, "grad_atol": 1e-12},
    torch.float32: {"loss": 1e-5, "grad_rtol": 1e-4, "grad_atol": 1e-7},
    torch.bfloat16: {"loss": 1e-4, "grad_rtol": 8e-3, "grad_atol": 1e-6},
}


@pytest.fixture(scope="module", autouse=True)
def _compiled_available() -> None:
    backend = ops.active_backend()
    assert backend != "reference", f"compiled op did not load: {ops.backend_info()['errors']}"


def make_batch(
    n: int = 24,
    t: int = 33,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    with_ref: bool = True,
    float_mask: bool = False,
) -> dict:
    """Ragged masks, unequal groups with arbitrary ids, a flat group and a singleton."""
    gen = torch.Generator().manual_seed(seed)
    sizes, left = [], n
    while left > 0:
        s = min(left, int(torch.randint(1, 7, (1,), generator=gen)))
        sizes.append(s)
        left -= s
    ids = torch.cat(
        [
            torch.full((s,), int(torch.randint(-50, 50, (1,), generator=gen)) * 100 + k)
            for k, s in enumerate(sizes)
        ]
    )
    ids = ids[torch.randperm(n, generator=gen)]
    rewards = torch.randint(0, 3, (n,), generator=gen).float() + 0.1 * torch.randn(n, generator=gen)
    rewards[ids == ids[0]] = 1.0  # one flat group
    old = -torch.rand(n, t, generator=gen) * 3
    logp = old + 0.3 * torch.randn(n, t, generator=gen)
    ref = old + 0.2 * torch.randn(n, t, generator=gen)
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    lengths[1] = 0  # a fully-masked row
    mask = torch.arange(t)[None, :] < lengths[:, None]
    if float_mask:
        mask = mask.float() * (0.5 + torch.rand(n, t, generator=gen))
    return {
        "rewards": rewards,
        "group_ids": ids.to(torch.int32),
        "logp": logp.to(dtype),
        "old_logp": old.to(dtype),
        "mask": mask,
        "ref_logp": ref.to(dtype) if with_ref else None,
    }


def run(batch: dict, cfg: LossConfig, backend: str, as_f64: bool = False):
    b = dict(batch)
    if as_f64:
        b = {k: (v.to(F64) if v is not None and v.is_floating_point() else v) for k, v in b.items()}
    logp = b.pop("logp").detach().clone().requires_grad_()
    if backend == "reference":
        out = grpo_loss_reference(logp=logp, cfg=cfg, **b)
    else:
        out = ops.grpo_loss(logp=logp, cfg=cfg, backend=backend, **b)
    out.loss.backward()
    return out, logp.grad


def assert_parity(batch: dict, cfg: LossConfig, dtype: torch.dtype) -> None:
    got, g_got = run(batch, cfg, "compiled")
    want, g_want = run(batch, cfg, "reference", as_f64=True)
    tol = TOL[dtype]
    assert got.loss.dtype == (F64 if dtype == F64 else torch.float32)
    assert g_got.dtype == dtype and g_got.shape == batch["logp"].shape
    torch.testing.assert_close(got.loss.double(), want.loss, rtol=tol["loss"], atol=1e-7)
    torch.testing.assert_close(g_got.double(), g_want, rtol=tol["grad_rtol"], atol=tol["grad_atol"])
    assert set(got.stats) == set(STAT_NAMES) == set(want.stats)
    for k in STAT_NAMES:
        torch.testing.assert_close(
            got.stats[k].double(), want.stats[k].double(), rtol=1e-5, atol=1e-6, msg=k
        )


COMBOS = list(
    itertools.product(
        [True, False],  # std_normalize
        ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"],
        [None, 3.0],  # dual clip
        [None, "k1", "k2", "k3"],  # kl
        [(0.2, 0.2), (0.2, 0.28)],  # clip (low, high)
    )
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("std", "agg", "dual", "kl", "clip"), COMBOS)
def test_parity_all_options(dtype, std, agg, dual, kl, clip) -> None:
    cfg = LossConfig(
        clip_low=clip[0],
        clip_high=clip[1],
        dual_clip=dual,
        kl_coef=0.05 if kl else 0.0,
        kl_estimator=kl or "k3",
        aggregation=agg,
        norm_constant=16.0 if agg == "seq-mean-token-sum-norm" and std else None,
        std_normalize=std,
    )
    batch = make_batch(seed=hash((std, agg, dual, kl, clip)) % 1000, dtype=dtype, with_ref=bool(kl))
    assert_parity(batch, cfg, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("float_mask", [False, True])
def test_parity_dtypes_masks_and_ref_without_kl(dtype, float_mask) -> None:
    batch = make_batch(n=40, t=70, seed=3, dtype=dtype, float_mask=float_mask)
    assert_parity(batch, LossConfig(dual_clip=2.0), dtype)  # ref given, kl_coef 0: stat only


def test_gradcheck_float64() -> None:
    batch = make_batch(n=7, t=5, seed=11, dtype=F64)
    batch.pop("logp")
    cfg = LossConfig(dual_clip=3.0, kl_coef=0.1, aggregation="seq-mean-token-mean")
    logp = (batch["old_logp"] + 0.25 * torch.randn(7, 5, dtype=F64)).requires_grad_()

    def f(x: torch.Tensor) -> torch.Tensor:
        return ops.grpo_loss(logp=x, cfg=cfg, backend="compiled", **batch).loss

    assert torch.autograd.gradcheck(f, (logp,), eps=1e-6, atol=1e-7)


def test_opcheck() -> None:
    b = make_batch(n=6, t=4, seed=5)
    ns = ops._loader.ensure_loaded()
    args = (
        b["rewards"],
        b["group_ids"],
        b["logp"].requires_grad_(),
        b["old_logp"],
        b["mask"],
        b["ref_logp"],
        0.2,
        0.28,
        3.0,
        0.1,
        3,
        0,
        0.0,
        True,
        1e-6,
        1e-6,
        True,
    )
    torch.library.opcheck(getattr(torch.ops, ns).grpo_fwd, args)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 20),
    t=st.integers(0, 40),
    n_groups=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
    reward_kind=st.sampled_from(["binary", "float", "const"]),
    mask_p=st.floats(0.0, 1.0),
    agg=st.sampled_from(["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]),
    std=st.booleans(),
    dual=st.sampled_from([None, 1.5, 4.0]),
    kl=st.sampled_from([None, "k1", "k2", "k3"]),
)
def test_property_random_layouts(n, t, n_groups, seed, reward_kind, mask_p, agg, std, dual, kl):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(-(10**9), 10**9, (n_groups,), generator=gen)[
        torch.randint(0, n_groups, (n,), generator=gen)
    ]
    if reward_kind == "binary":
        rewards = torch.randint(0, 2, (n,), generator=gen).to(F64)
    elif reward_kind == "float":
        rewards = torch.randn(n, generator=gen, dtype=F64)
    else:
        rewards = torch.full((n,), 0.7, dtype=F64)
    old = -torch.rand(n, t, generator=gen, dtype=F64) * 4
    batch = {
        "rewards": rewards,
        "group_ids": ids,
        "logp": old + 0.5 * torch.randn(n, t, generator=gen, dtype=F64),
        "old_logp": old,
        "mask": torch.rand(n, t, generator=gen) < mask_p,
        "ref_logp": (old + 0.3 * torch.randn(n, t, generator=gen, dtype=F64)) if kl else None,
    }
    cfg = LossConfig(
        dual_clip=dual,
        kl_coef=0.1 if kl else 0.0,
        kl_estimator=kl or "k3",
        aggregation=agg,
        std_normalize=std,
    )
    got, g_got = run(batch, cfg, "compiled")
    want, g_want = run(batch, cfg, "reference")
    assert torch.isfinite(got.loss) and torch.isfinite(g_got).all()
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-12)
    for k in STAT_NAMES:
        torch.testing.assert_close(got.stats[k], want.stats[k], rtol=1e-9, atol=1e-12, msg=k)


def test_advantage_nasty_cases_match_reference() -> None:
    rewards = torch.tensor([1.0, 1.0 + 1e-9, 1.0 - 1e-9, 3.0, 5.0, 5.0, 5.0, 0.0, 1.0])
    ids = torch.tensor([4, 4, 4, 9, 2, 2, 2, 8, 8], dtype=torch.uint8)
    t = 6
    logp = torch.full((9, t), -1.0)
    batch = {
        "rewards": rewards.double(),
        "group_ids": ids,
        "logp": logp.double(),
        "old_logp": logp.double() - 0.1,
        "mask": torch.ones(9, t, dtype=torch.bool),
    }
    got, _ = run(batch, LossConfig(), "compiled")
    want, _ = run(batch, LossConfig(), "reference")
    assert got.stats["zero_adv_group_frac"].item() == pytest.approx(3 / 4)
    torch.testing.assert_close(got.stats["adv_abs_mean"], want.stats["adv_abs_mean"])
    torch.testing.assert_close(got.loss, want.loss)


def test_empty_batch_and_zero_length() -> None:
    for n, t in [(0, 8), (0, 0), (3, 0)]:
        logp = torch.zeros(n, t, requires_grad=True)
        out = ops.grpo_loss(
            torch.zeros(n),
            torch.zeros(n, dtype=torch.long),
            logp,
            torch.zeros(n, t),
            torch.ones(n, t, dtype=torch.bool),
            backend="compiled",
        )
        out.loss.backward()
        assert out.loss.item() == 0.0 and logp.grad.shape == (n, t)
        assert all(torch.isfinite(v) for v in out.stats.values())


def test_nonfinite_masked_ignored_unmasked_raise() -> None:
    b = make_batch(n=8, t=10, seed=2)
    b["mask"][:, 7:] = False
    b["logp"][:, 8] = float("nan")
    b["old_logp"][:, 9] = float("inf")
    b["ref_logp"][:, 7] = float("-inf")
    got, g = run(b, LossConfig(kl_coef=0.1), "compiled")
    want, _g_ref = run(b, LossConfig(kl_coef=0.1), "reference", as_f64=True)
    assert torch.isfinite(got.loss) and torch.isfinite(g).all() and (g[:, 7:] == 0).all()
    torch.testing.assert_close(got.loss.double(), want.loss, rtol=1e-5, atol=1e-7)
    for name in ("logp", "old_logp", "ref_logp"):
        bad = make_batch(n=8, t=10, seed=2)
        bad["mask"][0, 0] = True
        bad[name][0, 0] = float("nan")
        with pytest.raises(ValueError, match=name):
            run(bad, LossConfig(kl_coef=0.1), "compiled")
    bad = make_batch(n=8, t=10, seed=2)
    bad["rewards"][3] = float("inf")
    with pytest.raises(ValueError, match="rewards"):
        run(bad, LossConfig(), "compiled")
    # check_finite=False: no host read; NaN propagates to the loss instead
    bad = make_batch(n=8, t=10, seed=2)
    bad["mask"][0, 0] = True
    bad["logp"][0, 0] = float("nan")
    out, _ = run(bad, LossConfig(check_finite=False), "compiled")
    assert not torch.isfinite(out.loss)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"old_logp": torch.zeros(3, 4)}, "old_logp"),
        ({"old_logp": torch.zeros(3, 2, dtype=torch.bfloat16)}, "old_logp"),
        ({"ref_logp": torch.zeros(3, 2, device="meta")}, "ref_logp"),
        ({"group_ids": torch.zeros(3, dtype=torch.float32)}, "group_ids"),
        ({"rewards": torch.zeros(3, 1)}, "rewards"),
        ({"mask": torch.ones(3, 2, dtype=torch.uint8)}, "mask"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = {
        "rewards": torch.zeros(3),
        "group_ids": torch.zeros(3, dtype=torch.long),
        "logp": torch.zeros(3, 2),
        "old_logp": torch.zeros(3, 2),
        "mask": torch.ones(3, 2, dtype=torch.bool),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ops.grpo_loss(**args, backend="compiled")
    with pytest.raises(ValueError, match="backend"):
        ops.grpo_loss(**dict(args, **{"old_logp": torch.zeros(3, 2)}), backend="fast")


def test_no_grad_and_non_contiguous_inputs() -> None:
    b = make_batch(n=10, t=12, seed=9)
    want, _ = run(b, LossConfig(), "reference", as_f64=True)
    nc = {
        k: (v.t().contiguous().t() if v is not None and v.dim() == 2 else v) for k, v in b.items()
    }
    with torch.no_grad():
        got = ops.grpo_loss(**nc, backend="compiled")
    torch.testing.assert_close(got.loss.double(), want.loss, rtol=1e-5, atol=1e-7)


def test_backward_scales_with_upstream_gradient() -> None:
    b = make_batch(n=10, t=12, seed=4)
    logp = b.pop("logp").requires_grad_()
    out = ops.grpo_loss(logp=logp, **b, backend="compiled")
    (3.0 * out.loss).backward()
    g3 = logp.grad.clone()
    logp.grad = None
    ops.grpo_loss(logp=logp, **b, backend="compiled").loss.backward()
    torch.testing.assert_close(g3, 3.0 * logp.grad)


def test_reference_backend_matches_and_compile() -> None:
    b = make_batch(n=16, t=20, seed=7)
    cfg = LossConfig(kl_coef=0.05, dual_clip=3.0)
    ref_out, g_ref = run(b, cfg, "reference")
    auto_out, g_auto = run(b, cfg, "auto")
    torch.testing.assert_close(auto_out.loss, ref_out.loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_auto, g_ref, rtol=1e-4, atol=1e-7)

    def step(logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = ops.grpo_loss(
            b["rewards"], b["group_ids"], logp, b["old_logp"], b["mask"], b["ref_logp"], cfg
        )
        return out.loss * 2.0, out.stats["clip_frac_high"]

    compiled = torch.compile(step, fullgraph=False, backend="aot_eager")
    logp = b["logp"].clone().requires_grad_()
    loss, clip = compiled(logp)
    loss.backward()
    torch.testing.assert_close(loss, 2.0 * ref_out.loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logp.grad, 2.0 * g_ref, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(clip, ref_out.stats["clip_frac_high"])


def test_fallback_to_reference_warns_once() -> None:
    code = (
        "import warnings, torch, srpo.ops as ops\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    x = torch.zeros(2, 3, requires_grad=True)\n"
        "    for _ in range(3):\n"
        "        out = ops.grpo_loss(torch.tensor([0., 1.]), torch.zeros(2, dtype=torch.long),"
        " x, x.detach() - 0.1, torch.ones(2, 3, dtype=torch.bool))\n"
        "    assert ops.active_backend() == 'reference', ops.active_backend()\n"
        "    n = sum('unavailable' in str(m.message) for m in w)\n"
        "    assert n == 1, [str(m.message) for m in w]\n"
        "try:\n"
        "    ops.grpo_loss(torch.tensor([0., 1.]), torch.zeros(2, dtype=torch.long), x,"
        " x.detach(), torch.ones(2, 3, dtype=torch.bool), backend='compiled')\n"
        "except RuntimeError as e:\n"
        "    assert 'unavailable' in str(e)\n"
        "else:\n"
        "    raise SystemExit('compiled backend should have raised')\n"
        "print('OK', out.loss.item())\n"
    )
    env = dict(os.environ, SRPO_OPS_NO_PREBUILT="1", SRPO_OPS_NO_JIT="1")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout


def test_backend_info() -> None:
    info = ops.backend_info()
    assert info["backend"] == ops.active_backend()
    assert info["backend"] in ("compiled-cpu", "compiled-cuda", "jit-cpu", "jit-cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.active_backend()  # loaded backend: no new warnings
