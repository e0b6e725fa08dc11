"""The trusted side: turn a reference into sandbox requests, and decide pass/fail itself.

Assertion tests are rewritten so that only steps on program objects run in the sandbox.
Every expression chain rooted at a name the test does not define itself (not a builtin, not
a stdlib module, not assigned in the test) becomes a series of *steps*, taken one at a time
(``_HoleMaker``, ``_Steps``): ``f(2).startswith("abc")`` is the call ``f(2)``, then the
method ``startswith``. A step on a program object (a program name, or a value the sandbox
reported as not plain data: a ``Remote``) is a sandbox request holding the chain that built
the object plus this step, with every value it passes in ``env``: ``f(*[2])``,
``Solution()`` then ``(Solution()).twoSum(*[[2, 7], 9])``, ``f(x)`` then ``(f(*[x])).val``.
A step on plain data runs here, on the genuine builtin value ``values.decode_value`` made of
what the program returned, so ``.startswith("abc")``, ``.count(3)``, ``[0:3]``, ``==``,
``abs``, ``sorted``, ``math.isclose`` ... never reach the sandbox, nor any expected value
in them. What the sandbox receives: program names, the attribute names of steps on program
objects, and the arguments and subscripts the test passes to program objects (its inputs;
a lambda using no test name travels as source). A step whose result is not known yet ends
the test run (``_Pending``); it is asked for in the next round, in a fresh sandbox.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from .harness import encode
from .values import decode_value

_BUILTINS = frozenset(dir(builtins))
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ()))
_NO_IMPORT = frozenset({"antigravity", "this", "idlelib", "turtle", "tkinter", "turtledemo"})
_RAISABLE = {
    n: getattr(builtins, n)
    for n in _BUILTINS
    if isinstance(getattr(builtins, n), type)
    and issubclass(getattr(builtins, n), Exception)
    and n not in ("StopIteration", "StopAsyncIteration")
}


class ReferenceError_(ValueError):
    """The reference (dataset row) is malformed: a data problem, reported per sample."""


class HoleError(Exception):
    """The program failed to produce a value for a hole (raised, timed out, unencodable)."""


class _Pending(BaseException):
    """A hole whose value is not known yet: the test is re-run after the next round."""


# ------------------------------------------------------------------------ test rewriting


def _bound_names(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store | ast.Del):
            out.add(n.id)
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(n.name)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
        elif isinstance(n, ast.alias):
            out.add((n.asname or n.name).split(".")[0])
        elif isinstance(n, ast.ExceptHandler) and n.name:
            out.add(n.name)
    return out


def _chain_base(node: ast.AST) -> ast.AST:
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


class Remote:
    """A program object the trusted side holds by the chain of steps that builds it.

    ``node``: ``("name", n)``, ``("call", base, args, kwargs)``,
    ``("meth", base, attr, args, kwargs)``, ``("attr", base, attr)``, ``("sub", base, key)``.
    ``lazy``: a program name not evaluated yet (``f``, ``Solution``); otherwise the sandbox
    said the chain's value is not plain data. Never compared, hashed by value or iterated
    here: only calling it, reading an attribute or subscripting it (a step on the program's
    side, with the chain that built it) does anything."""

    __slots__ = ("lazy", "node", "steps")

    def __init__(self, node: tuple[Any, ...], lazy: bool, steps: Any) -> None:
        self.node, self.lazy, self.steps = node, lazy, steps

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.steps.call(self, list(args), kwargs)

    def __getattr__(self, attr: str) -> Any:  # test code outside a chain: ``g(f(2)).val``
        if attr.startswith("__"):
            raise AttributeError(attr)
        return self.steps.attr(self, attr)

    def __getitem__(self, key: Any) -> Any:
        return self.steps.sub(self, key)


class _Src:
    """Test source passed to the program as an argument (a lambda using no test names)."""

    __slots__ = ("src",)

    def __init__(self, src: str) -> None:
        self.src = src


def _has_remote(v: Any, depth: int = 0) -> bool:
    if isinstance(v, Remote | _Src):
        return True
    if depth > 50:
        return False
    if isinstance(v, list | tuple | set | frozenset):
        return any(_has_remote(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return any(_has_remote(x, depth + 1) for kv in v.items() for x in kv)
    return False


def _render(node: tuple[Any, ...], env: dict[str, Any]) -> str:
    """Source of a chain of steps; the values it passes go into ``env`` (never inline)."""

    def value(v: Any) -> str:
        if isinstance(v, Remote):
            return "(" + _render(v.node, env) + ")"
        if isinstance(v, _Src):
            return "(" + v.src + ")"
        if _has_remote(v):
            if isinstance(v, list):
                return "[" + "".join(value(x) + ", " for x in v) + "]"
            if isinstance(v, tuple):
                return "(" + "".join(value(x) + ", " for x in v) + ")"
            if isinstance(v, dict):
                return "{" + "".join(f"{value(k)}: {value(x)}, " for k, x in v.items()) + "}"
            inner = "{" + "".join(value(x) + ", " for x in v) + "}"
            return f"frozenset({inner})" if isinstance(v, frozenset) else inner
        name = f"__srpo_{len(env)}"
        env[name] = v
        return name

    kind = node[0]
    if kind == "name":
        return node[1]
    b = node[1]
    base = _render(b.node if isinstance(b, Remote) else b, env)
    if kind == "call":
        return f"({base})(*{value(node[2])}, **{value(node[3])})"
    if kind == "meth":
        return f"({base}).{node[2]}(*{value(node[3])}, **{value(node[4])})"
    if kind == "attr":
        return f"({base}).{node[2]}"
    return f"({base})[{value(node[2])}]"


def step_request(node: tuple[Any, ...]) -> dict[str, Any]:
    """The sandbox request evaluating one chain of steps (only its last step is new)."""
    env: dict[str, Any] = {}
    src = _render(node, env)
    return hole_request(src, env)


STEPS = "__srpo_steps__"


class _HoleMaker(ast.NodeTransformer):
    """Rewrite every chain rooted at a program name into steps taken one at a time.

    ``f(2).startswith("abc")`` becomes ``S.meth(S.call(S.root("f"), [2], {}), "startswith",
    ["abc"], {})``: a step on a program object (a ``Remote``) is a sandbox request, a step
    on plain data runs here. Static requests (a program name called with literal
    arguments) are collected to be asked for up front."""

    def __init__(self, tainted: set[str], bound: set[str]) -> None:
        self.tainted = tainted
        self.bound = bound
        self.static: list[dict[str, Any]] = []

    def _s(self, meth: str, *args: ast.expr) -> ast.expr:
        fn = ast.Attribute(ast.Name(STEPS, ast.Load()), meth, ast.Load())
        return ast.Call(fn, list(args), [])

    def _args(self, call: ast.Call) -> tuple[ast.expr, ast.expr]:
        args: list[ast.expr] = []
        for a in call.args:
            if isinstance(a, ast.Starred):
                args.append(ast.Starred(self._arg(a.value), ast.Load()))
            else:
                args.append(self._arg(a))
        keys: list[ast.expr | None] = []
        vals: list[ast.expr] = []
        for kw in call.keywords:
            keys.append(None if kw.arg is None else ast.Constant(kw.arg))
            vals.append(self._arg(kw.value))
        return ast.List(args, ast.Load()), ast.Dict(keys, vals)

    def _arg(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Lambda):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            inner = _bound_names(node)
            if not any(n in self.bound or n in self.tainted for n in names - inner):
                return self._s("src", ast.Constant(ast.unparse(node)))
        return self.visit(node)

    def _literal(self, call: ast.Call) -> tuple[list[Any], dict[str, Any]] | None:
        if any(isinstance(a, ast.Starred) for a in call.args):
            return None
        if any(kw.arg is None for kw in call.keywords):
            return None
        try:
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
        return args, kwargs  # type: ignore[return-value]

    def _static(self, call: ast.Call) -> None:
        func = call.func
        if isinstance(func, ast.Name) and func.id in self.tainted:
            base, lit = ("name", func.id), self._literal(call)
            node = None if lit is None else ("call", base, lit[0], lit[1])
        elif (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in self.tainted
        ):
            base, lit = ("name", func.value.id), self._literal(call)
            node = None if lit is None else ("meth", base, func.attr, lit[0], lit[1])
        else:
            return
        if node is not None:
            with contextlib.suppress(TypeError, ValueError):
                self.static.append(step_request(node))

    def _chain(self, node: ast.expr) -> ast.expr:
        if isinstance(node, ast.Name):
            return self._s("root", ast.Constant(node.id))
        if isinstance(node, ast.Call):
            self._static(node)
            args, kwargs = self._args(node)
            if isinstance(node.func, ast.Attribute):
                obj = self._chain(node.func.value)
                return self._s("meth", obj, ast.Constant(node.func.attr), args, kwargs)
            return self._s("call", self._chain(node.func), args, kwargs)
        if isinstance(node, ast.Attribute):
            return self._s("attr", self._chain(node.value), ast.Constant(node.attr))
        assert isinstance(node, ast.Subscript)
        key = node.slice
        if isinstance(key, ast.Slice):
            parts = [
                self.visit(p) if p else ast.Constant(None) for p in (key.lower, key.upper, key.step)
            ]
            key = ast.Call(ast.Name("slice", ast.Load()), parts, [])
        else:
            key = self.visit(key)
        return self._s("sub", self._chain(node.value), key)

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Name | ast.Attribute | ast.Subscript | ast.Call):
            base = _chain_base(node)
            if isinstance(base, ast.Name) and base.id in self.tainted:
                if not isinstance(getattr(node, "ctx", ast.Load()), ast.Load):
                    raise ReferenceError_("tests may not assign to program objects")
                out = self._chain(node)  # type: ignore[arg-type]
                if isinstance(node, ast.Name):  # a program name used as a value
                    out = self._s("value", out)
                return ast.copy_location(out, node)
        return self.generic_visit(node)


@dataclass
class CompiledTest:
    source: str
    code: Any  # code object run on the trusted side
    modules: dict[str, Any]  # stdlib modules the test uses without importing
    static: list[dict[str, Any]]  # requests known without running the test: asked up front


def compile_assert_test(source: str, program_names: frozenset[str]) -> CompiledTest:
    """Rewrite one assertion test (any statements) into holes + trusted code."""
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as e:
        raise ReferenceError_(f"test is not valid Python: {e}") from e
    bound = _bound_names(tree)
    free = {
        n.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in bound
    }
    modules = {}
    tainted = set()
    for name in free:
        if name in program_names:
            tainted.add(name)
        elif name in _BUILTINS:
            continue
        elif name in _STDLIB and name not in _NO_IMPORT:
            modules[name] = importlib.import_module(name)
        else:
            tainted.add(name)
    maker = _HoleMaker(tainted, bound)
    tree = ast.fix_missing_locations(maker.visit(tree))
    code = compile(tree, "<test>", "exec")
    static = list({request_key(r): r for r in maker.static}.values())
    return CompiledTest(source, code, modules, static)


# ------------------------------------------------------------------------ requests


def hole_request(src: str, env: dict[str, Any]) -> dict[str, Any]:
    return {"src": src, "env": encode(env)}


def request_key(req: dict[str, Any]) -> str:
    return req["src"] + "\x00" + json.dumps(req["env"], sort_keys=True)


# ------------------------------------------------------------------------ judging


def values_match(got: Any, want: Any) -> bool:
    """Equality on plain data, lenient on tuple-vs-list and float rounding (APPS style)."""
    if type(got) is bool or type(want) is bool:
        return type(got) is type(want) and got == want
    if isinstance(got, float) or isinstance(want, float):
        if isinstance(got, int | float) and isinstance(want, int | float):
            return math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9) or got == want
        return False
    if isinstance(got, list | tuple) and isinstance(want, list | tuple):
        return len(got) == len(want) and all(
            values_match(a, b) for a, b in zip(got, want, strict=True)
        )
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(values_match(got[k], want[k]) for k in got)
    return type(got) is type(want) and got == want


def io_passes(got: Any, want: Any) -> bool:
    # APPS/TACO wrap single outputs in a list: accept [x] for x
    if values_match(got, want):
        return True
    return isinstance(want, list) and len(want) == 1 and values_match(got, want[0])


def normalize_output(text: str) -> list[str]:
    """Stdout comparison key: lines with surrounding whitespace stripped, no blank tail."""
    lines = [ln.strip() for ln in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return lines


@dataclass
class HoleResult:
    ok: bool
    value: Any = None
    etype: str = ""
    error: str = ""
    obj: bool = False  # the value is a program object, not plain data


class _Steps:
    """The steps of rewritten chains (``_HoleMaker``), run by the trusted side.

    A step on plain data runs here, on the genuine builtin value; a step on a program
    object (``Remote``) is a sandbox request for the chain that built it plus this step.
    Unknown results mark the request pending and stop the test (``_Pending``)."""

    def __init__(self, results: dict[str, HoleResult], pending: dict[str, Any]) -> None:
        self.results, self.pending = results, pending
        self.asked: list[str] = []

    def _ask(self, node: tuple[Any, ...]) -> Any:
        try:
            req = step_request(node)
        except TypeError as e:
            raise HoleError(f"cannot pass test value to the program: {e}") from None
        key = request_key(req)
        res = self.results.get(key)
        if res is None:
            self.pending[key] = req
            self.asked.append(key)
            raise _Pending
        if res.ok:
            return Remote(node, False, self) if res.obj else res.value
        exc = _RAISABLE.get(res.etype)
        if exc is not None:
            raise exc(res.error)
        raise HoleError(f"{res.etype}: {res.error}")

    def root(self, name: str) -> Remote:
        return Remote(("name", name), True, self)

    def src(self, source: str) -> _Src:
        return _Src(source)

    def value(self, obj: Any) -> Any:
        return self._ask(obj.node) if isinstance(obj, Remote) and obj.lazy else obj

    def call(self, obj: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if isinstance(obj, Remote):
            return self._ask(("call", obj, args, kwargs))
        return obj(*args, **kwargs)

    def meth(self, obj: Any, attr: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if isinstance(obj, Remote):
            return self._ask(("meth", obj, attr, args, kwargs))
        return getattr(obj, attr)(*args, **kwargs)

    def attr(self, obj: Any, attr: str) -> Any:
        obj = self.value(obj)
        if isinstance(obj, Remote):
            return self._ask(("attr", obj, attr))
        return getattr(obj, attr)

    def sub(self, obj: Any, key: Any) -> Any:
        obj = self.value(obj)
        if isinstance(obj, Remote):
            return self._ask(("sub", obj, key))
        return obj[key]


def run_assert_test(
    test: CompiledTest, results: dict[str, HoleResult], pending: dict[str, dict[str, Any]]
) -> tuple[bool | None, str | None]:
    """(passed, reason); passed is None when holes are still pending."""
    steps = _Steps(results, pending)
    asked = steps.asked
    g: dict[str, Any] = {"__builtins__": builtins, STEPS: steps, **test.modules}
    try:
        exec(test.code, g)
    except _Pending:
        return None, None
    except AssertionError as e:
        if asked:
            return None, None
        return False, f"assertion failed: {test.source[:200]}" + (f" ({e})" if str(e) else "")
    except Exception as e:
        if asked:
            return None, None
        return False, f"{type(e).__name__}: {str(e)[:300]}"
    if asked:  # the test swallowed a pending marker: run it again with the value
        return None, None
    return True, None


def decode_result(frame: dict[str, Any]) -> HoleResult:
    """A result frame as the judge sees it; a value over a cap is a failed hole."""
    if frame.get("ok") is True:
        if frame.get("value") == {"$h": 0}:  # not plain data: the program keeps it
            return HoleResult(True, obj=True)
        try:
            return HoleResult(True, decode_value(frame.get("value")))
        except (ValueError, TypeError) as e:
            return HoleResult(False, etype="Unencodable", error=f"bad value: {e}"[:300])
    etype, error = frame.get("etype"), frame.get("error")
    etype = etype[:100] if isinstance(etype, str) else "Error"
    return HoleResult(False, etype=etype, error=error[:2000] if isinstance(error, str) else "")
