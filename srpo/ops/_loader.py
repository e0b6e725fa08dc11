"""Find the compiled GRPO op: prebuilt ``srpo._C`` -> JIT build of csrc/ -> none (reference).

Loading is lazy (first ``grpo_loss``/``active_backend`` call), so ``import srpo.ops`` stays
cheap; a JIT build takes ~30 s once and is cached by torch under ``$TORCH_EXTENSIONS_DIR``
(default ``~/.cache/torch_extensions``). Every failure is recorded (``backend_info()``) and,
when it means falling back to the reference, warned about exactly once.

Environment:
  SRPO_OPS_BACKEND=reference   never load the compiled op
  SRPO_OPS_NO_PREBUILT=1       skip ``srpo._C`` (e.g. to test the JIT path)
  SRPO_OPS_NO_JIT=1            never JIT-compile
  SRPO_CPU_ISA=base|avx2       cap the CPU kernel's instruction set (read once by the C++
                               code; default: the best of AVX-512, AVX2+FMA, SSE2/portable)
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from srpo.ops._autograd import register as register_autograd

ABI_VERSION = 7  # csrc/grpo.h kGrpoAbiVersion
CSRC = Path(__file__).resolve().parents[2] / "csrc"
JIT_NAME = "srpo_ops_jit"


@dataclass
class _State:
    loaded: bool = False
    namespace: str | None = None  # "srpo" (prebuilt) or "srpo_jit"
    source: str | None = None  # "prebuilt" | "jit" | None
    cuda_kernels: bool = False
    path: str | None = None
    errors: list[str] = field(default_factory=list)
    warned: set[str] = field(default_factory=set)


_state = _State()
_lock = threading.Lock()


def warn_once(key: str, message: str) -> None:
    if key in _state.warned:
        return
    _state.warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _abi_ok(ns: str) -> bool:
    version = int(getattr(torch.ops, ns).abi_version())
    if version != ABI_VERSION:
        _state.errors.append(
            f"{ns}: ABI {version} != expected {ABI_VERSION} (stale build: "
            "rerun `pip install --no-build-isolation -e .`)"
        )
        return False
    return True


def _try_prebuilt() -> bool:
    try:
        mod = importlib.import_module("srpo._C")
    except Exception as exc:  # ImportError, or undefined symbols from another torch build
        _state.errors.append(f"prebuilt srpo._C: {type(exc).__name__}: {exc}")
        return False
    if not _abi_ok("srpo"):
        return False
    _state.namespace, _state.source = "srpo", "prebuilt"
    _state.path = getattr(mod, "__file__", None)
    return True


def _cuda_toolkit() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return bool(
        torch.version.cuda
        and torch.cuda.is_available()
        and CUDA_HOME
        and (Path(CUDA_HOME) / "bin" / "nvcc").exists()
    )


def jit_build(verbose: bool = False) -> str:
    """Compile csrc/ with torch.utils.cpp_extension.load; returns the library path."""
    from torch.utils.cpp_extension import load

    sources = [
        str(CSRC / name)
        for name in (
            "bindings.cpp",
            "grpo_cpu.cpp",
            "linear_logprob_bindings.cpp",
            "linear_logprob_cpu.cpp",
        )
    ]
    cflags = ["-O3", "-pthread", "-Wno-psabi", "-DSRPO_OP_NAMESPACE=srpo_jit"]  # = setup.py
    cuda_flags: list[str] = []
    if _cuda_toolkit():
        sources += [str(CSRC / "grpo_cuda.cu"), str(CSRC / "linear_logprob_cuda.cu")]
        cflags.append("-DSRPO_WITH_CUDA")
        cuda_flags = ["-O3", "-DSRPO_OP_NAMESPACE=srpo_jit"]
    load(
        name=JIT_NAME,
        sources=sources,
        extra_cflags=cflags,
        extra_cuda_cflags=cuda_flags or None,
        extra_include_paths=[str(CSRC)],
        extra_ldflags=["-pthread"],
        is_python_module=False,
        verbose=verbose,
    )
    from torch.utils.cpp_extension import _get_build_directory

    return str(Path(_get_build_directory(JIT_NAME, verbose=False)) / f"{JIT_NAME}.so")


def _try_jit() -> bool:
    if not (CSRC / "bindings.cpp").exists():
        _state.errors.append(f"jit: no sources at {CSRC} (not a source checkout)")
        return False
    try:
        _state.path = jit_build()
    except Exception as exc:  # compiler missing, build error, ...
        _state.errors.append(f"jit: {type(exc).__name__}: {str(exc)[-2000:]}")
        return False
    if not _abi_ok("srpo_jit"):
        return False
    _state.namespace, _state.source = "srpo_jit", "jit"
    return True


def _register(ns: str) -> None:
    """Fake (meta) kernel for torch.compile and the autograd formula, for namespace ``ns``."""
    register_autograd(ns)
    _state.cuda_kernels = bool(getattr(torch.ops, ns).has_cuda_kernels())


def ensure_loaded() -> str | None:
    """Load once; returns the op namespace, or None when only the reference is available."""
    if _state.loaded:
        return _state.namespace
    with _lock:
        if _state.loaded:
            return _state.namespace
        if os.environ.get("SRPO_OPS_BACKEND", "").strip().lower() == "reference":
            _state.errors.append("SRPO_OPS_BACKEND=reference")
        else:
            ok = (not _env("SRPO_OPS_NO_PREBUILT") and _try_prebuilt()) or (
                not _env("SRPO_OPS_NO_JIT") and _try_jit()
            )
            if ok:
                try:
                    _register(_state.namespace)  # type: ignore[arg-type]
                except Exception as exc:
                    _state.errors.append(f"register: {type(exc).__name__}: {exc}")
                    _state.namespace = _state.source = None
            if _state.namespace is None:
                warn_once(
                    "load",
                    "srpo.ops: compiled GRPO op unavailable, using the (slower) torch reference. "
                    "Reasons: " + " | ".join(_state.errors),
                )
        _state.loaded = True
    return _state.namespace


def state() -> _State:
    return _state
