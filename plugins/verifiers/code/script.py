"""The trusted side of the script formats (HumanEval, MBPP): plan the calls, then judge.

A dataset test never runs in the sandbox: its code, constants and expected values would be
readable there (stack frames, code objects, ``gc``), and a program that reads them instead
of computing the answer would pass. It runs here, in the judge process, twice per round:

* **plan** (``discover``): the test runs with every assert *softened* (``assert E, M``
  becomes ``try: E`` / ``except: pass``, so a wrong or unknown value never stops it and the
  message is never evaluated) and each call of a program function answered from the
  results known so far; an unknown call is recorded, with its arguments encoded as plain
  data, and answers a ``_Placeholder``. A placeholder passed straight back to the program
  travels as ``{"$r": j}`` ("what call j returned"); any other use of it (compare,
  arithmetic, iterate, ``bool``) raises ``_Speculative``, which a softened assert swallows
  and which otherwise stops the plan there. Round one's plan needs no program, so it is
  computed once per dataset row (``judge_plan``) and cached.
* **replay** (``judge_script``): the real test, with genuine builtins and asserts, the
  program's functions answering from the sandbox's results for the planned calls. A call
  the results do not hold means the test took a path the plan did not foresee (it
  branched on a result): the plan runs again with the results now known and its new calls
  go to a fresh sandbox with the old ones (so program objects are rebuilt), up to the
  verifier's ``max_rounds``; past that the test fails closed, saying so.

So the sandbox receives the program and, per test, a list ``[name, [args, kwargs]]`` of
calls in plain data: the inputs, never the comparisons, expected values, messages,
METADATA, helpers or imports of the test. The keys the replay looks results up by are
computed here from the planned calls, so the sandbox cannot answer a call it was not
asked; a malformed result list fails its test with a reason.
"""

from __future__ import annotations

import ast
import builtins
import json
import random
from collections import deque
from typing import Any

from .harness import Unencodable, encode
from .judge import _RAISABLE, decode_result

SOFT = "__srpo_soft__"
_MAX_CALLS = 20_000  # planned calls per test: a test looping on placeholders stops here


class _Unreplayable(BaseException):
    """A call the results cannot answer: fails the test even under ``except:``."""


class _Speculative(BaseException):
    """A placeholder was used as a value: this part of the plan cannot be foreseen."""


class Handle:
    """A program object the test may pass back to the program but not look into."""

    __slots__ = ("k",)

    def __init__(self, k: int) -> None:
        self.k = k

    def __repr__(self) -> str:
        return f"<program object {self.k}>"


def _no(*_: Any, **__: Any) -> Any:
    raise _Speculative


class _Placeholder:
    """What an unplanned call returns while planning; every use of it stops that path."""

    __slots__ = ("j",)

    def __init__(self, j: int) -> None:
        object.__setattr__(self, "j", j)

    __getattr__ = __setattr__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _no
    __hash__ = __bool__ = __len__ = __iter__ = __contains__ = __getitem__ = _no  # type: ignore[assignment]
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = _no
    __rtruediv__ = __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = _no
    __rpow__ = __neg__ = __pos__ = __abs__ = __invert__ = __and__ = __or__ = __xor__ = _no
    __rand__ = __ror__ = __rxor__ = __lshift__ = __rshift__ = __round__ = _no
    __int__ = __float__ = __index__ = __complex__ = __str__ = __repr__ = __format__ = _no  # type: ignore[assignment]
    __call__ = __reversed__ = __deepcopy__ = __copy__ = __reduce_ex__ = __reduce__ = _no  # type: ignore[assignment]


class _Soften(ast.NodeTransformer):
    """``assert E, M`` -> ``try: E`` / ``except (Exception, _Speculative): pass``."""

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        handler = ast.ExceptHandler(type=ast.Name(SOFT, ast.Load()), name=None, body=[ast.Pass()])
        body = [ast.Expr(self.visit(node.test))]
        return ast.copy_location(ast.Try(body, [handler], [], []), node)


