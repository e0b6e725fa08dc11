"""What the reward function returned → a verdict of plain floats and bools, or why not.

Accepted per response (see the package docstring for the contract):

* a number (``bool`` counts: ``True`` is 1.0) — ``correct`` is left to the threshold;
* ``(reward, correct)``;
* ``{"reward": ..., "correct": ..., NAME: number, ...}`` — ``correct`` optional, every
  other key a reward part (reported as ``reward_parts/NAME``).

NumPy and torch scalars are taken through ``.item()``. NaN or infinite numbers, and
anything else, raise ``BadResult``: a silently wrong reward is worse than a counted error.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

#: A verdict: ``{"reward": float, "correct": bool | None, "parts": {name: float}}``;
#: ``correct`` is None when the function returned a bare number.
Verdict = dict[str, Any]


class BadResult(Exception):
    """The function returned something outside the contract."""


def _plain(x: Any) -> Any:
    """NumPy/torch scalars as Python values (a size-1 array too); others unchanged."""
    item = getattr(x, "item", None)
    if callable(item) and not isinstance(x, (numbers.Real, str, bytes)):
        try:
            return item()
        except (TypeError, ValueError) as e:  # an array of several values
            raise BadResult(f"got {type(x).__name__} that is not a single value ({e})") from None
    return x


def number(x: Any, what: str) -> float:
    """A finite float, or ``BadResult`` naming ``what``."""
    x = _plain(x)
    if not isinstance(x, numbers.Real):
        raise BadResult(f"{what} is {type(x).__name__}, not a number")
    value = float(x)
    if not math.isfinite(value):
        raise BadResult(f"{what} is {value}")
    return value


def flag(x: Any) -> bool:
    """``correct``: a bool, or the numbers 0 and 1."""
    x = _plain(x)
    if isinstance(x, bool):
        return x
    if isinstance(x, numbers.Real) and x in (0, 1):
        return bool(x)
    raise BadResult(f"correct is {x!r}, not a bool")


def _from_dict(d: dict[Any, Any]) -> Verdict:
    if "reward" not in d:
        raise BadResult(f"returned a dict without 'reward' (keys: {sorted(map(str, d))})")
    parts = {}
    for key, value in d.items():
        if key in ("reward", "correct"):
            continue
        if not isinstance(key, str):
            raise BadResult(f"dict key {key!r} is not a string")
        parts[key] = number(value, f"reward part {key!r}")
    correct = flag(d["correct"]) if "correct" in d else None
    return {"reward": number(d["reward"], "reward"), "correct": correct, "parts": parts}


def to_verdict(value: Any) -> Verdict:
    """One response's verdict from the function's return value."""
    if isinstance(value, dict):
        return _from_dict(value)
    if isinstance(value, tuple):
        if len(value) != 2:
            raise BadResult(f"returned a tuple of {len(value)} values, not (reward, correct)")
        return {"reward": number(value[0], "reward"), "correct": flag(value[1]), "parts": {}}
    if isinstance(value, (str, bytes, list)) or value is None:
        raise BadResult(f"returned {type(value).__name__}, not a number, (reward, correct) or dict")
    return {"reward": number(value, "reward"), "correct": None, "parts": {}}


def to_verdicts(value: Any, n: int) -> list[Verdict]:
    """A batched call's verdicts: ``value`` must be a list (or array) of ``n`` results;
    one bad result costs only its own response (``{"error": ...}`` in its place)."""
    if not isinstance(value, (list, tuple)) and callable(getattr(value, "tolist", None)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise BadResult(f"returned {type(value).__name__}, not a list of {n} results")
    if len(value) != n:
        raise BadResult(f"returned {len(value)} results for {n} responses")
    out: list[Verdict] = []
    for v in value:
        try:
            out.append(to_verdict(v))
        except BadResult as e:
            out.append({"error": str(e)})
    return out
