#!/usr/bin/env python3
"""CI in tiers, each timed against its budget: set-up, the fast tier, the slow tier.

Why a script and not a note in the README: a budget that is only remembered is blown by the
next wave of end-to-end tests, and CI's hard limit (90 min) is then the first to say so,
after an hour. Here a tier over its budget fails CI with one line naming the figures.

The budgets (seconds; the environment can lower or raise them for an experiment):
  SRPO_CI_FAST_BUDGET_S   the README's test command, the fast tier     (default 900: 15 min)
  SRPO_CI_TOTAL_BUDGET_S  all of CI: set-up + fast tier + slow tier    (default 2700: 45 min)

Load. This machine is shared (other jobs, other VMs), and a tier that takes 14 minutes on a
quiet machine can take 20 on a busy one. Each phase reads /proc/stat before and after (every
core's busy and steal time) and the CPU time of its own process tree (getrusage of the
children this script waited for, which includes their descendants). What the machine spent
on anything else, plus the time the hypervisor gave to other VMs (steal), is what *others*
held: on average L = (others' CPU seconds + steal seconds) / wall cores. Under fair sharing a
tier that would use all C cores gets C / (C + L) of them, so the budget is checked against

    load-adjusted time = wall time × C / (C + L)

the time a quiet machine would have taken. Both tiers use both cores (pytest-xdist), so the
model fits them; for waiting rather than computing (a test's sleep, a deadline) it credits
too much, which is why it is a share and not a subtraction: a machine whose other jobs keep
every core busy (L = C) at most halves the wall time. On a quiet machine L ≈ 0 and the two
figures agree; both are printed.

Usage (what .ci/run does): python3 .ci/budget.py
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST_BUDGET_S = float(os.environ.get("SRPO_CI_FAST_BUDGET_S", 900))
TOTAL_BUDGET_S = float(os.environ.get("SRPO_CI_TOTAL_BUDGET_S", 2700))

#: (name, command, budget of this phase alone or None); the tiers are the README's commands
PHASES: list[tuple[str, list[str], float | None]] = [
    ("set-up", ["./dev", "true"], None),
    ("fast tier", ["./dev", "python", "-m", "pytest"], FAST_BUDGET_S),
    ("slow tier", ["./dev", "python", "-m", "pytest", "-m", "slow"], None),
]


@dataclass
class CpuTimes:
    """Whole-machine CPU seconds since boot (all cores), from /proc/stat's first line."""

    busy: float
    steal: float

    @classmethod
    def read(cls) -> CpuTimes:
        hz = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return cls(busy=(user + nice + system + irq + softirq) / hz, steal=steal / hz)


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class Timing:
    name: str
    wall: float
    others: float  # CPU seconds of other processes on this machine during the phase
    steal: float  # CPU seconds the hypervisor gave to other machines
    cores: int

    @property
    def others_load(self) -> float:
        """Cores held on average by other processes and other VMs during the phase."""
        return (self.others + self.steal) / self.wall if self.wall > 0 else 0.0

    @property
    def adjusted(self) -> float:
        return self.wall * self.cores / (self.cores + self.others_load)

    def line(self) -> str:
        return (
            f"{self.name}: {self.wall / 60:.1f} min wall, {self.adjusted / 60:.1f} min "
            f"load-adjusted (others held {self.others_load:.2f} of {self.cores} cores on "
            f"average, steal included; load average now {os.getloadavg()[0]:.1f})"
        )


def timed(name: str, cmd: list[str]) -> tuple[int, Timing]:
    """Run one phase in the foreground (its output streams to CI's log) and time it."""
    cpu0, own0, t0 = CpuTimes.read(), own_cpu(), time.monotonic()
    code = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL).returncode
    wall = time.monotonic() - t0
    cpu1, own1 = CpuTimes.read(), own_cpu()
    others = max(0.0, (cpu1.busy - cpu0.busy) - (own1 - own0))
    return code, Timing(name, wall, others, cpu1.steal - cpu0.steal, os.cpu_count() or 1)


def over(what: str, seconds: float, budget: float, timings: list[Timing]) -> str:
    return (
        f"ci budget: {what} took {seconds / 60:.1f} min load-adjusted, over its "
        f"{budget / 60:.0f}-min budget ({'; '.join(t.line() for t in timings)})"
    )


def main() -> int:
    timings: list[Timing] = []
    for name, cmd, budget in PHASES:
        print(f"ci: {name}: {' '.join(cmd)}", flush=True)
        code, t = timed(name, cmd)
        timings.append(t)
        print(f"ci: {t.line()}", flush=True)
        if code != 0:
            print(f"ci: {name} failed (exit {code}); later tiers not run", file=sys.stderr)
            return code
        if budget is not None and t.adjusted > budget:
            print(over(name, t.adjusted, budget, [t]), file=sys.stderr)
            return 1
    total = sum(t.adjusted for t in timings)
    wall = sum(t.wall for t in timings)
    print(f"ci: all of CI: {wall / 60:.1f} min wall, {total / 60:.1f} min load-adjusted")
    if total > TOTAL_BUDGET_S:
        print(over("all of CI", total, TOTAL_BUDGET_S, timings), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
