"""Pull the program out of a model response."""

from __future__ import annotations

import re

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
PY_TAGS = frozenset({"python", "py", "python3", "py3", ""})


def extract_code(text: str, mode: str = "fenced") -> str | None:
    """The program in ``text``.

    ``fenced``: the last fenced block tagged python (or untagged);
    ``fenced_or_bare``: that, else the whole response if it parses as Python;
    ``bare``: the whole response.
    """
    if mode == "bare":
        return text if text.strip() else None
    code = None
    for m in _FENCE.finditer(text):
        if m.group(1).lower() in PY_TAGS:
            code = m.group(2)
    if code is None and mode == "fenced":
        # an unterminated final block (generation truncated after the code) still counts
        m = re.search(r"```[ \t]*(?:python3?|py3?)[^\n]*\n(?!.*```)(.*)\Z", text, re.DOTALL)
        if m and m.group(1).strip():
            code = m.group(1)
    if code is None and mode == "fenced_or_bare":
        try:
            compile(text, "<response>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            return None
        code = text
    if code is None or not code.strip():
        return None
    return code
