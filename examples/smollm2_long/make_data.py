"""Write the long-answer example's datasets: multi-step arithmetic, worked out step by step.

    ./dev python examples/smollm2_long/make_data.py   # writes examples/smollm2_long/data/*.jsonl

Two domains of one skill at two depths, for the two-stage curriculum: ``two`` (two
operations, ``(a + b) * c``) and ``three`` (three, ``(a + b) * c - d``), with one-digit
``a, b, d`` and ``c`` from 2 to 5. Every prompt asks for the intermediate results one per line
before the boxed answer, so SmolLM2-135M-Instruct answers in a few hundred tokens. Train and
test are disjoint; seeded: the committed files are this script's output.

Rows are JSON lines ``{"id", "prompt", "answer", "expr"}``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTRUCTION = (
    "Compute {expr}. Work it out step by step: write each intermediate calculation on its "
    'own line and explain it, then end with "so the answer is \\boxed{{r}}", where r is the '
    "result."
)


def all_problems(domain: str) -> list[tuple[str, int]]:
    """Every (expression, value) of a domain; results never negative."""
    out = []
    for a in range(1, 10):
        for b in range(1, 10):
            for c in range(2, 6):
                if domain == "two":
                    out.append((f"({a} + {b}) * {c}", (a + b) * c))
                elif domain == "three":
                    for d in range(1, 10):
                        out.append((f"({a} + {b}) * {c} - {d}", (a + b) * c - d))
                else:
                    raise ValueError(domain)
    return out


def make_splits(seed: int, sizes: dict[str, tuple[int, int]]) -> dict[str, list[dict]]:
    """Per domain ``(n_train, n_test)`` problems drawn without replacement, test first."""
    out: dict[str, list[dict]] = {}
    for domain, (n_train, n_test) in sizes.items():
        problems = all_problems(domain)
        random.Random(f"{seed}:{domain}").shuffle(problems)
        test, train = problems[:n_test], problems[n_test : n_test + n_train]
        for split, rows in (("test", test), ("train", train)):
            out[f"{domain}_{split}"] = [
                {
                    "id": f"{domain}-{split}-{i}",
                    "prompt": INSTRUCTION.format(expr=expr),
                    "answer": str(value),
                    "expr": expr,
                }
                for i, (expr, value) in enumerate(rows)
            ]
    return out


SIZES = {"two": (200, 32), "three": (200, 32)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "data")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in make_splits(args.seed, SIZES).items():
        path = args.out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{path}: {len(rows)} prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
