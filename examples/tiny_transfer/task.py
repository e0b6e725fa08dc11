"""The tiny *transfer* task: math whose skill the code domain needs (issue 17, point 3).

On ``examples/tiny`` the math skill (carrying in column addition) and the code skill
(operand order in subtraction) are unrelated, so SRPO's math-only stage 1 has nothing to
teach stage 2. Here the two domains share one skill:

* **math**: ``What is 616+27?`` answered as in ``examples/tiny``: both operands and the sum
  written least-significant digit first (``616+720=346``), then ``\\boxed{643}``.
* **code, constant-bearing** (``kind: "const"``, most of the domain):
  ``Write f(x) returning x times 4 plus 616+27.`` The reference response first works the
  constant out with the *same* scratchpad as math (``616+720=346``), then writes the
  function with the computed literal (``return x*4+643``). A wrong sum in the scratchpad is
  a wrong program, so the verifier's code reward depends on the math skill.
* **code, plain** (``kind: "plain"``): the old ``examples/tiny`` problems
  (``Write f(x) returning x times 4 minus 1.``), so the domain is not only sums.

The warm start's weak teacher (``build.py``) drops every carry of a sum with probability
``p_drop_carry``, in math *and* in the code scratchpads (one error model, applied wherever a
sum is worked out), and swaps subtraction operands in plain code with ``p_swap_minus``. RL
on math alone that fixes carrying should therefore also raise code accuracy on the
constant-bearing prompts, with no code training: the transfer the two-stage curriculum
relies on.

Rows are JSON lines like ``examples/tiny/data``: math ``{"id", "prompt", "answer": "643",
"level"}``; code ``{"id", "prompt", "answer": {"fn_name": "f", "tests": [...]}, "level",
"kind"}`` (``level`` of a const problem is the longer operand's digit count).
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path


def _sibling(name: str):
    """``examples/tiny/<name>.py`` as module ``tiny_<name>`` (by path: this directory has
    its own ``task.py``, so a plain ``import task`` would be ambiguous)."""
    path = Path(__file__).resolve().parent.parent / "tiny" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tiny_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


_tiny_task = _sibling("task")
_tiny_code = _sibling("code_task")
TEST_INPUTS = _tiny_code.TEST_INPUTS
code_response = _tiny_code.code_response
make_code_problem = _tiny_code.make_code_problem
reference_for = _tiny_code.reference_for
teacher_expr = _tiny_code.teacher_expr
column_sum = _tiny_task.column_sum
make_problem = _tiny_task.make_problem
operands = _tiny_task.operands
write_jsonl = _tiny_task.write_jsonl

__all__ = [
    "TEST_INPUTS",
    "code_response",
    "column_sum",
    "const_code_problem",
    "make_problem",
    "make_splits",
    "math_response",
    "operands",
    "reference_for",
    "scratchpad",
    "teacher_code_response",
    "teacher_math_response",
    "to_row",
    "write_jsonl",
]

MAX_DIGITS = 3  # operand digits (1..3): short enough that code responses fit 48 new tokens
CODE_TEMPLATE = "Write f(x) returning {desc}.\n"
P_CONST = 0.75  # share of constant-bearing problems in the code domain


def scratchpad(a: int, b: int, carry: bool = True) -> tuple[str, int]:
    """The reversed-digit column sum of ``examples/tiny/task.py`` (``616+720=346``) and the
    total it arrives at (wrong whenever ``carry=False`` and the sum has a carry)."""
    total = column_sum(a, b, carry)
    width = max(len(str(a)), len(str(b)))
    ra, rb = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
    return f"{ra}+{rb}={str(total)[::-1]}", total


def math_response(a: int, b: int, carry: bool = True) -> str:
    pad, total = scratchpad(a, b, carry)
    return f"{pad} \\boxed{{{total}}}"


def const_code_problem(rng: random.Random) -> dict:
    """``x plus A+B`` or ``x times K plus A+B``; ``expr`` is the true program (``x*4+643``)
    and ``a``/``b``/``k`` what the teacher needs to write its (possibly wrong) version."""
    sum_row = make_problem(rng, MAX_DIGITS)
    a, b = operands(sum_row["prompt"])
    k = rng.choice([None, *range(2, 10)])
    base, lhs = ("x", "x") if k is None else (f"x times {k}", f"x*{k}")
    return {
        "prompt": CODE_TEMPLATE.format(desc=f"{base} plus {a}+{b}"),
        "expr": f"{lhs}+{a + b}",
        "a": a,
        "b": b,
        "k": k,
        "level": sum_row["level"],
        "kind": "const",
    }


def make_code_problem_mixed(rng: random.Random) -> dict:
    if rng.random() < P_CONST:
        return const_code_problem(rng)
    row = make_code_problem(rng)
    row["kind"] = "plain"
    return row


def teacher_math_response(prompt: str, carry: bool) -> str:
    a, b = operands(prompt)
    return math_response(a, b, carry)


def teacher_code_response(row: dict, carry: bool, swap_minus: bool) -> str:
    """The weak teacher's code demo. Const: the scratchpad (carry-dropping as in math), a
    space, then the function with the scratchpad's total. Plain: ``examples/tiny``'s teacher
    (last subtraction's operands swapped when ``swap_minus``)."""
    if row["kind"] == "plain":
        return code_response(teacher_expr(row["expr"], swap_minus))
    pad, total = scratchpad(row["a"], row["b"], carry)
    lhs = "x" if row["k"] is None else f"x*{row['k']}"
    return f"{pad} {code_response(f'{lhs}+{total}')}"


def make_splits(
    seed: int, n_train: int, n_test: int, n_sft: int, domain: str
) -> dict[str, list[dict]]:
    """Disjoint train (RL) / test (held-out) prompt sets and a warm-start (sft) set that
    never repeats a train or test prompt. ``domain``: ``math`` or ``code``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[dict]] = {"train": [], "test": [], "sft": []}
    for split, size in (("test", n_test), ("train", n_train), ("sft", n_sft)):
        tries = 0
        while len(out[split]) < size and tries < 100 * size:
            tries += 1
            row = (
                make_problem(rng, MAX_DIGITS) if domain == "math" else make_code_problem_mixed(rng)
            )
            if row["prompt"] in seen:
                continue
            if split != "sft":
                seen.add(row["prompt"])
            row["id"] = f"{domain}-{split}-{len(out[split])}"
            out[split].append(row)
    return out


def to_row(row: dict) -> dict:
    """The JSON line written to ``data/``: code answers are the verifier's tests."""
    if "expr" not in row:
        return {k: row[k] for k in ("id", "prompt", "answer", "level")}
    return {
        "id": row["id"],
        "prompt": row["prompt"],
        "answer": reference_for(row["expr"]),
        "level": row["level"],
        "kind": row["kind"],
    }
