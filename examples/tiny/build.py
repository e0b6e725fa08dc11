"""Rebuild the tiny example from nothing: data, BPE tokenizer, a ~1M-parameter Qwen2, and a
short supervised warm start that leaves it at partial accuracy (so RL has room to move it).

    python examples/tiny/build.py            # writes examples/tiny/{data,model}

Everything is seeded; the committed files are this script's output. It takes a couple of
minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from code_task import TEST_INPUTS, code_response, make_code_splits, reference_for, teacher_expr
from task import make_splits, response_for, write_jsonl

HERE = Path(__file__).resolve().parent
EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE with digits split one by one (numbers stay learnable token by token)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def make_model(vocab_size: int, eos_id: int) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return Qwen2ForCausalLM(config)


def teacher_demos(rows: list[dict], p_drop_carry: float, seed: int) -> list[tuple[str, str]]:
    """A weak teacher's (prompt, response) demonstrations: with probability ``p_drop_carry``
    it forgets every carry. The warm start imitates it, so the policy can represent the
    right procedure but under-weights it: RL with a verifier has something real to find,
    as in R1-Zero (RL elicits what pre-training put there)."""
    rng = random.Random(seed)
    return [
        (r["prompt"], response_for(r["prompt"], carry=rng.random() >= p_drop_carry)) for r in rows
    ]


def encode_sft(tokenizer, demos: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(prompt + response + EOS token ids, prompt length) per demonstration."""
    out = []
    for prompt, response in demos:
        p = tokenizer(prompt)["input_ids"]
        r = tokenizer(response)["input_ids"] + [tokenizer.eos_token_id]
        out.append((p + r, len(p)))
    return out


def solved(text: str, row: dict) -> bool:
    """Is a generated response right? Math: the boxed sum. Code: the returned expression
    evaluated on the test inputs (our own model's output, in the build script only; training
    scores code with the sandboxed ``code`` verifier)."""
    if "expr" not in row:
        return text.strip().endswith(f"\\boxed{{{row['answer']}}}")
    line = next((x for x in text.splitlines() if x.strip().startswith("return ")), None)
    if line is None:
        return False
    expr = line.strip()[len("return ") :]
    if not set(expr) <= set("x0123456789+-* "):
        return False
    try:
        return all(eval(expr, {"x": x}) == eval(row["expr"], {"x": x}) for x in TEST_INPUTS)
    except Exception:
        return False


@torch.no_grad()
def greedy_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int = 40) -> float:
    tokenizer.padding_side = "left"
    correct = 0
    for i in range(0, len(rows), 256):
        chunk = rows[i : i + 256]
        enc = tokenizer([r["prompt"] for r in chunk], return_tensors="pt", padding=True)
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(
            out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
        correct += sum(solved(t, r) for t, r in zip(texts, chunk, strict=True))
    return correct / len(rows)


def warm_start(model, tokenizer, demos, test_rows, steps: int, lr: float, seed: int) -> None:
    data = encode_sft(tokenizer, demos)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    model.train()
    t0 = time.time()
    for step in range(steps):
        batch = rng.sample(data, 64)
        L = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), L), tokenizer.eos_token_id)
        labels = torch.full((len(batch), L), -100)
        att = torch.zeros((len(batch), L), dtype=torch.long)
        for j, (seq, plen) in enumerate(batch):
            ids[j, : len(seq)] = torch.tensor(seq)
            labels[j, plen : len(seq)] = torch.tensor(seq[plen:])
            att[j, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=att, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if (step + 1) % 200 == 0:
            model.eval()
            acc = ", ".join(
                f"{d} {greedy_accuracy(model, tokenizer, rows[:200]):.1%}"
                for d, rows in test_rows.items()
            )
            model.train()
            print(
                f"sft step {step + 1}: loss {loss.item():.3f} held-out acc {acc} "
                f"({time.time() - t0:.0f}s)",
                flush=True,
            )
    model.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sft-steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument(
        "--p-swap-minus",
        type=float,
        default=0.5,
        help="how often the teacher writes a subtraction with swapped operands (code)",
    )
    ap.add_argument(
        "--p-drop-carry",
        type=float,
        default=0.5,
        help="how often the warm start's teacher forgets carries",
    )
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    splits = make_splits(args.seed, n_train=4000, n_test=500, n_sft=20000)
    code = make_code_splits(args.seed, n_train=2000, n_test=300, n_sft=10000)
    for name in ("train", "test"):
        write_jsonl(splits[name], args.out / "data" / f"math_{name}.jsonl")
        write_jsonl(
            [
                {
                    "id": r["id"],
                    "prompt": r["prompt"],
                    "answer": reference_for(r["expr"]),
                    "level": r["level"],
                }
                for r in code[name]
            ],
            args.out / "data" / f"code_{name}.jsonl",
        )
    rng = random.Random(args.seed + 2)
    demos = teacher_demos(splits["sft"], args.p_drop_carry, args.seed + 1) + [
        (r["prompt"], code_response(teacher_expr(r["expr"], rng.random() < args.p_swap_minus)))
        for r in code["sft"]
    ]
    texts = [p + r for p, r in demos]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    model = make_model(len(tokenizer), tokenizer.eos_token_id)
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"vocab {len(tokenizer)}"
    )
    tests = {"math": splits["test"], "code": code["test"]}
    warm_start(model, tokenizer, demos, tests, args.sft_steps, args.lr, args.seed)
    acc = {d: greedy_accuracy(model, tokenizer, rows) for d, rows in tests.items()}
    print(
        "warm-started held-out greedy accuracy: "
        + ", ".join(f"{d} {a:.1%}" for d, a in acc.items())
    )
    model_dir = args.out / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "warm_start.json").write_text(
        json.dumps(
            {"heldout_accuracy": acc, **{k: v for k, v in vars(args).items() if k != "out"}},
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
