"""The fused linear log-prob op (srpo.ops.linear_logprobs) against eager torch.

The compiled op is what is checked (``backend="compiled"``): float32 parity with the eager
``log_softmax(h @ W.T / T).gather`` computed in float64 (and in float32), gradients against
eager autograd, float64 gradcheck (the op runs float64 natively), and edge shapes. Small
``chunk_n``/``chunk_v`` force many blocks and ragged last blocks on tiny inputs.
CUDA cases are marked ``cuda`` (skipped without a GPU); the .cu file's nvcc compile is checked
here too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import srpo.ops as ops
from srpo.ops import linear_logprobs, linear_logprobs_reference

CSRC = Path(__file__).resolve().parents[1] / "csrc"
F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
LOGP_TOL = {"rtol": 1e-5, "atol": 1e-6}
F32_EPS = torch.finfo(F32).eps


def logp_tol(hidden: torch.Tensor, weight: torch.Tensor, t: float) -> dict[str, float]:
    """Forward tolerance float32 can honestly promise: logp = x_target - logsumexp(x) is a
    difference of terms of size |x|, and a float32 x = h . w / T carries a rounding error
    relative to sum_k |h_k w_k| / T (the matmul's own bound), not to the small result. An
    absolute 1e-6 fails for logits of ~5 (one ulp is 4.8e-7), as CI found with v=1."""
    scale = (
        (hidden.double().abs() @ weight.double().abs().T).max().item() / t
        if hidden.numel()
        else 0.0
    )
    return {"rtol": LOGP_TOL["rtol"], "atol": max(LOGP_TOL["atol"], 8 * F32_EPS * scale)}


GRAD_TOL = {"rtol": 1e-4, "atol": 1e-6}

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]


def require_compiled(device: str) -> str:
    """The op namespace; fails if the compiled op did not load (this is what is under test)."""
    ns = ops._loader.ensure_loaded()
    assert ns is not None, ops.backend_info()["errors"]
    assert hasattr(getattr(torch.ops, ns), "linear_logprob_fwd"), "stale build: reinstall"
    if device == "cuda" and not ops.backend_info()["cuda_kernels"]:
        pytest.skip("no CUDA kernels in this build")
    return ns


def make_inputs(
    n: int, h: int, v: int, seed: int = 0, dtype: torch.dtype = F32, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of order 1-10 (like a trained LM head) so the softmax is neither flat nor one-hot."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=F64)
    weight = torch.randn(v, h, generator=gen, dtype=F64) * (3.0 / max(h, 1) ** 0.5)
    targets = torch.randint(0, v, (n,), generator=gen)
    return hidden.to(dtype).to(device), weight.to(dtype).to(device), targets.to(device)


def eager(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, t: float, dtype=F64
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unfused formulation, in ``dtype``."""
    logits = hidden.to(dtype) @ weight.to(dtype).T
    logprobs = torch.log_softmax(logits / t, dim=-1)
    logp = logprobs.gather(1, targets[:, None]).squeeze(1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logp, entropy


def check_parity(hidden, weight, targets, t: float, **chunks: int) -> None:
    """Forward (logp, entropy) and both gradients of the compiled op vs float64 eager."""
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    logp, ent = linear_logprobs(h, w, targets, t, True, backend="compiled", **chunks)
    h64 = hidden.detach().to(F64).requires_grad_()
    w64 = weight.detach().to(F64).requires_grad_()
    ref_logp, ref_ent = eager(h64, w64, targets, t)
    acc = F64 if hidden.dtype == F64 else F32
    assert logp.dtype == acc and ent.dtype == acc and not ent.requires_grad
    tol = logp_tol(hidden, weight, t) if hidden.dtype != F64 else LOGP_TOL
    torch.testing.assert_close(logp.double(), ref_logp.detach(), **tol)
    torch.testing.assert_close(ent.double(), ref_ent.detach(), **tol)
    if hidden.shape[0] == 0:
        return
    # A non-uniform upstream gradient, so per-token scaling is checked too.
    g = torch.linspace(-1.0, 2.0, hidden.shape[0], dtype=F64, device=hidden.device)
    (logp.double() * g).sum().backward()
    (ref_logp * g).sum().backward()
    # grad_hidden = g/T (W[target] - E_p[W]) cancels when p(target) ~ 1: float32 rounding is
    # relative to the terms' scale g/T * |W| (|h| for grad_weight), not to the difference.
    scale = g.abs().max().item() / t
    rtol, eps = (GRAD_TOL["rtol"], 2e-6) if hidden.dtype != BF16 else (2e-2, 8e-3)
    for got, ref, other in ((h.grad, h64.grad, w64), (w.grad, w64.grad, h64)):
        atol = eps * scale * max(other.detach().abs().max().item(), 1.0)
        torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=atol)
    assert h.grad.dtype == hidden.dtype and w.grad.dtype == weight.dtype


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
@pytest.mark.parametrize(
    "chunks", [{}, {"chunk_n": 8, "chunk_v": 128}, {"chunk_n": 1, "chunk_v": 1}]
)
def test_parity_float32(device: str, temperature: float, chunks: dict) -> None:
    require_compiled(device)
    # N = 37 and V = 1000 are multiples of neither chunk size.
    check_parity(*make_inputs(37, 24, 1000, seed=1, device=device), temperature, **chunks)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_float32_eager(device: str) -> None:
    """Also against the literal float32 formulation the op replaces."""
    require_compiled(device)
    hidden, weight, targets = make_inputs(64, 32, 3000, seed=2, device=device)
    logp, ent = linear_logprobs(hidden, weight, targets, 0.9, True, backend="compiled")
    ref_logp, ref_ent = eager(hidden, weight, targets, 0.9, dtype=F32)
    torch.testing.assert_close(logp, ref_logp, **LOGP_TOL)
    torch.testing.assert_close(ent, ref_ent, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_one_token_and_extreme_targets(device: str) -> None:
    require_compiled(device)
    hidden, weight, _ = make_inputs(3, 16, 257, seed=3, device=device)
    targets = torch.tensor([0, 256, 0], device=device)
    check_parity(hidden, weight, targets, 1.3, chunk_n=2, chunk_v=64)
    check_parity(hidden[:1], weight, targets[1:2], 1.0)  # N = 1, target V - 1


@pytest.mark.parametrize("device", DEVICES)
def test_peaked_and_flat_distributions(device: str) -> None:
    """Entropy near 0 (huge logits: the a/s shift keeps its digits) and near log V (zero W)."""
    require_compiled(device)
    hidden, weight, targets = make_inputs(6, 8, 300, seed=4, device=device)
    check_parity(hidden, weight * 40, targets, 1.0, chunk_v=64)
    check_parity(hidden, torch.zeros_like(weight), targets, 1.0, chunk_v=64)


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16_inputs(device: str) -> None:
    """bf16 hidden/weight: float32 math on the upcast values; gradients come back in bf16."""
    require_compiled(device)
    hidden, weight, targets = make_inputs(20, 32, 700, seed=5, dtype=BF16, device=device)
    logp, ent = linear_logprobs(hidden, weight, targets, 0.8, True, backend="compiled", chunk_v=96)
    ref_logp, ref_ent = eager(hidden, weight, targets, 0.8)  # the same bf16 values, in float64
    assert logp.dtype == F32
    torch.testing.assert_close(logp.double(), ref_logp, **LOGP_TOL)
    torch.testing.assert_close(ent.double(), ref_ent, **LOGP_TOL)
    check_parity(hidden, weight, targets, 0.8, chunk_n=7, chunk_v=96)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device: str) -> None:
    require_compiled(device)
    hidden, weight, targets = make_inputs(0, 8, 50, device=device)
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    logp, ent = linear_logprobs(h, w, targets, 1.0, True, backend="compiled")
    assert logp.shape == (0,) and ent.shape == (0,)
    logp.sum().backward()
    assert h.grad.shape == (0, 8) and torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device: str) -> None:
    """The compiled op itself in float64 (no materialized logits), several ragged blocks."""
    require_compiled(device)
    hidden, weight, targets = make_inputs(5, 4, 13, seed=6, dtype=F64, device=device)
    h = hidden.requires_grad_()
    w = weight.requires_grad_()

    def fn(h_: torch.Tensor, w_: torch.Tensor) -> torch.Tensor:
        return linear_logprobs(h_, w_, targets, 0.7, backend="compiled", chunk_n=2, chunk_v=5)[0]

    assert torch.autograd.gradcheck(fn, (h, w))


