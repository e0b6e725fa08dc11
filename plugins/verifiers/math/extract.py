"""Find the final answer in a model response: the last ``\\boxed{}``, or a user regex."""

from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")
_TOKEN_RE = re.compile(r"[^\s$]+")


def _balanced_group(text: str, i: int) -> str | None:
    """Content of the brace group opening at ``text[i]``; None when it never closes."""
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\":  # skip escaped chars such as \{ and \}
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
        j += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces) or ``\\boxed x``; None if absent.

    An unbalanced last box (a truncated generation) falls back to an earlier box.
    """
    for m in reversed(list(_BOX_RE.finditer(text))):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            content = _balanced_group(text, i)
            if content is not None:
                return content
            continue
        if i > m.end():  # "\boxed 5": one token
            tok = _TOKEN_RE.match(text, i)
            if tok:
                return tok.group(0)
    return None


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
