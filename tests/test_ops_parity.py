"""The compiled op (srpo.ops) against the float64 torch reference, on every device.

Cases, tolerances and the comparison live in tests/support/ops.py; every test here is
parametrized by device (CUDA cases are marked ``cuda`` and skip without a GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import srpo.ops as ops
from srpo.algo import AGGREGATIONS, KL_ESTIMATORS, STAT_NAMES, LossConfig
from tests.support.ops import (
    DEVICES,
    F64,
    NASTY_CASES,
    OPTION_CASES,
    WEIGHTED_CASES,
    OpCase,
    assert_matches_reference,
    case_params,
    make_batch,
    require_compiled,
    run,
    to_device,
    with_weights,
)


def _op():
    return getattr(torch.ops, ops._loader.ensure_loaded()).grpo_fwd


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("case", "dtype"), case_params(NASTY_CASES))
def test_nasty_cases(device: str, case: OpCase, dtype: torch.dtype) -> None:
    require_compiled(device)
    assert_matches_reference(case.build(dtype), case.cfg, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("case", "dtype"), case_params(OPTION_CASES))
def test_every_option_combination(device: str, case: OpCase, dtype: torch.dtype) -> None:
    require_compiled(device)
    assert_matches_reference(case.build(dtype), case.cfg, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("case", "dtype"), case_params(WEIGHTED_CASES))
def test_weighted_cases(device: str, case: OpCase, dtype: torch.dtype) -> None:
    """Rollout-correction weights (every mode) on the nasty cases and part of the grid."""
    require_compiled(device)
    assert_matches_reference(case.build(dtype), case.cfg, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["token_tis", "seq_mis", "icepop"])
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_gradcheck_float64_weighted(device: str, mode: str, agg: str) -> None:
    require_compiled(device)
    batch = with_weights(make_batch(n=7, t=5, seed=13, dtype=F64), mode, seed=3)
    batch["token_weight"] = batch["token_weight"].nan_to_num(0.0)  # gradcheck perturbs all
    batch = to_device(batch, device)
    batch.pop("logp")
    cfg = LossConfig(dual_clip=3.0, kl_coef=0.1, aggregation=agg)
    gen = torch.Generator().manual_seed(14)
    noise = 0.25 * torch.randn(7, 5, generator=gen, dtype=F64)
    logp = (batch["old_logp"] + noise.to(device)).requires_grad_()

    def f(x: torch.Tensor) -> torch.Tensor:
        return ops.grpo_loss(logp=x, cfg=cfg, backend="compiled", **batch).loss

    assert torch.autograd.gradcheck(f, (logp,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.bfloat16])
def test_unit_weight_is_no_weight_exactly(device: str, dtype: torch.dtype) -> None:
    """All-ones weights give bit-for-bit the unweighted loss, gradient and stats."""
    require_compiled(device)
    cfg = LossConfig(kl_coef=0.05, dual_clip=3.0, clip_high=0.28)
    for b in (make_batch(n=40, t=70, seed=3, dtype=dtype), make_batch(seed=8, dtype=dtype)):
        ones = torch.ones(b["logp"].shape, dtype=F64 if dtype == F64 else torch.float32)
        plain, g_plain = run(b, cfg, "compiled", device)
        unit, g_unit = run({**b, "token_weight": ones}, cfg, "compiled", device)
        assert torch.equal(plain.loss, unit.loss)
        assert torch.equal(g_plain, g_unit)
        for k in STAT_NAMES:
            assert torch.equal(plain.stats[k], unit.stats[k]), k


@pytest.mark.parametrize("device", DEVICES)
def test_weight_scales_only_the_surrogate(device: str) -> None:
    """Zero weights leave exactly the KL term (and its gradient), with the same denominators."""
    require_compiled(device)
    b = make_batch(n=16, t=20, seed=7, dtype=F64)
    cfg = LossConfig(kl_coef=0.1, kl_estimator="k3")
    zero = torch.zeros(b["logp"].shape, dtype=F64)
    out, grad = run({**b, "token_weight": zero}, cfg, "compiled", device)
    on = b["mask"]
    x = b["logp"]
    d = b["ref_logp"] - x
    k3 = torch.where(on, torch.exp(d) - d - 1.0, 0.0)
    want = 0.1 * k3.sum() / on.sum()
    torch.testing.assert_close(out.loss.cpu(), want, rtol=1e-12, atol=1e-14)
    want_grad = torch.where(on, 0.1 * (1.0 - torch.exp(d)) / on.sum(), 0.0)
    torch.testing.assert_close(grad.cpu(), want_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_weight_raises(device: str) -> None:
    require_compiled(device)
    b = make_batch(n=10, t=12, seed=9)
    w = torch.ones(10, 12)
    w[~b["mask"]] = float("nan")  # ignored
    run({**b, "token_weight": w}, LossConfig(), "compiled", device)
    i, j = b["mask"].nonzero()[0].tolist()
    w[i, j] = float("inf")
    with pytest.raises(ValueError, match=r"token_weight \(1\)"):
        run({**b, "token_weight": w}, LossConfig(), "compiled", device)
    with pytest.raises(ValueError, match="token_weight has 1 non-finite"):
        run({**b, "token_weight": w}, LossConfig(), "reference", device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kl", KL_ESTIMATORS)
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_gradcheck_float64(device: str, kl: str, agg: str) -> None:
    require_compiled(device)
    batch = to_device(make_batch(n=7, t=5, seed=11, dtype=F64), device)
    batch.pop("logp")
    cfg = LossConfig(dual_clip=3.0, kl_coef=0.1, kl_estimator=kl, aggregation=agg)
    gen = torch.Generator().manual_seed(12)
    noise = 0.25 * torch.randn(7, 5, generator=gen, dtype=F64)
    logp = (batch["old_logp"] + noise.to(device)).requires_grad_()

    def f(x: torch.Tensor) -> torch.Tensor:
        return ops.grpo_loss(logp=x, cfg=cfg, backend="compiled", **batch).loss

    assert torch.autograd.gradcheck(f, (logp,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device: str) -> None:
    require_compiled(device)
    b = to_device(make_batch(n=6, t=4, seed=5), device)
    args = (b["rewards"], b["group_ids"], b["logp"].requires_grad_(), b["old_logp"], b["mask"])
    kwargs = ops.op_options(LossConfig(clip_high=0.28, dual_clip=3.0, kl_coef=0.1))
    torch.library.opcheck(_op(), (*args, b["ref_logp"]), {**kwargs, "need_grad": True})
    torch.library.opcheck(_op(), args, {"aggregation": "seq-mean-token-sum-norm"})
    w = torch.rand(b["logp"].shape, device=b["logp"].device) * 2
    torch.library.opcheck(_op(), (*args, b["ref_logp"], w), {**kwargs, "need_grad": True})
    torch.library.opcheck(_op(), (*args, None, w), {"clip_high": 0.28})


def test_schema_defaults_are_loss_config_defaults() -> None:
    """The op's keyword defaults (csrc/bindings.cpp) must be LossConfig's (srpo.algo)."""
    require_compiled("cpu")
    schema = _op().default._schema
    defaults = {
        a.name: a.default_value for a in schema.arguments if a.kwarg_only and a.has_default_value()
    }
    assert defaults.pop("need_grad") is True
    assert defaults.pop("denominator") is None  # the micro-batch pass's; not a LossConfig field
    assert defaults == ops.op_options(LossConfig())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kl_estimator": "k4"}, "kl_estimator must be one of k1, k2, k3"),
        ({"aggregation": "token-sum"}, "aggregation must be one of token-mean"),
        ({"dual_clip": 1.0}, "dual_clip"),
        ({"norm_constant": 0.0}, "norm_constant"),
        ({"clip_low": 1.0}, "clip_low"),
        ({"kl_coef": -0.1}, "kl_coef"),
    ],
)
def test_op_rejects_bad_options(kwargs: dict, match: str) -> None:
    require_compiled("cpu")
    b = make_batch(n=4, t=3, seed=1)
    with pytest.raises(ValueError, match=match):
        _op()(b["rewards"], b["group_ids"], b["logp"], b["old_logp"], b["mask"], **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 20),
    t=st.integers(0, 40),
    n_groups=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
    reward_kind=st.sampled_from(["binary", "float", "const"]),
    mask_p=st.floats(0.0, 1.0),
    agg=st.sampled_from(AGGREGATIONS),
    std=st.booleans(),
    dual=st.sampled_from([None, 1.5, 4.0]),
    kl=st.sampled_from([None, *KL_ESTIMATORS]),
)
def test_property_random_layouts(
    device, n, t, n_groups, seed, reward_kind, mask_p, agg, std, dual, kl
):
    require_compiled(device)
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
    assert_matches_reference(batch, cfg, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["logp", "old_logp", "ref_logp", "rewards"])
def test_nonfinite_unmasked_raise(device: str, name: str) -> None:
    require_compiled(device)
    bad = make_batch(n=8, t=10, seed=2)
    if name == "rewards":
        bad["rewards"][3] = float("inf")
    else:
        bad["mask"][0, 0] = True
        bad[name][0, 0] = float("nan")
    with pytest.raises(ValueError, match=name):
        run(bad, LossConfig(kl_coef=0.1), "compiled", device)


@pytest.mark.parametrize("device", DEVICES)
def test_check_finite_off_propagates_nan(device: str) -> None:
    """check_finite=False: no host read; NaN reaches the loss instead of an error."""
    require_compiled(device)
    bad = make_batch(n=8, t=10, seed=2)
    bad["mask"][0, 0] = True
    bad["logp"][0, 0] = float("nan")
    out, _ = run(bad, LossConfig(check_finite=False), "compiled", device)
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


@pytest.mark.parametrize("device", DEVICES)
def test_no_grad_and_non_contiguous_inputs(device: str) -> None:
    require_compiled(device)
    b = make_batch(n=10, t=12, seed=9)
    want, _ = run(b, LossConfig(), "reference", as_f64=True)
    nc = {
        k: (v.t().contiguous().t() if v is not None and v.dim() == 2 else v)
        for k, v in to_device(b, device).items()
    }
    with torch.no_grad():
        got = ops.grpo_loss(**nc, backend="compiled")
    torch.testing.assert_close(got.loss.double().cpu(), want.loss, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_scales_with_upstream_gradient(device: str) -> None:
    require_compiled(device)
    b = to_device(make_batch(n=10, t=12, seed=4), device)
    logp = b.pop("logp").requires_grad_()
    out = ops.grpo_loss(logp=logp, **b, backend="compiled")
    (3.0 * out.loss).backward()
    g3 = logp.grad.clone()
    logp.grad = None
    ops.grpo_loss(logp=logp, **b, backend="compiled").loss.backward()
    torch.testing.assert_close(g3, 3.0 * logp.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_reference_backend_matches_and_compile(device: str) -> None:
    require_compiled(device)
    b = to_device(make_batch(n=16, t=20, seed=7), device)
    cfg = LossConfig(kl_coef=0.05, dual_clip=3.0)
    ref_out, g_ref = run(b, cfg, "reference", device)
    auto_out, g_auto = run(b, cfg, "auto", device)
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
    ns = ops._loader.ensure_loaded()
    assert info["abi_version"] == int(getattr(torch.ops, ns).abi_version())
    assert len(STAT_NAMES) + 5 == ops._autograd.NUM_STATS  # + the non-finite counters
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.active_backend()  # loaded backend: no new warnings