def test_only_one_input_requires_grad() -> None:
    """A frozen LM head (weight without grad) and frozen hidden states both work."""
    require_compiled("cpu")
    hidden, weight, targets = make_inputs(9, 8, 40, seed=7)
    h = hidden.clone().requires_grad_()
    linear_logprobs(h, weight, targets, backend="compiled", chunk_v=16)[0].sum().backward()
    h64 = hidden.double().requires_grad_()
    eager(h64, weight, targets, 1.0)[0].sum().backward()
    torch.testing.assert_close(h.grad.double(), h64.grad, **GRAD_TOL)
    w = weight.clone().requires_grad_()
    linear_logprobs(hidden, w, targets, backend="compiled", chunk_v=16)[0].sum().backward()
    assert w.grad is not None and w.grad.shape == weight.shape


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 33),
    h=st.integers(1, 20),
    v=st.integers(1, 260),
    chunk_n=st.integers(0, 9),
    chunk_v=st.integers(0, 70),
    temperature=st.floats(0.3, 2.5),
    seed=st.integers(0, 2**16),
)
# CI's failure with an absolute 1e-6 tolerance: one logit of ~4.8, one float32 ulp is 4.8e-7.
@example(n=29, h=1, v=1, chunk_n=0, chunk_v=0, temperature=0.375, seed=0)
def test_random_shapes(
    n: int, h: int, v: int, chunk_n: int, chunk_v: int, temperature: float, seed: int
) -> None:
    require_compiled("cpu")
    hidden, weight, targets = make_inputs(n, h, v, seed=seed)
    check_parity(hidden, weight, targets, temperature, chunk_n=chunk_n, chunk_v=chunk_v)


