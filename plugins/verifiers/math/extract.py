"""Find the final answer in a model response: the last ``\\boxed{}``, or a user regex.

Extraction runs in the trainer's process on untrusted text, so it is one left-to-right
pass (linear in the response): a response full of unclosed ``\\boxed{`` cannot stall it.
"""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
_TOKEN_RE = re.compile(r"[^\s$]+")
#: What the brace scan looks at: an escaped char (``\{`` is not a brace) or a brace.
_BRACE_RE = re.compile(r"\\.|[{}]", re.DOTALL)


def _boxes(text: str) -> tuple[dict[int, int], tuple[int, int] | None]:
    """The boxes in ``text``: {index of a box's ``{``: box start}, and the last
    ``\\boxed x`` box (its start, the index of its token), if any."""
    braced: dict[int, int] = {}
    bare: tuple[int, int] | None = None
    for m in _BOX_RE.finditer(text):
        i = m.end()
        while i < len(text) and text[i] == " ":  # runs end at the next box: linear in all
            i += 1
        if i < len(text) and text[i] == "{":
            braced[i] = m.start()
        elif i > m.end() and i < len(text) and _TOKEN_RE.match(text, i, i + 1):
            bare = (m.start(), i)
    return braced, bare


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces) or ``\\boxed x``; None if absent.

    "Last" is by where the box starts (in ``\\boxed{\\boxed{1}}`` the inner one). An
    unbalanced box (a truncated generation) is skipped, so an earlier box counts.
    """
    braced, bare = _boxes(text)
    best: tuple[int, int, int] | None = None  # (box start, content start, content end)
    if braced:
        open_at: list[int] = []  # indices of the `{` not closed yet
        for m in _BRACE_RE.finditer(text):
            c = m.group()
            if c == "{":
                open_at.append(m.start())
            elif c == "}" and open_at:
                o = open_at.pop()
                start = braced.get(o)
                if start is not None and (best is None or start > best[0]):
                    best = (start, o + 1, m.start())
    if bare is not None and (best is None or bare[0] > best[0]):
        tok = _TOKEN_RE.match(text, bare[1])
        return tok.group(0) if tok else None
    return None if best is None else text[best[1] : best[2]].strip()


def extract_answer(text: str, pattern: re.Pattern[str] | None) -> str | None:
    """Last match of ``pattern`` (group 1 if it has groups), else the last boxed answer."""
    if pattern is None:
        return extract_boxed(text)
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - we want the last match
        pass
    if last is None:
        return None
    return (last.group(1) if pattern.groups else last.group(0)).strip()
