"""Where the tiny task's training step spends its time: a cProfile by module group.

``python -m benchmarks.gate --profile`` prints it; it is not a gate, but the tool for finding
out why ``kernel_overhead`` moved. Its own module because it shares only the tiny-task
kernel (``gate_measurements.tiny_kernel_run``) with the measurements.
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.gate_measurements import tiny_kernel_run

#: where a profiled function's time goes: first matching path fragment wins
MODULE_GROUPS = (
    ("plugins/samplers/", "sampler"),
    ("plugins/verifiers/", "verifiers"),
    ("srpo/kernel/verify.py", "verifiers"),
    ("srpo/policy/", "policy update"),
    ("srpo/algo/", "policy update"),
    ("srpo/ops/", "policy update"),
    ("srpo/history/", "history"),
    ("srpo/kernel/", "kernel"),
    ("srpo/events", "kernel"),
    ("srpo/api", "kernel"),
    ("plugins/loggers/", "loggers"),
    ("plugins/curricula/", "curriculum"),
    ("/torch/", "torch"),
    ("/transformers/", "transformers"),
)
#: kernel functions whose time is the four parts (generate, verify, update, history)
KERNEL_WRAPPERS = (
    "step",
    "_gather_rollouts",
    "_rollouts",
    "_train",
    "verify",
    "verify_batch",
    "_record_history",
    "_commit_history",
)


def profile_kernel(steps: int = 4, top: int = 12, **kw: Any) -> dict[str, Any]:
    """cProfile of ``steps`` tiny-task steps: own (tottime) seconds per module group, and
    the kernel-side functions (kernel, events, loggers, curriculum) by cumulative time,
    without the ones that only wrap the four timed parts."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    with tiny_kernel_run("gate-profile-", **kw) as kernel:
        kernel.step()
        t = time.perf_counter()
        prof.enable()
        for _ in range(steps):
            kernel.step()
        prof.disable()
        wall = time.perf_counter() - t
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    own: dict[str, float] = {}
    side: list[tuple[float, str]] = []
    kernel_side = {"kernel", "loggers", "curriculum"}
    for (path, line, fn), (_cc, _nc, tt, ct, _callers) in stats.items():
        p = path.replace(os.sep, "/")
        default = "builtins (C: torch ops, ...)" if p == "~" else "other"
        group = next((g for frag, g in MODULE_GROUPS if frag in p), default)
        own[group] = own.get(group, 0.0) + tt
        if group in kernel_side and not (group == "kernel" and fn in KERNEL_WRAPPERS):
            rel = p.split("/work/main/")[-1] if "/work/main/" in p else p
            side.append((ct, f"{rel}:{line}({fn})"))
    side.sort(reverse=True)
    return {
        "wall_s_per_step": wall / steps,
        "own_s_per_step": {g: v / steps for g, v in sorted(own.items(), key=lambda x: -x[1])},
        "kernel_side_cumulative_s_per_step": [(n, c / steps) for c, n in side[:top]],
    }
