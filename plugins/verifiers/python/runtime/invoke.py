"""One call of the reward function → a verdict, whatever the function does short of hanging."""

from __future__ import annotations

from typing import Any

from .load import UserFunction, describe, one_line
from .verdict import Verdict, to_verdict, to_verdicts

#: What the function is called with: (prompt, response, reference, meta) — single values,
#: or, for the batched form, lists of them.
Args = tuple[Any, Any, Any, Any]


def invoke(uf: UserFunction, args: Args, batched: bool) -> Verdict | list[Verdict]:
    """The verdict of one call (a list of them for a batched call), or ``{"error": ...}``
    when the call raised or returned something outside the contract.

    Only ``Exception`` and ``SystemExit`` are caught: a ``KeyboardInterrupt`` must still stop
    an in-process run, and a worker's time-limit signal must reach its handler."""
    prompt, response, reference, meta = args
    kwargs = {"meta": meta} if uf.wants_meta else {}
    try:
        value = uf.fn(prompt, response, reference, **kwargs)
    except (Exception, SystemExit) as e:
        return {"error": describe(e, uf.file)}
    name = getattr(uf.fn, "__name__", "the reward function")
    try:
        return to_verdicts(value, len(response)) if batched else to_verdict(value)
    except Exception as e:  # BadResult, or an exotic object that broke the checks
        return {"error": one_line(f"{name}(): {e}")}
