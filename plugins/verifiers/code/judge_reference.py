"""The ``judge`` format's reference: a dataset row validated into a ``Spec``, and the
sandbox requests of its argument-list (``io``) tests.

Separate from ``judge`` (the assertion rewriting and the judging, which also run in the
judge process) because only the trusted verifier, never the judge process, parses rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .harness import encode
from .judge import CompiledTest, ReferenceError_, compile_assert_test


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
