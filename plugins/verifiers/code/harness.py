"""The in-sandbox harness (stdlib only) and the value codec shared with the trusted side.

This file is executed *inside* the sandbox as ``python -I -c <source>``; the trusted side
also imports it for ``encode``/``decode``. Its job is deliberately small: set the limits,
drop privileges, execute the program, then evaluate the expressions the trusted side asks
for ("holes": ``f(2)``, ``Solution().twoSum([2, 7], 9)``) and stream back their *values*.
It never decides pass/fail: the trusted side compares the values with expectations the
sandbox never sees. So whatever the program does to this process (patching builtins,
``assert``, ``sys.modules``, this harness, writing fake frames) it can at most forge values,
and forging a correct value means computing it.

Protocol: the trusted side writes one length-prefixed JSON message on fd 3::

    {"mode": "calls" | "stdin", "program": str, "requests": [{"src": str, "env": enc}],
     "limits": {...}, "uid": int | null}

In ``calls`` mode the harness answers on fd 4 with length-prefixed JSON frames: first
``{"init": true}`` or ``{"init": false, "error": str}``, then one
``{"i": k, "ok": true, "value": enc}`` / ``{"i": k, "ok": false, "etype": str, "error": str}``
per request, in order. In ``stdin`` mode the program runs as ``__main__`` on the real
stdin/stdout and its exit status is the process's.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing import at run time: every millisecond of start-up counts
    from typing import Any

MAX_INT_DIGITS = 4000  # below CPython's int<->str limit; bigger ints travel as hex


class Unencodable(TypeError):
    """A value that is not plain data (functions, custom objects...)."""


def encode(v: Any, depth: int = 0) -> Any:
    """Plain data -> JSON-able tagged form. Only exact plain types survive the trip."""
    if depth > 200:
        raise Unencodable("nesting too deep")
    if v is None or isinstance(v, bool | str):
        return str(v) if isinstance(v, str) and type(v) is not str else v
    if isinstance(v, int):
        v = int(v)
        if abs(v).bit_length() > MAX_INT_DIGITS * 3:  # ~ > 4000 decimal digits
            return {"$i": hex(v)}
        return v
    if type(v).__module__ == "numpy" and hasattr(v, "tolist"):
        return encode(v.tolist(), depth + 1)
    if isinstance(v, float):
        v = float(v)
        return v if math.isfinite(v) else {"$f": repr(v)}
    if isinstance(v, complex):
        return {"$c": [encode(v.real), encode(v.imag)]}
    if isinstance(v, bytes | bytearray):
        return {"$b": bytes(v).hex()}
    d = depth + 1
    if isinstance(v, list):
        return [encode(x, d) for x in v]
    if isinstance(v, tuple):
        return {"$t": [encode(x, d) for x in v]}
    if isinstance(v, frozenset):
        return {"$fs": [encode(x, d) for x in v]}
    if isinstance(v, set):
        return {"$s": [encode(x, d) for x in v]}
    if isinstance(v, dict):
        return {"$d": [[encode(k, d), encode(x, d)] for k, x in v.items()]}
    raise Unencodable(f"cannot return a {type(v).__name__} to the judge")


def decode(v: Any) -> Any:
    """Inverse of ``encode``; builds only plain builtin types (never calls untrusted code)."""
    if isinstance(v, list):
        return [decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    if len(v) != 1:
        raise ValueError("malformed value")
    ((tag, x),) = v.items()
    if tag == "$t":
        return tuple(decode(y) for y in x)
    if tag == "$s":
        return {decode(y) for y in x}
    if tag == "$fs":
        return frozenset(decode(y) for y in x)
    if tag == "$d":
        return {decode(k): decode(y) for k, y in x}
    if tag == "$i":
        return int(x, 16)
    if tag == "$f":
        return float(x)
    if tag == "$c":
        return complex(decode(x[0]), decode(x[1]))
    if tag == "$b":
        return bytes.fromhex(x)
    raise ValueError(f"unknown tag {tag!r}")


def frame(obj: Any) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _apply_limits(limits: dict[str, int], uid: int | None) -> None:
    """Trusted setup, done before any program byte runs (we may still be root here)."""
    import resource

    for name, value in limits.items():
        res = getattr(resource, name)
        resource.setrlimit(res, (value, value))
    if uid is not None and os.getuid() != uid:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise SystemExit(97)


def main(in_fd: int, out_fd: int) -> None:  # pragma: no cover - runs inside the sandbox
    """Harness entry: ``python -I -c <this file + main(in_fd, out_fd)>``."""
    (n,) = struct.unpack(">I", _read_exact(in_fd, 4))
    msg = json.loads(_read_exact(in_fd, n))
    os.close(in_fd)
    try:
        _apply_limits(msg["limits"], msg.get("uid"))
    except SystemExit:
        raise
    except BaseException as e:
        os.write(2, f"harness: limits failed: {e!r}\n".encode())
        os._exit(98)
    out = os.dup(out_fd)  # keep our own handle; the program may close or reuse out_fd
    os.close(out_fd)
    os.write(out, frame({"started": True}))
    sys.set_int_max_str_digits(0)
    program: str = msg["program"]
    import builtins

    if msg["mode"] == "stdin":
        os.close(out)
        sys.argv = ["main.py"]
        g = {"__name__": "__main__", "__builtins__": builtins, "__file__": "main.py"}
        try:
            code = compile(program, "main.py", "exec")
            exec(code, g)
        except SystemExit:
            raise
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stdout.flush()
            os._exit(1)
        sys.stdout.flush()
        return

    _serve_calls(msg, lambda obj: os.write(out, frame(obj)))
    os._exit(0)


def _serve_calls(msg: dict[str, Any], emit: Any) -> None:
    """Execute the program, then evaluate each request and ``emit`` its result frame."""
    import builtins

    program: str = msg["program"]
    g = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(program, "solution.py", "exec"), g)
    except BaseException as e:  # SystemExit too: the program ended itself before any test
        emit({"init": False, "error": f"{type(e).__name__}: {e}"[:2000]})
        return
    emit({"init": True})
    for k, req in enumerate(msg["requests"]):
        try:
            env = decode(req["env"])
            value = eval(compile(req["src"], f"<test {k}>", "eval"), g, env)
            res = {"i": k, "ok": True, "value": encode(value)}
        except BaseException as e:
            res = {"i": k, "ok": False, "etype": type(e).__name__, "error": str(e)[:2000]}
        try:
            emit(res)
        except BaseException as e:
            emit({"i": k, "ok": False, "etype": "Unencodable", "error": repr(e)[:2000]})


def remote_main(msg_json: str, token: str) -> None:  # pragma: no cover - remote sandbox
    """Entry for a remote sandbox with no extra fds: frames go to stdout as token lines."""
    msg = json.loads(msg_json)
    sys.set_int_max_str_digits(0)
    out = os.dup(1)

    def emit(obj: Any) -> None:
        os.write(out, ("\n" + token + json.dumps(obj) + "\n").encode())

    emit({"started": True})
    _serve_calls(msg, emit)
    sys.stdout.flush()
    os._exit(0)
