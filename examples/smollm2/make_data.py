"""Write the SmolLM2 example's datasets: small-number arithmetic with a boxed answer.

    python examples/smollm2/make_data.py       # writes examples/smollm2/data/*.jsonl

Two domains of the same skill at two difficulties, so the SRPO two-stage curriculum has
something to order: ``easy`` (one-digit numbers: ``a + b``, ``a - b`` with a >= b) and
``hard`` (a number from 10 to 29 plus or minus a one-digit number). Every prompt asks for the
result in ``\\boxed{}`` after the equation. Train and test are disjoint (no problem appears in both
splits of a domain, nor twice in one split). Seeded: the committed files are this script's
output.

Rows are JSON lines ``{"id", "prompt", "answer", "a", "op", "b"}``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTRUCTION = (
    'Compute {a} {op} {b}. Reply in the form "{a} {op} {b} = r, so the answer is \\boxed{{r}}."'
)


def all_problems(domain: str) -> list[tuple[int, str, int]]:
    """Every (a, op, b) of a domain, results never negative."""
    if domain == "easy":
        pairs = [(a, b) for a in range(10) for b in range(10)]
    elif domain == "hard":
        pairs = [(a, b) for a in range(10, 30) for b in range(10)]
    else:
        raise ValueError(domain)
    return [(a, op, b) for a, b in pairs for op in "+-" if op == "+" or a >= b]


def row(domain: str, split: str, i: int, a: int, op: str, b: int) -> dict:
    answer = a + b if op == "+" else a - b
    return {
        "id": f"{domain}-{split}-{i}",
        "prompt": INSTRUCTION.format(a=a, op=op, b=b),
        "answer": str(answer),
        "a": a,
        "op": op,
        "b": b,
    }


def make_splits(seed: int, sizes: dict[str, tuple[int, int]]) -> dict[str, list[dict]]:
    """``{"easy_train": [...], "easy_test": [...], ...}``: per domain, ``(n_train, n_test)``
    problems drawn without replacement (the test split first, so it does not depend on
    ``n_train``)."""
    out: dict[str, list[dict]] = {}
    for domain, (n_train, n_test) in sizes.items():
        problems = all_problems(domain)
        random.Random(f"{seed}:{domain}").shuffle(problems)
        if n_train + n_test > len(problems):
            raise ValueError(f"{domain}: only {len(problems)} distinct problems")
        test, train = problems[:n_test], problems[n_test : n_test + n_train]
        out[f"{domain}_test"] = [row(domain, "test", i, *p) for i, p in enumerate(test)]
        out[f"{domain}_train"] = [row(domain, "train", i, *p) for i, p in enumerate(train)]
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


SIZES = {"easy": (105, 50), "hard": (300, 100)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "data")
    args = ap.parse_args(argv)
    for name, rows in make_splits(args.seed, SIZES).items():
        write_jsonl(args.out / f"{name}.jsonl", rows)
        print(f"{args.out / name}.jsonl: {len(rows)} prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
