"""Issue 16's whole story in one ``srpo run``: a verl-format Parquet dataset (chat-message
prompts, ``reward_model.ground_truth``, ``extra_info.index``), a reward function from a .py
file beside the run file, and a wandb logger (offline), all on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from srpo.cli import main
from tests.support.data_files import write_parquet
from tests.support.reward_files import write_rewards
from tests.support.tiny import TINY, tiny_config
from tests.test_loggers_trackers import at_steps, wandb_segments

REWARDS = r"""
import re


def score(prompt, response, reference):
    boxed = re.findall(r"\\boxed\{([^}]*)\}", response)
    ok = bool(boxed) and boxed[-1].strip() == str(reference).strip()
    return {"reward": float(ok), "correct": ok, "format": float(bool(boxed))}
"""


def verl_parquet(src: Path, out: Path, split: str, n: int) -> Path:
    """The tiny task's JSONL rows in the layout verl's data_preprocess scripts write."""
    rows = [json.loads(x) for x in src.read_text().splitlines()[:n]]
    verl = [
        {
            "data_source": "tiny_arith",
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": r["answer"]},
            "extra_info": {"split": split, "index": i},
        }
        for i, r in enumerate(rows)
    ]
    return write_parquet(out, verl)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    yield
    import wandb

    wandb.teardown()


def test_verl_parquet_python_reward_and_wandb_in_one_run(tmp_path, offline_wandb, capsys):
    data = tmp_path / "data"
    data.mkdir()
    verl_parquet(TINY / "data" / "math_train.jsonl", data / "train.parquet", "train", 64)
    verl_parquet(TINY / "data" / "math_test.jsonl", data / "test.parquet", "test", 16)
    write_rewards(tmp_path, REWARDS)
    spec = {"reference_key": "reward_model.ground_truth", "id_key": "extra_info.index"}
    cfg = tiny_config(
        tmp_path,
        **{
            # the tiny tokenizer has no chat template: one that renders the user turn as the
            # tiny model was trained on it (the raw question)
            "policy.chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
            "run.max_steps": 2,
            "run.prompts_per_step": 4,
            "algorithm.group_size": 4,
            "datasets": {"math": {"path": "data/train.parquet", **spec}},
            "eval.datasets": {"math": {"path": "data/test.parquet", **spec}},
            "verifiers": {"math": {"name": "python", "options": {"path": "rewards.py"}}},
            "loggers": [{"name": "jsonl"}, {"name": "wandb", "options": {"project": "byo"}}],
        },
    )
    path = tmp_path / "run.yaml"  # relative paths above are relative to this file
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["validate", str(path)]) == 0
    assert "train prompts math: 64; held-out math: 16" in capsys.readouterr().out
    assert main(["run", str(path)]) == 0, capsys.readouterr().err

    run = tmp_path / "run"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [0, 1]
    for r in steps:  # scored by rewards.py: its "format" part is reported, no errors
        assert r["verifier_errors"] == 0 and 0 <= r["reward_parts/format"] <= 1
        assert r["rollouts"] == 16
    (seg,) = wandb_segments(run)
    assert seg["config"]["verifiers"]["math"]["name"] == "python"
    assert set(at_steps(seg["history"], "reward/mean")) == {0, 1}
    assert seg["exit"] == 0


def test_each_part_fails_as_one_line(tmp_path, capsys):
    """A verl row without its ground truth, and a reward file without the function."""
    data = tmp_path / "data"
    data.mkdir()
    rows_path = verl_parquet(TINY / "data" / "math_train.jsonl", data / "t.parquet", "train", 4)
    import pyarrow.parquet as pq

    table = pq.read_table(rows_path).to_pylist()
    del table[2]["reward_model"]["ground_truth"]
    write_parquet(rows_path, table)
    write_rewards(tmp_path, "def scor(prompt, response, reference):\n    return 0.0\n")
    spec = {"reference_key": "reward_model.ground_truth", "id_key": "extra_info.index"}
    cfg = tiny_config(
        tmp_path,
        **{
            "datasets": {"math": {"path": "data/t.parquet", **spec}},
            "eval.datasets": {},
            "verifiers": {"math": {"name": "python", "options": {"path": "rewards.py"}}},
        },
    )
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "options.function" in err and "scor" in err
    cfg["verifiers"]["math"]["options"]["function"] = "scor"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "t.parquet:3" in err
    assert "reward_model.ground_truth" in err
