"""The benchmark regression gate: each target ratio measured in one process and one run,
against the floors (or ceilings) of ``benchmarks/gates.toml``.

    ./dev python -m pytest -m gate          # the gated subset (tests/test_gates.py)
    ./dev python -m benchmarks.gate         # the same measurements, printed (no pytest)

The gate logic is ``benchmarks.gate_rules`` (``evaluate``), the measurements
``benchmarks.gate_measurements`` (timed alternately, best of each side: see there), the
profile of ``--profile`` ``benchmarks.gate_profile``; this module is the command and the
results file. The full-size figures are the ``bench_*.py`` benchmarks' (see RESULTS.md).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.gate_measurements import MEASUREMENTS
from benchmarks.gate_profile import profile_kernel
from benchmarks.gate_rules import evaluate, load_gates

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results" / "gates.json"


def conditions() -> dict[str, Any]:
    """What the figures were measured under."""
    import torch

    return {
        "load_average": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def write_results(results: dict[str, Any], path: Path = RESULTS_JSON) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("only", nargs="*", help=f"some of {list(MEASUREMENTS)} (default: all)")
    ap.add_argument("--json", type=Path, default=RESULTS_JSON)
    ap.add_argument("--profile", action="store_true", help="profile the tiny-task steps")
    args = ap.parse_args()
    if args.profile:
        print(json.dumps(profile_kernel(), indent=1))
        return 0
    gates = load_gates()
    measured: dict[str, float] = {}
    out: dict[str, Any] = {"conditions_before": conditions(), "measurements": {}}
    for name in args.only or list(MEASUREMENTS):
        t = time.perf_counter()
        r = MEASUREMENTS[name]()
        r["details"]["seconds"] = time.perf_counter() - t
        out["measurements"][name] = r
        for k, v in r.items():
            if k != "details":
                measured[k] = v
                g = gates.get(k)
                print(f"{k:<20} {g.fmt(v) if g else v:>10}  ({r['details']})", flush=True)
    out["conditions_after"] = conditions()
    run = {k: g for k, g in gates.items() if k in measured}
    failures = evaluate(run, measured)
    out["failures"] = failures
    write_results(out, args.json)
    print("\n".join(failures) or "all gates hold", "| load", out["conditions_after"])
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
