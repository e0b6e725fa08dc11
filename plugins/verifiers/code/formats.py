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
``__eq__`` included), its exit status and its output, and it can read all of it: stack
frames and their locals, code objects and their constants and bytecode, ``gc``,
``sys.modules``, the harness's message, files, ``/proc/self``. It cannot reach the trusted
side except through data: length-prefixed frames parsed under caps, values decoded by
``values.decode_value`` under caps, in a judge process killed at a deadline. A frame out of
shape fails the sample with a reason; only a failure of the trusted side (the sandbox
would not start, the reference is malformed) is a verifier error.

So no verdict is ever taken from the sandbox, and nothing that decides one ever enters it.
What may reach the sandbox: the program, and the *inputs* of the calls the test makes of
the program's functions (plain data, or handles to objects the program itself returned).
What may not: the test's source or code, its expected values, comparisons, assertion
messages, ``METADATA``, helpers, imports, or random state. For HumanEval/MBPP the dataset's
test runs only on the trusted side (``script``): first with softened asserts and
placeholder answers to *plan* its calls (cached per row, no program involved), whose
arguments go to the sandbox as data; the sandbox makes just those calls and returns a
result per call (the plain-data value, ``{"$h": k}`` for a program object, or the
exception type raised). Then the real test runs in the judge process with genuine builtins
and the same ``random`` seed, each program function answering from those results, keyed by
the arguments the trusted side planned. Asserts, comparisons, ``deepcopy`` and helpers from
the dataset's prompt all run there, on plain data. A test that branches on a result and so
makes a call the plan did not foresee is planned again with the results known, in a fresh
sandbox, up to ``max_rounds`` sandbox runs; past that it fails closed and says so. A call
with no answer (the program died or exited early), an unencodable result, or a re-raised
non-builtin exception fails the test, even if the test would swallow the error. Forging a
pass therefore means returning, for every call the trusted test makes, the right value:
computing the answer. Residual: the program sees all the inputs of a test at once, so a
test whose later inputs are its earlier answers (``f(3) == 5`` then ``f(5)``) shows them.

For stdin/stdout the program runs in forked children of the (clean) harness, never in the
harness process itself; the trusted side compares the captured stdout with the expected
output, which never enters the sandbox. A printed "PASSED", an early ``exit(0)`` or a
patched harness yields only output, and output passes only when it is the answer. The
function formats of ``judge`` send only the argument lists (``inputs``) or, for assertion
tests, single steps on program objects: a call of a program name (``f(2)``, ``Solution()``)
with its arguments, and a call, attribute or subscript on a value the program returned that
is not plain data (``Solution().twoSum([2, 7], 9)``, ``f(x).val``), re-sent with the chain
that built it. A step on plain data (``f(2).startswith("abc")``, ``f(2)[0]``, ``==``) runs in
the judge on genuine builtins, so an expected value reaches the sandbox only as an argument
the test itself passes to program code. Residual: a program that returns an object of its
own where the test expects a string makes ``.startswith("abc")`` such a step, and sees
``"abc"``; no rule tells a design class's ``get``/``pop`` from a forged ``startswith``.

Known limits: a test that passes non-plain objects of its own to the program (a lambda),
relies on the program mutating an argument in place, or derives its inputs from hash
order (iterating a set of strings) cannot be replayed and fails; helpers the test needs
from the dataset's ``prompt`` are taken from the prompt when it is given, otherwise from
the program (then a program could redefine them).
"""

from __future__ import annotations

import ast
import json
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from .judge import _BUILTINS, _NO_IMPORT, ReferenceError_, _bound_names

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
    #: per test, the first round's planned calls (``script.judge_plan``), once computed
    plan: list[list[Any]] | None = None

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
    """APPS' call-based ``input_output`` record as ``judge_reference.parse_reference`` takes it."""
    ref = _maybe_json(ref)
    if isinstance(ref, dict) and "input_output" in ref:
        return _maybe_json(ref["input_output"])
    return ref


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
