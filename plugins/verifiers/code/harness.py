"""The in-sandbox harness (stdlib only) and the value codec shared with the trusted side.

This file is executed *inside* the sandbox as ``python -I -c <source>``; the trusted side
also imports it for ``encode``/``decode``. Its job is deliberately small: set the limits,
drop privileges, execute the program, then evaluate the expressions the trusted side asks
for (single steps on program objects: ``f(2)``, ``(Solution()).twoSum([2, 7], 9)``, never
``f(2).startswith("abc")``) and stream back their *values*.
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
per request, in order; a value that is not plain data comes back as ``{"$h": 0}`` (a
program object: the trusted side may ask for a step on it in a later request, and the
object is rebuilt there from the chain that made it). Two more request kinds serve ``formats``: ``{"script": {"calls": [...]}}``
makes the calls the trusted side planned for one dataset test and returns their results
(``_run_script``; the test itself never comes here); ``{"stdio": {...}}`` requests (all of a run) run the program as
``__main__`` once per case in forked children, never in this process (``_serve_stdio``).
In ``stdin`` mode the program runs as ``__main__`` on the real
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


def encode(v: Any, depth: int = 0, handle: Any = None) -> Any:
    """Plain data -> JSON-able tagged form. Only exact plain types survive the trip.

    ``handle``: called on a value that is not plain data; returns its tagged stand-in
    (``{"$h": k}``, see ``formats``) or raises ``Unencodable``."""
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
    d, h = depth + 1, handle
    if isinstance(v, list):
        return [encode(x, d, h) for x in v]
    if isinstance(v, tuple):
        return {"$t": [encode(x, d, h) for x in v]}
    if isinstance(v, frozenset):
        return {"$fs": [encode(x, d, h) for x in v]}
    if isinstance(v, set):
        return {"$s": [encode(x, d, h) for x in v]}
    if isinstance(v, dict):
        return {"$d": [[encode(k, d, h), encode(x, d, h)] for k, x in v.items()]}
    if handle is not None:
        return handle(v)
    raise Unencodable(f"cannot return a {type(v).__name__} to the judge")


def decode(v: Any, ref: Any = None) -> Any:
    """Inverse of ``encode``; builds only plain builtin types (never calls untrusted code).

    ``ref(tag, k)``: resolves the references ``{"$h": k}`` / ``{"$r": k}`` (``_run_script``)."""
    if isinstance(v, list):
        return [decode(x, ref) for x in v]
    if not isinstance(v, dict):
        return v
    if len(v) != 1:
        raise ValueError("malformed value")
    ((tag, x),) = v.items()
    if tag == "$t":
        return tuple(decode(y, ref) for y in x)
    if tag == "$s":
        return {decode(y, ref) for y in x}
    if tag == "$fs":
        return frozenset(decode(y, ref) for y in x)
    if tag == "$d":
        return {decode(k, ref): decode(y, ref) for k, y in x}
    if tag in ("$h", "$r") and ref is not None and type(x) is int:
        return ref(tag, x)
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
    reqs = msg["requests"]
    if reqs and "stdio" in reqs[0]:  # stdin/stdout cases: the program runs in children only
        _serve_stdio(program, reqs, emit)
        return
    g = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(compile(program, "solution.py", "exec"), g)
    except BaseException as e:  # SystemExit too: the program ended itself before any test
        emit({"init": False, "error": f"{type(e).__name__}: {e}"[:2000]})
        return
    emit({"init": True})
    for k, req in enumerate(msg["requests"]):
        try:
            if "script" in req:
                res = {"i": k, "ok": True, "value": _run_script(req["script"], g)}
            else:
                env = decode(req["env"])
                value = eval(compile(req["src"], f"<test {k}>", "eval"), g, env)
                try:
                    enc = encode(value)
                except Unencodable:  # a program object: the trusted side may step on it
                    enc = {"$h": 0}
                res = {"i": k, "ok": True, "value": enc}
        except BaseException as e:
            res = {"i": k, "ok": False, "etype": type(e).__name__, "error": str(e)[:2000]}
        try:
            emit(res)
        except BaseException as e:
            emit({"i": k, "ok": False, "etype": "Unencodable", "error": repr(e)[:2000]})


def _run_script(spec: dict[str, Any], g: dict[str, Any]) -> list[Any]:
    """Make the calls the trusted side planned for one dataset test, in order.

    ``spec["calls"]``: ``[[name, [args, kwargs]], ...]`` in ``encode``'s form, where
    ``{"$h": k}`` is the k-th program object returned so far and ``{"$r": j}`` what call
    ``j`` returned. No test code, expected value or comparison comes here (``script``).
    Returns one result per call: ``{"ok": true, "value": enc}`` (a program object as
    ``{"$h": k}``) or ``{"ok": false, "etype", "error"}``; nothing here decides pass/fail.
    """
    objs: dict[int, int] = {}
    kept: list[Any] = []  # program objects by handle (kept alive: ids stay unique)
    raw: list[Any] = []  # what each call returned (``missing`` when it raised)
    missing = object()
    out: list[Any] = []

    def handle(o: Any) -> Any:
        k = objs.get(id(o))
        if k is None:
            k = objs[id(o)] = len(kept)
            kept.append(o)
        return {"$h": k}

    def ref(tag: str, x: Any) -> Any:
        got = kept[x] if tag == "$h" else raw[x]
        if got is missing:
            raise ValueError("an argument the program did not produce")
        return got

    for name, enc in spec["calls"]:
        try:
            fn = g.get(name)
            if not callable(fn):
                raise NameError(f"name {name!r} is not defined")
            a, kw = decode(enc, ref)
            r = fn(*a, **kw)
        except BaseException as e:
            raw.append(missing)
            out.append({"ok": False, "etype": type(e).__name__, "error": str(e)[:500]})
            continue
        raw.append(r)
        try:
            res = {"ok": True, "value": encode(r, handle=handle)}
        except BaseException as e:
            res = {"ok": False, "etype": "Unencodable", "error": repr(e)[:500]}
        out.append(res)
    return out


def _serve_stdio(program: str, reqs: list[dict[str, Any]], emit: Any) -> None:
    """Run ``program`` as ``__main__`` once per case, each in a forked child of this process.

    The program never runs in this process: each child gets the case's input on fd 0 and
    memfds on fds 1 and 2, and is SIGKILLed (with its process group) past ``step_s``. The
    frame per case carries the exit status and captured output; the trusted side compares.
    """
    import signal
    import time

    try:
        code = compile(program, "main.py", "exec")
    except BaseException as e:
        emit({"init": False, "error": f"{type(e).__name__}: {e}"[:2000]})
        return
    emit({"init": True})
    sys.stdout.flush()
    sys.stderr.flush()
    for k, req in enumerate(reqs):
        case = req["stdio"]
        fin = os.memfd_create("stdin")
        fout = os.memfd_create("stdout")
        ferr = os.memfd_create("stderr")
        data = case["input"].encode()
        while data:
            data = data[os.write(fin, data) :]
        os.lseek(fin, 0, 0)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                os.setpgid(0, 0)
                os.dup2(fin, 0)
                os.dup2(fout, 1)
                os.dup2(ferr, 2)
                os.closerange(3, 1 << 16)  # the result channel and the memfds' originals
                status = _run_main(code)
            finally:
                os._exit(status)
        os.close(fin)
        timed_out = False
        deadline = time.monotonic() + case["step_s"]
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        while True:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                _sigkill(pid, signal.SIGKILL)
                done, st = os.waitpid(pid, 0)
                break
            if pidfd is not None:
                import select

                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.002))
        if pidfd is not None:
            os.close(pidfd)
        _sigkill(pid, signal.SIGKILL)  # what the case left running in its group
        size = os.fstat(fout).st_size
        over = size > case["max_output"]
        out = os.pread(fout, min(size, case["max_output"]), 0)
        esize = os.fstat(ferr).st_size
        err = os.pread(ferr, min(esize, 2000), max(0, esize - 2000))
        os.close(fout)
        os.close(ferr)
        rc = os.waitstatus_to_exitcode(st)
        value = {
            "status": rc,
            "timeout": timed_out,
            "over": over,
            "stdout": out.decode(errors="replace"),
            "stderr": err.decode(errors="replace"),
        }
        emit({"i": k, "ok": True, "value": value})


def _sigkill(pid: int, sig: int) -> bool:
    """Signal the process group ``pid``, else the process; False if neither exists."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, sig)
            return True
        except OSError:
            continue
    return False


def _run_main(code: Any) -> int:  # pragma: no cover - runs in a forked child
    import builtins
    import io

    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)))
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
    sys.argv = ["main.py"]
    g = {"__name__": "__main__", "__builtins__": builtins, "__file__": "main.py"}
    status = 0
    try:
        exec(code, g)
    except SystemExit as e:
        c = e.code
        if c is None:
            status = 0
        elif isinstance(c, int):
            status = c & 0xFF
        else:
            sys.stderr.write(f"{c}\n")
            status = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        status = 1
    for f in (sys.stdout, sys.__stdout__):
        try:
            if f is not None:
                f.flush()
        except BaseException:
            status = status or 1
    return status


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