def test_reference_backend_and_errors() -> None:
    require_compiled("cpu")
    hidden, weight, targets = make_inputs(10, 8, 30, seed=8)
    ref = linear_logprobs(hidden, weight, targets, 1.2, True, backend="reference")
    assert torch.equal(ref[0], linear_logprobs_reference(hidden, weight, targets, 1.2, True)[0])
    out = linear_logprobs(hidden, weight, targets, 1.2, True)  # auto: the compiled op
    torch.testing.assert_close(out[0], ref[0], **LOGP_TOL)
    torch.testing.assert_close(out[1], ref[1], **LOGP_TOL)
    assert linear_logprobs(hidden, weight, targets)[1].shape == (0,)  # no entropy asked
    with pytest.raises(IndexError, match="targets"):
        linear_logprobs(hidden, weight, targets + 30, backend="compiled")
    with pytest.raises(ValueError, match="temperature"):
        linear_logprobs(hidden, weight, targets, 0.0)
    with pytest.raises(ValueError, match="backend"):
        linear_logprobs(hidden, weight, targets, backend="fast")


def test_opcheck_schema_fake_autograd() -> None:
    """torch.library's own consistency checks: schema, fake kernel, autograd registration."""
    ns = require_compiled("cpu")
    linear_logprobs(*make_inputs(2, 4, 8))  # registers fake/autograd for ns
    hidden, weight, targets = make_inputs(6, 8, 40, seed=9)
    op = getattr(torch.ops, ns).linear_logprob_fwd.default
    args = (hidden.requires_grad_(), weight.requires_grad_(), targets, 0.9, True, 4, 16)
    torch.library.opcheck(op, args)


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = Path(home) / "bin" / "nvcc"
    return str(cand) if cand.exists() else shutil.which("nvcc")


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_standalone(arch: str, tmp_path: Path) -> None:
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (set CUDA_HOME)")
    obj = tmp_path / f"linear_logprob_{arch}.o"
    cmd = [nvcc, "-c", str(CSRC / "linear_logprob_cuda.cu"), "-I", str(CSRC), "-o", str(obj)]
    cmd += [f"-arch={arch}", "-O3", "-Werror", "all-warnings", "-Xptxas", "-v"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    entries = [ln for ln in res.stderr.splitlines() if "Compiling entry function" in ln]
    # fwd and bwd block kernels, float and double.
    assert len(entries) == 4, res.stderr[-4000:]


def test_confident_tokens_keep_their_small_gradients():
    """Peaked distributions with large logits (~35, 1 - p(target) ~ 1e-5): each token's
    gradient must be right relative to its own size. Saving lse = m + log s in float32
    would round log s (~1e-5) against m (~35, ulp 4e-6) and get them wrong by ~20%."""
    torch.manual_seed(0)
    n, v = 32, 64
    weight = torch.eye(v, dtype=torch.float64)  # logits = hidden
    targets = torch.randint(0, v, (n,))
    hidden = 20.0 + 0.3 * torch.randn(n, v, dtype=torch.float64)
    hidden[torch.arange(n), targets] += 15.5

    def grads(hid, w, fn):
        hid = hid.clone().requires_grad_()
        logp = fn(hid, w)
        logp.sum().backward()
        return hid.grad.double(), logp.detach().double()

    def eager(hid, w):
        return torch.log_softmax(hid @ w.T, -1).gather(1, targets[:, None]).squeeze(1)

    truth, logp64 = grads(hidden, weight, eager)
    one_minus_p = -torch.expm1(logp64)
    assert 1e-6 < float(one_minus_p.median()) < 1e-4  # the case this test is about
    got, _ = grads(hidden.float(), weight.float(), lambda a, b: linear_logprobs(a, b, targets)[0])
    ref, _ = grads(hidden.float(), weight.float(), eager)  # eager float32: the bar to meet

    def worst(g: torch.Tensor) -> float:
        return float(((g - truth).norm(dim=1) / truth.norm(dim=1)).max())

    assert worst(got) <= 2 * worst(ref) + 1e-3, (worst(got), worst(ref))