_compiled: dict[tuple[str, bool], Any] = {}


def _code(src: str, name: str, soft: bool) -> Any:
    key = (src, soft)
    code = _compiled.get(key)
    if code is None:
        tree = ast.parse(src)
        if soft:
            tree = ast.fix_missing_locations(_Soften().visit(tree))
        code = compile(tree, name, "exec", dont_inherit=True)
        if len(_compiled) > 4096:
            _compiled.clear()
        _compiled[key] = code
    return code


def _canon_tree(v: Any) -> Any:
    if isinstance(v, list):
        return [_canon_tree(x) for x in v]
    if isinstance(v, dict) and len(v) == 1:
        ((tag, x),) = v.items()
        if isinstance(x, list):
            xs = [_canon_tree(y) for y in x]
            if tag in ("$s", "$fs", "$d"):  # iteration order may differ between processes
                xs.sort(key=lambda y: json.dumps(y, sort_keys=True))
            return {tag: xs}
    return v


def _key(name: str, enc: Any) -> str:
    """A canonical string naming the call ``name(*args, **kwargs)`` from its encoded
    ``[args, kwargs]`` (set and dict order do not matter)."""
    return name + "\x00" + json.dumps(_canon_tree(enc), sort_keys=True, separators=(",", ":"))


def _resolve(enc: Any, results: list[Any]) -> Any:
    """``enc`` with each ``{"$r": j}`` replaced by the value call ``j`` returned."""
    if isinstance(enc, list):
        return [_resolve(x, results) for x in enc]
    if isinstance(enc, dict) and len(enc) == 1:
        ((tag, x),) = enc.items()
        if tag == "$r":
            res = results[x] if type(x) is int and 0 <= x < len(results) else None
            if not isinstance(res, dict) or res.get("ok") is not True or "value" not in res:
                raise ValueError("no value")
            return res["value"]
        return {tag: _resolve(x, results)}
    return enc


def build_table(calls: list[Any], frame: Any) -> tuple[dict[str, deque[Any]] | None, str | None]:
    """The replay's lookup table from the planned ``calls`` and the sandbox's result frame.

    The frame is untrusted: anything out of shape fails the test with a reason."""
    if not isinstance(frame, dict) or frame.get("ok") is not True:
        etype = frame.get("etype") if isinstance(frame, dict) else None
        error = frame.get("error") if isinstance(frame, dict) else None
        if not isinstance(etype, str) or not isinstance(error, str):
            return None, "malformed result from the sandbox"
        return None, f"{etype}: {error}"[:300]
    results = frame.get("value")
    if not isinstance(results, list):
        return None, "malformed transcript from the sandbox"
    if len(results) != len(calls):  # the harness answers every call it is given
        return None, f"the sandbox answered {len(results)} of {len(calls)} calls"
    table: dict[str, deque[Any]] = {}
    for (name, enc), res in zip(calls, results, strict=True):
        if not isinstance(res, dict):
            return None, "malformed transcript from the sandbox"
        try:
            key = _key(name, _resolve(enc, results))
        except (ValueError, TypeError, RecursionError):
            continue  # an argument the program never produced: the test will miss it
        table.setdefault(key, deque()).append(res)
    return table, None


