"""The in-process fast path: plain numbers and textually equal answers, no sympy.

Most answers in math RL are integers or simple fractions; deciding them here costs
microseconds instead of a round trip to a sympy worker. A wrong answer rewarded is a
reward bug RL will find, so normalization never merges what could differ: it drops only
whole LaTeX commands that cannot change a value, keeps the space between two digits or
letters (``2 3`` is not ``23``, ``\\pi r`` is not ``\\pir``), and reads commas as thousands
separators only in an unambiguous numeral (``_THOUSANDS``). What it cannot decide it
leaves to math-verify (``None``).
"""

from __future__ import annotations

import re
from fractions import Fraction

#: LaTeX tokens: a command (``\\left``, never a prefix of ``\\leftarrow``), an escaped
#: symbol, a run of whitespace, or one character.
_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|\s+|.", re.DOTALL)
#: Tokens that never change a value.
_DROP = frozenset({"\\left", "\\right", "\\displaystyle", "$"})
#: Spacing: dropped, except between two word characters (see ``_join``).
_SPACES = frozenset({"\\,", "\\;", "\\:", "\\!", "\\ ", "\\quad", "\\qquad"})
_RENAME = {"\\dfrac": "\\frac", "\\tfrac": "\\frac"}
#: Characters a space separates: ``2 3``, ``2 .5``, ``\\pi r`` differ from ``23``, ``2.5``...
_WORD = re.compile(r"[\w.]")

#: Thousands separators, the one place a comma is part of a number: 1–3 leading digits,
#: then groups of exactly three, one separator kind (``,`` ``{,}`` or ``\\,``), no spaces.
#: ``2,100`` is 2100; ``2, 100`` / ``12,34`` / ``1,2`` are lists (math-verify reads them the
#: same way), so the fast path does not decide them.
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,|\{,\}|\\,)\d{3}(?:\1\d{3})*(\.\d+)?$")
_NUM = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")
_FRAC = re.compile(r"^([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")
_SLASH = re.compile(r"^([+-]?\d+)/(\d+)$")
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}$")

#: Longer normalized answers are left to math-verify (not plain numbers anyway).
_MAX_FAST_CHARS = 64


def _join(tokens: list[str]) -> str:
    """Concatenate, turning each spacing run into one space where it separates (between
    two ``_WORD`` characters, or next to a comma: ``2, 100`` is a list, ``2,100`` may be a
    number) and into nothing elsewhere; a lone ``\\,`` between digits stays for
    ``_THOUSANDS`` to judge. So ``[1, 2]`` and ``[1,2]`` differ here: math-verify decides."""
    out: list[str] = []
    gap: list[str] = []
    for t in tokens:
        if t in _SPACES or t.isspace():
            gap.append(t)
            continue
        if gap and out:
            a, b = out[-1][-1], t[0]
            if a.isdigit() and b.isdigit() and gap == ["\\,"]:
                out.append("\\,")
            elif (_WORD.match(a) and _WORD.match(b)) or "," in (a, b):
                out.append(" ")
        gap = []
        out.append(t)
    return "".join(out)


def normalize(s: str) -> str:
    """Cheap textual normalization; equal results mean equal answers."""
    tokens = [_RENAME.get(t, t) for t in _TOKEN.findall(s.strip()) if t not in _DROP]
    s = _join(tokens)
    m = _TEXT_WRAP.match(s)
    if m:
        s = m.group(1).strip()
    s = s.rstrip(".").rstrip()
    if _THOUSANDS.match(s):
        s = re.sub(r"\{,\}|\\,|,", "", s)
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
