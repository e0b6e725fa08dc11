"""The tiny code task: write a one-line Python function from a description in words.

Problems read like ``Write f(x) returning x times 4 minus 1.`` and are checked by the
``code`` verifier against assertion tests on a handful of inputs. Difficulty grows with the
number of operations; the warm start's weak teacher writes every subtraction with its
operands swapped half of the time (``1-x*4``), so subtraction problems start mixed and RL with
the sandboxed verifier has a real error to unlearn.

Rows are JSON lines ``{"id", "prompt", "answer": {"fn_name": "f", "tests": [...]}, "level"}``.
"""

from __future__ import annotations

import random

PROMPT_TEMPLATE = "Write f(x) returning {desc}.\n"
TEST_INPUTS = (0, 1, 2, 5, -3, 11)
WORDS = {"+": "plus", "-": "minus", "*": "times"}


def make_code_problem(rng: random.Random) -> dict:
    """One problem; ``level`` 1: one operation, 2: two, 3: the square of x and two more."""
    level = rng.randint(1, 3)
    if level == 3:
        first = "the square of x"
        expr = "x*x"
    else:
        first, expr = "x", "x"
    desc = first
    ops = [rng.choice("+-*") for _ in range(min(level, 2))]
    for op in ops:
        k = rng.randint(2, 19)
        desc += f" {WORDS[op]} {k}"
        expr += f"{op}{k}"
    return {"prompt": PROMPT_TEMPLATE.format(desc=desc), "expr": expr, "level": level}


def reference_for(expr: str) -> dict:
    """Assertion tests computed from the true expression (Python precedence, as written)."""
    tests = [f"assert f({x}) == {eval(expr, {'x': x})}" for x in TEST_INPUTS]
    return {"fn_name": "f", "tests": tests}


def teacher_expr(expr: str, swap_minus: bool) -> str:
    """The weak teacher's code: with ``swap_minus`` it writes ``a-b`` as ``b-a`` at the last
    subtraction (a wrong program whenever the two sides differ)."""
    i = expr.rfind("-")
    if not swap_minus or i <= 0:
        return expr
    return f"{expr[i + 1 :]}-{expr[:i]}"


def code_response(expr: str) -> str:
    return f"```python\ndef f(x):\n    return {expr}\n```"


def make_code_splits(seed: int, n_train: int, n_test: int, n_sft: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[dict]] = {"train": [], "test": [], "sft": []}
    for split, size in (("test", n_test), ("train", n_train), ("sft", n_sft)):
        tries = 0
        while len(out[split]) < size and tries < 50 * size:
            tries += 1
            row = make_code_problem(rng)
            if split != "sft":
                if row["prompt"] in seen:
                    continue
                seen.add(row["prompt"])
            elif row["prompt"] in seen and rng.random() < 0.9:
                continue  # the warm start rarely sees a held-out or RL prompt verbatim
            row["id"] = f"code-{split}-{len(out[split])}"
            out[split].append(row)
    return out