class _Run:
    """One run of a test against a table of answers (replay, or plan when ``plan``)."""

    def __init__(self, table: dict[str, deque[Any]], plan: bool, planned: int = 0) -> None:
        self.table, self.plan, self.base = table, plan, planned
        self.new: list[list[Any]] = []  # planned calls: [name, [args, kwargs] encoded]
        self.problems: list[str] = []
        self.missed = False
        self.handles: dict[int, Handle] = {}

    def _enc(self, o: Any) -> Any:
        if type(o) is Handle:
            return {"$h": o.k}
        if type(o) is _Placeholder:
            return {"$r": o.j}
        raise Unencodable(f"cannot pass a {type(o).__name__} to the program")

    def proxy(self, name: str) -> Any:
        def call(*a: Any, **kw: Any) -> Any:
            try:
                enc = encode([list(a), dict(kw)], handle=self._enc)
                key = _key(name, enc)
            except (Unencodable, RecursionError, ValueError) as e:
                self.problems.append(f"{name}: {e}"[:300])
                raise _Unreplayable from None
            q = self.table.get(key)
            if not q:
                if self.plan and len(self.new) < _MAX_CALLS:
                    self.new.append([name, enc])
                    return _Placeholder(self.base + len(self.new) - 1)
                self.missed = True
                self.problems.append(f"the program was not asked {key.replace(chr(0), '')[:200]}")
                raise _Unreplayable
            return self._answer(name, q.popleft())

        call.__name__ = name
        return call

    def _answer(self, name: str, res: dict[str, Any]) -> Any:
        v = res.get("value")
        if res.get("ok") is True and isinstance(v, dict) and list(v) == ["$h"]:
            k = v["$h"]
            if type(k) is not int:
                self.problems.append("malformed transcript from the sandbox")
                raise _Unreplayable
            return self.handles.setdefault(k, Handle(k))
        r = decode_result(res)
        if r.ok:
            return r.value
        exc = _RAISABLE.get(r.etype)
        if exc is None:
            self.problems.append(f"{name} raised {r.etype}: {r.error}"[:300])
            raise _Unreplayable
        raise exc(r.error)

    def run(self, spec: dict[str, Any], test: str) -> tuple[bool, str | None]:
        """(passed, reason) of the test; while planning, only ``new`` matters."""
        random.seed(int(spec.get("seed", 0)))
        ns: dict[str, Any] = {"__builtins__": builtins, "__name__": "__srpo_test__"}
        ns[SOFT] = (Exception, _Speculative)
        try:
            exec(_code(spec["preamble"], "<test setup>", self.plan), ns)
            for n in spec["proxy"]:
                ns[n] = self.proxy(n)
            exec(_code(test, "<test>", self.plan), ns)
        except (_Unreplayable, _Speculative):
            return False, self.problems[0] if self.problems else "unreplayable call"
        except AssertionError as e:
            return False, self.problems[0] if self.problems else f"assertion failed ({e})"[:300]
        except BaseException as e:
            if self.problems:
                return False, self.problems[0]
            return False, f"{type(e).__name__}: {e}"[:300]
        if self.problems:
            return False, self.problems[0]
        return True, None


def plan_calls(spec: dict[str, Any], test: str, calls: list[Any], frame: Any) -> list[Any]:
    """The calls of ``test`` not yet asked, given the answers to ``calls`` so far."""
    table, _ = build_table(calls, frame) if calls else ({}, None)
    r = _Run(table or {}, plan=True, planned=len(calls))
    r.run(spec, test)
    return r.new


def judge_plan(msg: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``plan``: each test's first-round calls (no program needed)."""
    return {"calls": [plan_calls(msg, t, [], None) for t in msg["tests"]]}


def judge_script(msg: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``script``: per test a verdict ``[passed, reason]``, or ``[None, calls]``
    with the calls to add for another round (only while ``msg["more"]``)."""
    out: list[list[Any]] = []
    for test, calls, frame in zip(msg["tests"], msg["calls"], msg["frames"], strict=True):
        table, why = build_table(calls, frame)
        if table is None:
            out.append([False, why])
            continue
        r = _Run(table, plan=False)
        ok, why = r.run(msg, test)
        if not ok and r.missed:
            new = plan_calls(msg, test, calls, frame) if msg.get("more") else []
            if new:
                out.append([None, new])
                continue
            why = (
                "the test's calls depend on the program's results beyond the planned "
                f"rounds (failed closed): {why}"
            )
        out.append([ok, why if why is None else why[:500]])
    return {"verdicts": out}
