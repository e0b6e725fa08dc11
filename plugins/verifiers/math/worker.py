"""The math-verify worker process: compares answers, one JSON frame in, one JSON frame out.

``pool.Worker`` runs this file's text plus ``main()`` as ``python -c``; the trainer never
imports it (it would install a SIGALRM handler and import sympy). It is a separate process
because sympy can hang inside C code where no signal reaches: the soft alarm here catches
the common slow cases, and the trusted side kills the whole process when even that fails.

Protocol (frames of ``plugins/verifiers/_worker.py``: an 8-byte big-endian length, then the
body): after start-up the worker writes ``{"ready": true}``; then per request
``{"gold": str, "pred": str, "soft": seconds}`` it answers ``{"correct": bool}`` or
``{"correct": false, "error": str}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: math-verify and latex2sympy log a warning per unparsable or timed-out answer; in this
#: process they are noise (stderr goes nowhere), so exactly these loggers are silenced.
NOISY_LOGGERS = ("math_verify", "latex2sympy2_extended")

#: Parsed reference answers, cached: a group's rollouts share one reference.
_GOLD_CACHE_MAX = 4096


class _Timeout(BaseException):
    """The soft alarm; a BaseException so math-verify's ``except Exception`` cannot eat it."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


def _verdict(
    req: dict[str, Any], gold_cache: dict[str, Any], parse: Any, verify: Any
) -> dict[str, Any]:
    """Compare one request's answers under its soft time budget."""
    try:
        signal.setitimer(signal.ITIMER_REAL, req["soft"])
        g = gold_cache.get(req["gold"])
        if g is None:
            g = parse("\\boxed{" + req["gold"] + "}", parsing_timeout=None)
            if len(gold_cache) > _GOLD_CACHE_MAX:
                gold_cache.clear()
            gold_cache[req["gold"]] = g
        p = parse("\\boxed{" + req["pred"] + "}", parsing_timeout=None)
        if not g:
            return {"correct": False, "error": "reference answer unparsable"}
        if not p:
            return {"correct": False, "error": "answer unparsable"}
        return {"correct": bool(verify(g, p, timeout_seconds=None))}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _write(out: Any, obj: dict[str, Any]) -> None:
    body = json.dumps(obj).encode()
    out.write(struct.pack("!Q", len(body)) + body)
    out.flush()


def _requests(inp: Any) -> Any:
    """Request bodies until stdin closes."""
    while len(head := inp.read(8)) == 8:
        body = inp.read(struct.unpack("!Q", head)[0])
        yield body


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints must not corrupt the protocol
    import logging

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    from math_verify import parse, verify

    signal.signal(signal.SIGALRM, _alarm)
    # first sympy use in a process is slow: pay it before taking requests
    with contextlib.suppress(Exception):
        verify(parse("\\boxed{(x+1)^2}"), parse("\\boxed{x^2+2x+1}"))
    _write(out, {"ready": True})
    gold_cache: dict[str, Any] = {}
    for body in _requests(sys.stdin.buffer):
        try:
            res = _verdict(json.loads(body), gold_cache, parse, verify)
        except _Timeout:
            res = {"correct": False, "error": "timeout (sympy)"}
        except BaseException as e:
            res = {"correct": False, "error": (f"{type(e).__name__}: {e}")[:300]}
        _write(out, res)
