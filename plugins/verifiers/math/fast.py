"""The in-process fast path: plain numbers and textually equal answers, no sympy.

Most answers in math RL are integers or simple fractions; deciding them here costs
microseconds instead of a round trip to a sympy worker.
"""

from __future__ import annotations

import re
from fractions import Fraction

_STRIP_TOKENS = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "$", "\\displaystyle")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_NUM = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")
_FRAC = re.compile(r"^([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")
_SLASH = re.compile(r"^([+-]?\d+)/(\d+)$")
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}$")

#: Longer normalized answers are left to math-verify (not plain numbers anyway).
_MAX_FAST_CHARS = 64


def normalize(s: str) -> str:
    """Cheap textual normalization; equal results mean equal answers."""
    s = s.strip()
    for tok in _STRIP_TOKENS:
        s = s.replace(tok, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = "".join(s.split())
    m = _TEXT_WRAP.match(s)
    if m:
        s = m.group(1)
    s = s.rstrip(".")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s


def as_number(s: str) -> Fraction | None:
    """Exact value of a plain integer, decimal or simple fraction; None for anything else."""
    try:
        if _NUM.match(s):
            return Fraction(s)
        m = _FRAC.match(s)
        if m:
            sign = -1 if m.group(1) == "-" else 1
            return sign * Fraction(int(m.group(2)), int(m.group(3)))
        m = _SLASH.match(s)
        if m:
            return Fraction(int(m.group(1)), int(m.group(2)))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def fast_compare(gold: str, pred: str) -> bool | None:
    """True/False when decidable without sympy, None when the slow path must decide."""
    g, p = normalize(gold), normalize(pred)
    if g == p and g:
        return True
    if len(g) > _MAX_FAST_CHARS or len(p) > _MAX_FAST_CHARS:
        return None
    gn, pn = as_number(g), as_number(p)
    if gn is not None and pn is not None:
        return gn == pn
    return None
