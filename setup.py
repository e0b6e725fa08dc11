"""Build script: packages come from pyproject.toml; this file only adds the compiled extension.

``srpo._C`` (csrc/) is built with torch.utils.cpp_extension + ninja at
``pip install --no-build-isolation -e .``: a CUDAExtension when torch has CUDA and nvcc exists
(CUDA_HOME), else a CppExtension. Knobs (environment):

  SRPO_BUILD_EXT=0       build no extension (srpo.ops then JIT-compiles or uses the reference)
  SRPO_CUDA=0            CPU-only extension even where CUDA is available
  SRPO_REQUIRE_EXT=1     a failed extension build fails the install (CI); by default it warns
                         and installs the pure-Python package, which falls back at run time
  TORCH_CUDA_ARCH_LIST   CUDA architectures (torch's default: those of the visible GPUs)
"""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _packages() -> list[str]:
    """`srpo` from srpo/, and the first-party plugins from plugins/ as `srpo_plugins`."""
    core = [p for p in find_packages(include=["srpo", "srpo.*"])]
    plugins = ["srpo_plugins"] + [f"srpo_plugins.{p}" for p in find_packages("plugins")]
    return core + plugins


def _flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def _extensions() -> tuple[list, dict]:
    if not _flag("SRPO_BUILD_EXT", "1") or not (ROOT / "csrc" / "bindings.cpp").exists():
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("srpo: torch not importable at build time; skipping srpo._C", file=sys.stderr)
        return [], {}

    sources = [
        "csrc/bindings.cpp",
        "csrc/grpo_cpu.cpp",
        "csrc/linear_logprob_bindings.cpp",
        "csrc/linear_logprob_cpu.cpp",
    ]
    # No OpenMP: the CPU op runs on its own claim-based helper threads (csrc/grpo.h,
    # grpo_cpu_parallel) and picks AVX2/AVX-512 kernels at run time, so the default -march is
    # kept and the module runs on any CPU of the architecture.
    # -Wno-psabi: GCC notes that vector arguments of grpo_math.h's shared templates would pass
    # differently with AVX; they are always inlined into the per-ISA kernels (csrc/grpo_cpu.cpp).
    cxx = ["-O3", "-pthread", "-Wno-psabi"]
    link = ["-pthread"]
    nvcc_ok = bool(CUDA_HOME) and (Path(CUDA_HOME) / "bin" / "nvcc").exists()
    if torch.version.cuda and nvcc_ok and _flag("SRPO_CUDA", "1"):
        ext = CUDAExtension(
            "srpo._C",
            [*sources, "csrc/grpo_cuda.cu", "csrc/linear_logprob_cuda.cu"],
            include_dirs=[str(ROOT / "csrc")],
            define_macros=[("SRPO_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=link,
        )
    else:
        ext = CppExtension(
            "srpo._C",
            sources,
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )

    class _BuildExt(BuildExtension):
        """Optional extension: a failed build warns (run time falls back) unless required."""

        def run(self) -> None:
            try:
                super().run()
            except Exception as exc:
                if _flag("SRPO_REQUIRE_EXT", "0"):
                    raise
                print(
                    f"WARNING: srpo._C failed to build ({exc}); srpo.ops will JIT-compile "
                    "or fall back to the torch reference. Set SRPO_REQUIRE_EXT=1 to fail.",
                    file=sys.stderr,
                )

    return [ext], {"build_ext": _BuildExt.with_options(use_ninja=True)}


_ext_modules, _cmdclass = _extensions()
setup(packages=_packages(), ext_modules=_ext_modules, cmdclass=_cmdclass)
