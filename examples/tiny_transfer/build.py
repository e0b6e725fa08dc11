"""Rebuild the tiny transfer example from nothing: data, BPE tokenizer, a ~0.8M-parameter
Qwen2 and a short supervised warm start on a weak teacher (see ``task.py`` for the design).

    python examples/tiny_transfer/build.py      # writes examples/tiny_transfer/{data,model}

Everything is seeded; the committed files are this script's output. By default the warm
start *continues* from ``examples/tiny/model`` (same tokenizer and Qwen2 shape; it already
imitates the same carry-dropping teacher on math) with a short SFT on this task's teacher,
which mostly has to teach the new constant-bearing code format: ~300 steps instead of 1500
from scratch (``--init scratch`` rebuilds the tokenizer and model like examples/tiny does).
The SFT loop and greedy scorer are ``examples/tiny/build.py``'s. About 10 minutes on one
busy CPU core.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


tiny_build = _load("tiny_build", HERE.parent / "tiny" / "build.py")
tt = _load("tiny_transfer_task", HERE / "task.py")


def demos(math_rows, code_rows, p_drop_carry: float, p_swap_minus: float, seed: int):
    """The weak teacher's (prompt, response) pairs: one carry coin per sum, the same
    ``p_drop_carry`` in math and in code scratchpads; one swap coin per plain code problem."""
    rng = random.Random(seed)
    out = []
    for r in math_rows:
        out.append(
            (r["prompt"], tt.teacher_math_response(r["prompt"], rng.random() >= p_drop_carry))
        )
    for r in code_rows:
        carry, swap = rng.random() >= p_drop_carry, rng.random() < p_swap_minus
        out.append((r["prompt"], tt.teacher_code_response(r, carry, swap)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--init",
        default="../tiny/model",
        help="warm start to continue from (relative to this directory; its tokenizer is "
        "kept), or 'scratch' for a new tokenizer and model (then use --sft-steps 1500)",
    )
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--p-drop-carry", type=float, default=0.5)
    ap.add_argument("--p-swap-minus", type=float, default=0.5)
    ap.add_argument("--data-only", action="store_true", help="write data/ and stop")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    math = tt.make_splits(args.seed, n_train=4000, n_test=500, n_sft=20000, domain="math")
    code = tt.make_splits(args.seed + 1, n_train=2000, n_test=300, n_sft=10000, domain="code")
    for name in ("train", "test"):
        tt.write_jsonl([tt.to_row(r) for r in math[name]], args.out / "data" / f"math_{name}.jsonl")
        tt.write_jsonl([tt.to_row(r) for r in code[name]], args.out / "data" / f"code_{name}.jsonl")
    const_test = [r for r in code["test"] if r["kind"] == "const"]
    plain_test = [r for r in code["test"] if r["kind"] == "plain"]
    tt.write_jsonl([tt.to_row(r) for r in const_test], args.out / "data" / "code_const_test.jsonl")
    tt.write_jsonl([tt.to_row(r) for r in plain_test], args.out / "data" / "code_plain_test.jsonl")
    if args.data_only:
        return 0
    pairs = demos(math["sft"], code["sft"], args.p_drop_carry, args.p_swap_minus, args.seed + 2)
    if args.init == "scratch":
        tokenizer = tiny_build.train_tokenizer([p + r for p, r in pairs], vocab_size=400)
        model = tiny_build.make_model(len(tokenizer), tokenizer.eos_token_id)
    else:
        tokenizer = AutoTokenizer.from_pretrained(HERE / args.init)
        model = AutoModelForCausalLM.from_pretrained(HERE / args.init)
    longest = max(len(tokenizer(r)["input_ids"]) + 1 for _, r in pairs)
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"vocab {len(tokenizer)}, longest teacher response {longest} tokens"
    )
    tests = {"math": math["test"], "code_const": const_test, "code_plain": plain_test}
    tiny_build.warm_start(model, tokenizer, pairs, tests, args.sft_steps, args.lr, args.seed)
    acc = {d: tiny_build.greedy_accuracy(model, tokenizer, rows) for d, rows in tests.items()}
    acc["code"] = (acc["code_const"] * len(const_test) + acc["code_plain"] * len(plain_test)) / len(
        code["test"]
    )
    print(
        "warm-started held-out greedy accuracy: "
        + ", ".join(f"{d} {a:.1%}" for d, a in acc.items())
    )
    model_dir = args.out / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    info = {k: v for k, v in vars(args).items() if k not in ("out", "data_only", "threads")}
    (model_dir / "warm_start.json").write_text(
        json.dumps({"heldout_accuracy": acc, "longest_response_tokens": longest, **info}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
