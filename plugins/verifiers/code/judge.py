"""The trusted side: turn a reference into sandbox requests, and decide pass/fail itself.

Assertion tests are rewritten so that only the parts that touch the program run in the
sandbox. Every maximal expression chain rooted at a name the test does not define itself
(not a builtin, not a stdlib module, not assigned in the test) is a *hole*: ``f(2)``,
``Solution().twoSum([2, 7], 9)``, ``f(x).val``. The sandbox evaluates holes and returns
plain data; the test itself (the comparison, ``abs``, ``sorted``, ``math.isclose`` ...) runs
here, with genuine builtins, against values the program returned. Expected values never
enter the sandbox.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from .harness import encode
from .values import decode_value

HOLE = "__srpo_hole__"
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


class _HoleMaker(ast.NodeTransformer):
    def __init__(self, tainted: set[str], bound: set[str]) -> None:
        self.tainted = tainted
        self.bound = bound
        self.holes: list[tuple[str, list[str]]] = []  # (source, host names it needs)

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Name | ast.Attribute | ast.Subscript | ast.Call):
            base = _chain_base(node)
            if isinstance(base, ast.Name) and base.id in self.tainted:
                if not isinstance(getattr(node, "ctx", ast.Load()), ast.Load):
                    raise ReferenceError_("tests may not assign to program objects")
                inner_bound = _bound_names(node)
                needs = sorted(
                    {
                        n.id
                        for n in ast.walk(node)
                        if isinstance(n, ast.Name)
                        and n.id in self.bound
                        and n.id not in inner_bound
                    }
                )
                src = ast.unparse(node)
                self.holes.append((src, needs))
                env = ast.Dict(
                    keys=[ast.Constant(n) for n in needs],
                    values=[ast.Name(n, ast.Load()) for n in needs],
                )
                return ast.copy_location(
                    ast.Call(ast.Name(HOLE, ast.Load()), [ast.Constant(src), env], []), node
                )
        return self.generic_visit(node)


@dataclass
class CompiledTest:
    source: str
    code: Any  # code object run on the trusted side
    modules: dict[str, Any]  # stdlib modules the test uses without importing
    static: list[str]  # holes that need no host value: requested up front


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
    static = [src for src, needs in maker.holes if not needs]
    return CompiledTest(source, code, modules, static)


# ------------------------------------------------------------------------ references


@dataclass
class Spec:
    """A validated reference: how to build requests and how to judge them."""

    kind: str  # "asserts" | "io" | "stdin"
    fn_name: str | None = None
    tests: list[CompiledTest] = field(default_factory=list)
    inputs: list[list[Any]] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)
    stdin_tests: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_tests(self) -> int:
        if self.kind == "asserts":
            return len(self.tests)
        if self.kind == "io":
            return len(self.inputs)
        return len(self.stdin_tests)


def parse_reference(ref: Any) -> Spec:
    """Validate a ``Prompt.reference`` (dict or JSON string) into a ``Spec``."""
    if isinstance(ref, str):
        try:
            ref = json.loads(ref)
        except json.JSONDecodeError as e:
            raise ReferenceError_(f"reference is not JSON: {e}") from e
    if not isinstance(ref, dict):
        raise ReferenceError_(f"reference must be a dict, got {type(ref).__name__}")
    fn = ref.get("fn_name")
    if fn is not None and (not isinstance(fn, str) or not fn.isidentifier()):
        raise ReferenceError_(f"bad fn_name {fn!r}")
    kinds = [k for k in ("tests", "inputs", "stdin_tests") if k in ref]
    if len(kinds) != 1:
        raise ReferenceError_("reference needs exactly one of tests / inputs / stdin_tests")
    if "tests" in ref:
        tests = ref["tests"]
        if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
            raise ReferenceError_("tests must be a list of strings")
        names = frozenset([fn] if fn else [])
        return Spec("asserts", fn, tests=[compile_assert_test(t, names) for t in tests])
    if "inputs" in ref:
        if not fn:
            raise ReferenceError_("inputs/outputs tests need fn_name")
        ins, outs = ref["inputs"], ref.get("outputs")
        if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs):
            raise ReferenceError_("inputs and outputs must be lists of equal length")
        ins = [x if isinstance(x, list) else [x] for x in ins]
        return Spec("io", fn, inputs=ins, outputs=outs)
    cases = ref["stdin_tests"]
    if not isinstance(cases, list):
        raise ReferenceError_("stdin_tests must be a list")
    pairs = []
    for c in cases:
        if not isinstance(c, dict) or not isinstance(c.get("input"), str):
            raise ReferenceError_("each stdin test needs string 'input' and 'output'")
        if not isinstance(c.get("output"), str):
            raise ReferenceError_("each stdin test needs string 'input' and 'output'")
        pairs.append((c["input"], c["output"]))
    return Spec("stdin", fn, stdin_tests=pairs)


def io_request(fn_name: str, args: list[Any]) -> dict[str, Any]:
    """Call ``fn_name`` (a top-level function, or a method of ``Solution``) with ``args``."""
    src = (
        f"({fn_name} if {fn_name!r} in globals() else getattr(Solution(), {fn_name!r}))"
        "(*__srpo_args)"
    )
    return {"src": src, "env": encode({"__srpo_args": args})}


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


def run_assert_test(
    test: CompiledTest, results: dict[str, HoleResult], pending: dict[str, dict[str, Any]]
) -> tuple[bool | None, str | None]:
    """(passed, reason); passed is None when holes are still pending."""
    asked: list[str] = []

    def hole(src: str, env: dict[str, Any]) -> Any:
        try:
            req = hole_request(src, env)
        except TypeError as e:
            raise HoleError(f"cannot pass test value to the program: {e}") from None
        key = request_key(req)
        res = results.get(key)
        if res is None:
            pending[key] = req
            asked.append(key)
            raise _Pending
        if res.ok:
            return res.value
        exc = _RAISABLE.get(res.etype)
        if exc is not None:
            raise exc(res.error)
        raise HoleError(f"{res.etype}: {res.error}")

    g: dict[str, Any] = {"__builtins__": builtins, HOLE: hole, **test.modules}
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
        try:
            return HoleResult(True, decode_value(frame.get("value")))
        except (ValueError, TypeError) as e:
            return HoleResult(False, etype="Unencodable", error=f"bad value: {e}"[:300])
    etype, error = frame.get("etype"), frame.get("error")
    etype = etype[:100] if isinstance(etype, str) else "Error"
    return HoleResult(False, etype=etype, error=error[:2000] if isinstance(error, str) else "")
