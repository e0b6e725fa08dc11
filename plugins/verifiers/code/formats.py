"""Dataset test formats: HumanEval ``check(candidate)``, MBPP assertion lists, stdin/stdout.

Detected from the reference's shape (``parse_format``); the reference may be the whole
dataset row, or one field of it (``reference_key``) with the rest found in ``Prompt.meta``:

* HumanEval: ``{"test": <program defining check(candidate)>, "entry_point": name,
  "prompt": <optional>}``, or ``reference_key: test`` with ``entry_point``/``prompt`` in the
  row. The verdict is whether ``check(entry_point)`` returns.
* MBPP: ``{"test_list": [assert strings], "test_setup_code": str, "test_imports": [str]}``,
  or ``reference_key: test_list`` (a bare list of strings) with the others in the row.
  One test per assertion.
* stdin/stdout: ``{"inputs": [str], "outputs": [str]}`` without ``fn_name`` (APPS'
  ``input_output``, given as a dict or a JSON string, also under the key
  ``input_output``), ``{"input": [str], "output": [str]}`` (CodeContests' ``public_tests``)
  or a list of ``{"input", "output"}`` (LiveCodeBench test cases; ``testtype`` must be
  ``stdin`` when present). A case passes when the program exits 0 in time and its stdout
  equals the expected output token by token (whitespace and line breaks are not
  significant); an expected token written as a decimal fraction (``0.5``, ``1e-3``)
  accepts a number within 1e-6 absolute or relative of it.

Threat model. The program is hostile and controls everything inside its sandbox: the
interpreter, ``builtins``, ``assert``, the harness, the values it returns (their
``__eq__`` included), its exit status and its output. It cannot reach the trusted side
except through data: length-prefixed frames parsed under caps, values decoded by
``values.decode_value`` under caps, in a judge process killed at a deadline.

So no verdict is ever taken from the sandbox. For HumanEval/MBPP the dataset's test
script runs twice: in the sandbox with each program function (``entry_point``; for MBPP
every name the assertions use but do not define) wrapped by a recorder, which produces a
*transcript* (the canonical form of each call's arguments, and the plain-data value it
returned or the exception type it raised); then in the judge process with genuine
builtins and the same ``random`` seed, where those names are proxies that answer each call
from the transcript, decoded to plain builtin types. Asserts, comparisons, ``deepcopy`` and
helpers from the dataset's prompt all run there, on plain data. A call the transcript does
not hold (the program died, exited early, lied about arguments, or the test drew other
inputs), an unencodable result, or a re-raised non-builtin exception fails the test, even
if the test would swallow the error. Forging a pass therefore means putting, for every
call the trusted test makes, the right value in the transcript: computing the answer.
Objects that are not plain data (a class instance the program returns) travel as opaque
handles that the test can pass back to the program but not look into.

For stdin/stdout the program runs in forked children of the (clean) harness, never in the
harness process itself; the trusted side compares the captured stdout with the expected
output, which never enters the sandbox. A printed "PASSED", an early ``exit(0)`` or a
patched harness yields only output, and output passes only when it is the answer.

Known limits: a test that passes non-plain objects of its own to the program (a lambda),
relies on the program mutating an argument in place, or derives its inputs from hash
order (iterating a set of strings) cannot be replayed and fails; helpers the test needs
from the dataset's ``prompt`` are taken from the prompt when it is given, otherwise from
the program (then a program could redefine them).
"""

from __future__ import annotations

import ast
import builtins
import json
import math
import random
import re
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .harness import Unencodable, call_key
from .judge import _BUILTINS, _NO_IMPORT, _RAISABLE, ReferenceError_, _bound_names, decode_result

SEED = 1234
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ()))


@dataclass
class ScriptSpec:
    """HumanEval/MBPP: test scripts run against the program's functions (see above)."""

    preamble: str
    tests: list[str]
    proxy: list[str]
    labels: list[str] = field(default_factory=list)
    kind: str = "script"
    seed: int = SEED

    @property
    def num_tests(self) -> int:
        return len(self.tests)


