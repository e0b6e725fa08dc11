"""The gate logic: the limits of ``benchmarks/gates.toml`` and whether measured ratios hold.

``evaluate(gates, measured)`` is the whole pass/fail logic: one line per broken gate, e.g.
``fused_vs_eager: 9.8× < 15× floor``. Its own module because it is pure (no timing, no
torch) and tested on its own, while the measurements (``benchmarks.gate_measurements``) are
slow and the command (``benchmarks.gate``) writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
#: the limits; SRPO_GATES_TOML points the gate at another file (e.g. to try a change)
GATES_TOML = Path(os.environ.get("SRPO_GATES_TOML", HERE / "gates.toml"))


def _num(v: float) -> str:
    """3 significant digits, without exponent notation up to 1e12."""
    return f"{v:.0f}" if 1000 <= abs(v) < 1e12 else f"{v:.3g}"


@dataclass(frozen=True)
class Gate:
    """One gated ratio: it must stay >= ``floor`` (higher is better) or <= ``ceiling``."""

    name: str
    ratio: str
    why: str
    floor: float | None = None
    ceiling: float | None = None
    unit: str = "×"  # "×" (a ratio) or "%" (a share, stored as a fraction)

    def fmt(self, value: float) -> str:
        if self.unit == "%":
            return f"{_num(100 * value)}%"
        return f"{_num(value)}×"

    def check(self, measured: float | None) -> str | None:
        """None when the gate holds, else its one failure line."""
        if measured is None:
            return f"{self.name}: not measured"
        if self.floor is not None and not measured >= self.floor:
            return f"{self.name}: {self.fmt(measured)} < {self.fmt(self.floor)} floor"
        if self.ceiling is not None and not measured <= self.ceiling:
            return f"{self.name}: {self.fmt(measured)} > {self.fmt(self.ceiling)} ceiling"
        return None


def load_gates(path: Path | str = GATES_TOML) -> dict[str, Gate]:
    """The gates of a ``gates.toml``: ``[[gate]]`` tables with name, ratio, why, and exactly
    one of floor / ceiling (unit optional)."""
    data = tomllib.loads(Path(path).read_text())
    gates: dict[str, Gate] = {}
    for i, g in enumerate(data.get("gate", [])):
        where = f"{path}: gate #{i + 1}"
        missing = [k for k in ("name", "ratio", "why") if not g.get(k)]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        unknown = set(g) - {"name", "ratio", "why", "floor", "ceiling", "unit"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        if ("floor" in g) == ("ceiling" in g):
            raise ValueError(f"{where} ({g['name']}): give exactly one of floor, ceiling")
        if g.get("unit", "×") not in ("×", "%"):
            raise ValueError(f"{where} ({g['name']}): unit is '×' or '%'")
        if g["name"] in gates:
            raise ValueError(f"{where}: duplicate gate {g['name']!r}")
        gates[g["name"]] = Gate(
            name=g["name"],
            ratio=g["ratio"],
            why=g["why"],
            floor=float(g["floor"]) if "floor" in g else None,
            ceiling=float(g["ceiling"]) if "ceiling" in g else None,
            unit=g.get("unit", "×"),
        )
    return gates


def evaluate(gates: dict[str, Gate], measured: dict[str, float]) -> list[str]:
    """One line per broken gate (a gate without a measurement is broken too)."""
    return [line for g in gates.values() if (line := g.check(measured.get(g.name))) is not None]
