"""The tiny arithmetic task: a seeded, finite prompt set with a spread of difficulty.

Problems are additions and subtractions whose operands have 1 to 3 digits, so a
warm-started ~1M-parameter model solves the short ones every time, the long ones with
carries/borrows sometimes, and the hardest rarely: all-correct, mixed and all-wrong groups
all occur, which is exactly what SRPO's history resampling acts on.

Rows are JSON lines ``{"id": "...", "prompt": "...", "answer": "...", "level": k}``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PROMPT_TEMPLATE = "What is {a}{op}{b}?\n"


def make_problem(rng: random.Random, max_digits: int = 4) -> dict:
    """One addition; ``level`` is the longer operand's digit count (1..max_digits)."""
    da, db = rng.randint(1, max_digits), rng.randint(1, max_digits)
    a = rng.randint(10 ** (da - 1) if da > 1 else 0, 10**da - 1)
    b = rng.randint(10 ** (db - 1) if db > 1 else 0, 10**db - 1)
    return {
        "prompt": PROMPT_TEMPLATE.format(a=a, op="+", b=b),
        "answer": str(a + b),
        "level": max(da, db),
    }


def operands(prompt: str) -> tuple[int, int]:
    a, b = prompt.split("What is ")[1].rstrip("?\n").split("+")
    return int(a), int(b)


def column_sum(a: int, b: int, carry: bool = True) -> int:
    """Column-by-column addition; ``carry=False`` is the classic student error of dropping
    every carry."""
    out, place, c = 0, 1, 0
    while a or b or c:
        s = a % 10 + b % 10 + c
        out += (s % 10) * place
        c = s // 10 if carry else 0
        a, b, place = a // 10, b // 10, place * 10
    return out


def response_for(prompt: str, carry: bool = True) -> str:
    """The warm start's target: a scratchpad that writes both operands and then the sum
    least-significant digit first (zero-padded to one width, so columns line up and each
    digit depends only on its column and the carry), then the boxed answer."""
    a, b = operands(prompt)
    total = column_sum(a, b, carry)
    width = max(len(str(a)), len(str(b)))
    ra, rb = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
    return f"{ra}+{rb}={str(total)[::-1]} \\boxed{{{total}}}"


def make_splits(seed: int, n_train: int, n_test: int, n_sft: int) -> dict[str, list[dict]]:
    """Disjoint train (RL prompts), test (held-out) and sft (warm start) sets."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[dict]] = {"train": [], "test": [], "sft": []}
    for split, size in (("test", n_test), ("train", n_train), ("sft", n_sft)):
        while len(out[split]) < size:
            row = make_problem(rng)
            if split != "sft" and row["prompt"] in seen:
                continue
            if split != "sft":
                seen.add(row["prompt"])
            elif row["prompt"] in seen:
                continue  # the warm start never sees a held-out or RL prompt
            row["id"] = f"arith-{split}-{len(out[split])}"
            out[split].append(row)
    return out


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
