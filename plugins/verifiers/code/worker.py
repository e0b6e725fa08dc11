"""The judge process: decode program values and run the tests on them, away from the trainer.

Tests are trusted, but the values they compute on are not: ``f(2) ** 2`` on a returned
60-Mbit integer, ``set(f(2))`` on colliding ints, ``"a" * f(2)``. No cap on values can
foresee every test, so the judging itself runs here, in a separate process that the trainer
kills at the sample's time budget (``judge_pool``), under an address-space cap and a CPU
limit that ends it if the trainer is gone. It imports only the stdlib and the judge's own
modules (loaded without the plugin package, so it starts in tens of milliseconds).

Protocol: JSON in the frames of ``plugins/verifiers/_worker.py`` (an 8-byte big-endian
length, then the body) on stdin, one answer per message on stdout::

    {"op": "asserts", "names": [str], "tests": {k: source}, "results": {key: frame}}
      -> {"verdicts": {k: [passed | null, reason | null]}, "pending": [request]}
    {"op": "io", "cases": [[frame, expected]]} -> {"verdicts": [[passed, reason | null]]}
    {"op": "plan", "preamble": str, "proxy": [str], "seed": int, "tests": [source]}
      -> {"calls": [[call]]}                       (per test; see ``script``)
    {"op": "script", ...plan's fields, "calls": [[call]], "frames": [frame], "more": bool}
      -> {"verdicts": [[passed, reason | null] | [null, [call]]]}
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
import time
from typing import Any

from .judge import CompiledTest, compile_assert_test, decode_result, io_passes, run_assert_test

_REASON_CHARS = 500
_compiled: dict[tuple[str, tuple[str, ...]], CompiledTest] = {}


def _test(source: str, names: list[str]) -> CompiledTest:
    key = (source, tuple(names))
    if key not in _compiled:
        if len(_compiled) > 10_000:
            _compiled.clear()
        _compiled[key] = compile_assert_test(source, frozenset(names))
    return _compiled[key]


def _reason(why: str | None) -> str | None:
    return None if why is None else why[:_REASON_CHARS]


def judge_asserts(msg: dict[str, Any]) -> dict[str, Any]:
    results = {k: decode_result(f) for k, f in msg["results"].items()}
    pending: dict[str, dict[str, Any]] = {}
    verdicts = {}
    for k, source in msg["tests"].items():
        passed, why = run_assert_test(_test(source, msg["names"]), results, pending)
        verdicts[k] = [passed, _reason(why)]
    return {"verdicts": verdicts, "pending": list(pending.values())}


def judge_io(msg: dict[str, Any]) -> dict[str, Any]:
    verdicts = []
    for frame, want in msg["cases"]:
        r = decode_result(frame)
        if not r.ok:
            verdicts.append([False, _reason(f"{r.etype}: {r.error}")])
        else:
            ok = io_passes(r.value, want)
            verdicts.append([ok, None if ok else "wrong answer"])
    return {"verdicts": verdicts}


def _read(n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(0, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _write(obj: dict[str, Any]) -> None:
    data = json.dumps(obj).encode()
    data = struct.pack("!Q", len(data)) + data
    while data:
        data = data[os.write(1, data) :]


def main(memory_bytes: int) -> None:  # pragma: no cover - runs in the judge process
    """Serve judge requests until stdin closes; each under a fresh CPU-time allowance."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.set_int_max_str_digits(4300)  # str(int) is quadratic: keep CPython's default cap
    while True:
        try:
            (n,) = struct.unpack("!Q", _read(8))
            msg = json.loads(_read(n))
        except EOFError:
            return
        used = time.process_time()
        # soft limit only: raised again for the next message; ends us if the trainer died
        budget = int(used + float(msg.get("cpu_s", 60))) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (budget, resource.RLIM_INFINITY))
        try:
            if msg["op"] in ("script", "plan"):
                from .script import judge_plan, judge_script

                ans = judge_script(msg) if msg["op"] == "script" else judge_plan(msg)
            else:
                ans = judge_asserts(msg) if msg["op"] == "asserts" else judge_io(msg)
        except MemoryError:
            ans = {"error": "judge out of memory"}
        _write(ans)