@dataclass
class StdioSpec:
    """stdin/stdout cases judged by tokens, all run in one sandbox."""

    cases: list[tuple[str, str]]
    kind: str = "stdio"

    @property
    def num_tests(self) -> int:
        return len(self.cases)


# ------------------------------------------------------------------------ detection


def _maybe_json(x: Any) -> Any:
    if isinstance(x, str) and x.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(x)
        except json.JSONDecodeError:
            return x
    return x


def _compile_check(src: str, what: str) -> None:
    try:
        compile(src, f"<{what}>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        raise ReferenceError_(f"{what} is not valid Python: {e}") from e


def _python_or_none(text: Any) -> str | None:
    """``text`` if it is Python (a bare trailing signature gets a body), else None."""
    if not isinstance(text, str) or not text.strip():
        return None
    for src in (text, text.rstrip() + "\n    pass\n"):
        try:
            compile(src, "<prompt>", "exec", dont_inherit=True)
            return src
        except (SyntaxError, ValueError):
            continue
    return None


def humaneval_spec(test: Any, entry: Any, prompt: Any, text: Any = None) -> ScriptSpec:
    """``text``: the prompt's text, used for the helpers when ``prompt`` is absent and it is
    Python (``prompt_key: prompt`` leaves the row's prompt out of ``meta``)."""
    if not isinstance(test, str) or not isinstance(entry, str) or not entry.isidentifier():
        raise ReferenceError_("HumanEval tests need a string 'test' and an 'entry_point' name")
    if not isinstance(prompt, str):
        prompt = _python_or_none(text) or ""
    _compile_check(test, "test")
    if prompt:  # a bare signature (no docstring) gets a body so its helpers still load
        try:
            compile(prompt, "<prompt>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            prompt = prompt.rstrip() + "\n    pass\n"
            _compile_check(prompt, "prompt")
    if "check" not in _bound_names(ast.parse(test)):
        raise ReferenceError_("the HumanEval test must define check(candidate)")
    proxy = {entry}
    if not prompt:  # helpers the test uses (poly, encode_cyclic ...) come from the program
        tree = ast.parse(test)
        bound = _bound_names(tree)
        for n in ast.walk(tree):
            if not isinstance(n, ast.Name) or not isinstance(n.ctx, ast.Load):
                continue
            if n.id not in bound and n.id not in _BUILTINS and n.id not in _STDLIB:
                proxy.add(n.id)
    return ScriptSpec(prompt + "\n" + test, [f"check({entry})"], sorted(proxy), [f"check({entry})"])


def mbpp_spec(asserts: Any, setup: Any, imports: Any, fn: Any = None) -> ScriptSpec:
    if not isinstance(asserts, list) or not all(isinstance(t, str) for t in asserts):
        raise ReferenceError_("MBPP test_list must be a list of strings")
    if isinstance(imports, str):
        imports = [imports]
    if imports is None:
        imports = []
    if not isinstance(imports, list) or not all(isinstance(t, str) for t in imports):
        raise ReferenceError_("test_imports must be a list of strings")
    setup = setup if isinstance(setup, str) else ""
    preamble = "\n".join([*imports, setup])
    _compile_check(preamble, "test setup")
    pre_bound = _bound_names(ast.parse(preamble))
    proxy: set[str] = set()
    modules: set[str] = set()
    for t in asserts:
        _compile_check(t, "test")
        tree = ast.parse(t)
        bound = _bound_names(tree) | pre_bound
        for n in ast.walk(tree):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in bound:
                if n.id == fn:
                    proxy.add(n.id)
                elif n.id in _BUILTINS:
                    continue
                elif n.id in _STDLIB and n.id not in _NO_IMPORT:
                    modules.add(n.id)
                else:
                    proxy.add(n.id)
    if fn:
        proxy.add(fn)
    preamble = "".join(f"import {m}\n" for m in sorted(modules)) + preamble
    return ScriptSpec(preamble, list(asserts), sorted(proxy), list(asserts))


def stdio_spec(inputs: Any, outputs: Any) -> StdioSpec:
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise ReferenceError_("stdin/stdout tests need lists of inputs and outputs")
    if len(inputs) != len(outputs):
        raise ReferenceError_("inputs and outputs must be lists of equal length")
    cases = []
    for i, o in zip(inputs, outputs, strict=True):
        if isinstance(o, list) and all(isinstance(x, str) for x in o):
            o = "\n".join(o)  # some APPS rows split outputs into lines
        if not isinstance(i, str) or not isinstance(o, str):
            raise ReferenceError_("stdin/stdout inputs and outputs must be strings")
        cases.append((i, o))
    return StdioSpec(cases)


def parse_format(ref: Any, meta: Any = None) -> ScriptSpec | StdioSpec | None:
    """The dataset-format spec of a reference, or None when it is one of ``judge``'s."""
    meta = meta if isinstance(meta, dict) else {}
    entry = meta.get("entry_point")
    if isinstance(ref, str) and isinstance(entry, str) and _maybe_json(ref) is ref:
        # a HumanEval test program as the reference field, the row's other fields in meta
        return humaneval_spec(ref, entry, meta.get("prompt"), meta.get("text"))
    ref = _maybe_json(ref)
    if isinstance(ref, list):
        if all(isinstance(t, str) for t in ref):
            return mbpp_spec(ref, meta.get("test_setup_code"), meta.get("test_imports"))
        if all(isinstance(c, dict) for c in ref):
            if any(c.get("testtype", "stdin") != "stdin" for c in ref):
                raise ReferenceError_("only stdin test cases are supported in a case list")
            return stdio_spec([c.get("input") for c in ref], [c.get("output") for c in ref])
        raise ReferenceError_("a list reference must hold assertion strings or test cases")
    if not isinstance(ref, dict):
        return None
    if "input_output" in ref and len(ref) <= 2:
        inner = _maybe_json(ref["input_output"])
        if not isinstance(inner, dict):
            raise ReferenceError_("input_output must be a dict or a JSON object")
        if inner.get("fn_name"):
            return None  # call-based APPS: the caller re-parses the inner dict
        return stdio_spec(inner.get("inputs"), inner.get("outputs"))
    if "test" in ref and ("entry_point" in ref or "entry_point" in meta):
        entry = ref.get("entry_point", meta.get("entry_point"))
        prompt = ref.get("prompt", meta.get("prompt"))
        return humaneval_spec(ref["test"], entry, prompt, meta.get("text"))
    if "test_list" in ref:
        setup = ref.get("test_setup_code", meta.get("test_setup_code"))
        imports = ref.get("test_imports", meta.get("test_imports"))
        return mbpp_spec(ref["test_list"], setup, imports, ref.get("fn_name"))
    if "inputs" in ref and "outputs" in ref and not ref.get("fn_name"):
        return stdio_spec(ref["inputs"], ref["outputs"])
    if "input" in ref and "output" in ref and isinstance(ref["input"], list):
        return stdio_spec(ref["input"], ref["output"])
    return None


def unwrap_apps(ref: Any) -> Any:
    """APPS' call-based ``input_output`` record as ``judge.parse_reference`` takes it."""
    ref = _maybe_json(ref)
    if isinstance(ref, dict) and "input_output" in ref:
        return _maybe_json(ref["input_output"])
    return ref


# ------------------------------------------------------------------------ replay (judge)


class _Unreplayable(BaseException):
    """A call the transcript cannot answer: fails the test even under ``except:``."""


class Handle:
    """A program object the test may pass back to the program but not look into."""

    __slots__ = ("k",)

    def __init__(self, k: int) -> None:
        self.k = k

    def __repr__(self) -> str:
        return f"<program object {self.k}>"


def _handle(o: Any) -> Any:
    if type(o) is Handle:
        return {"$h": o.k}
    raise Unencodable(f"cannot pass a {type(o).__name__} to the program")


def replay(spec: dict[str, Any], transcript: Any) -> tuple[bool, str | None]:
    """Run one test script on the trusted side, program calls answered by ``transcript``."""
    if not isinstance(transcript, list):
        return False, "malformed transcript"
    table: dict[str, deque[Any]] = {}
    for item in transcript:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
            table.setdefault(item[0], deque()).append(item[1])
    problems: list[str] = []
    handles: dict[int, Handle] = {}

    def proxy(name: str) -> Any:
        def call(*a: Any, **kw: Any) -> Any:
            try:
                key = call_key(name, a, kw, _handle)
            except (Unencodable, RecursionError) as e:
                problems.append(f"{name}: {e}")
                raise _Unreplayable from None
            q = table.get(key)
            if not q:
                problems.append(f"the program made no call {key.replace(chr(0), '')[:200]}")
                raise _Unreplayable
            res = q.popleft()
            if not isinstance(res, dict):
                problems.append("malformed transcript")
                raise _Unreplayable
            v = res.get("value")
            if res.get("ok") is True and isinstance(v, dict) and list(v) == ["$h"]:
                k = v["$h"]
                if type(k) is not int:
                    problems.append("malformed transcript")
                    raise _Unreplayable
                return handles.setdefault(k, Handle(k))
            r = decode_result(res)
            if r.ok:
                return r.value
            exc = _RAISABLE.get(r.etype)
            if exc is None:
                problems.append(f"{name} raised {r.etype}: {r.error}"[:300])
                raise _Unreplayable
            raise exc(r.error)

        call.__name__ = name
        return call

    random.seed(int(spec.get("seed", SEED)))
    ns: dict[str, Any] = {"__builtins__": builtins, "__name__": "__srpo_test__"}
    try:
        exec(compile(spec["preamble"], "<test setup>", "exec"), ns)
        for n in spec["proxy"]:
            ns[n] = proxy(n)
        exec(compile(spec["test"], "<test>", "exec"), ns)
    except _Unreplayable:
        return False, problems[0] if problems else "unreplayable call"
    except AssertionError as e:
        return False, problems[0] if problems else f"assertion failed ({e})"[:300]
    except BaseException as e:
        if problems:
            return False, problems[0]
        return False, f"{type(e).__name__}: {e}"[:300]
    if problems:
        return False, problems[0]
    return True, None


def judge_script(msg: dict[str, Any]) -> dict[str, Any]:
    """Worker op ``script``: one verdict per test, from its sandbox result frame."""
    verdicts = []
    for test, frame in zip(msg["tests"], msg["frames"], strict=True):
        spec = {**msg, "test": test}
        if not isinstance(frame, dict) or frame.get("ok") is not True:
            etype = frame.get("etype") if isinstance(frame, dict) else None
            error = frame.get("error") if isinstance(frame, dict) else None
            verdicts.append([False, f"{etype}: {error}"[:300]])
            continue
        ok, why = replay(spec, frame.get("value"))
        verdicts.append([ok, why if why is None else why[:500]])
    return {"verdicts": verdicts}


# ------------------------------------------------------------------------ stdout


_DECIMAL = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+(?:\.\d*)?[eE][+-]?\d+|\d+\.\d*[eE][+-]?\d+)")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
FLOAT_TOL = 1e-6


def _token_ok(got: str, want: str) -> bool:
    if got == want:
        return True
    if len(want) > 64 or len(got) > 64 or not _DECIMAL.fullmatch(want):
        return False
    if not _NUMBER.fullmatch(got):
        return False
    g, w = float(got), float(want)
    if not (math.isfinite(g) and math.isfinite(w)):
        return False
    return abs(g - w) <= FLOAT_TOL * max(1.0, abs(w))


def outputs_match(got: str, want: str) -> bool:
    """Token-wise equality; decimal-fraction expected tokens accept 1e-6 (abs or rel)."""
    a, b = got.split(), want.split()
    return len(a) == len(b) and all(_token_ok(x, y) for x, y in zip(a, b, strict=True))
