"""End to end on the real tiny model: plugins, sampler, verifier, loss, optimizer, loggers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from srpo.cli import main
from tests.support.tiny import TINY


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_few_steps_train_and_reward_moves(write_config, tmp_path, capsys):
    path = write_config(
        **{"run.max_steps": 4, "run.prompts_per_step": 16, "algorithm.group_size": 8}
    )
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    run = tmp_path / "run"
    rows = read_metrics(run)
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [0, 1, 2, 3]
    for r in steps:
        assert math.isfinite(r["loss"]) and r["grad_norm"] > 0
        assert r["rollouts"] == 128 and 0 <= r["accuracy"] <= 1
        assert r["time/generate"] > 0 and r["time/update"] > 0
        # the trainer scores exactly what the sampler sampled (same weights, same temperature)
        assert r["behaviour_logp_gap"] < 1e-3
    assert len({r["reward/mean"] for r in steps}) > 1
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [e["label"] for e in evals] == ["before", "after"]
    assert rows[-1]["kind"] == "end" and rows[-1]["status"] == "completed"
    out = capsys.readouterr().out
    assert "held-out accuracy" in out
    assert (run / "config.yaml").exists()


def test_update_changes_weights_and_checkpoint_loads(write_config, tmp_path):
    from srpo.config import load_config
    from srpo.kernel.build import build, close_roles

    kernel = build(load_config(write_config(**{"run.max_steps": 1})))
    before = {k: v.clone() for k, v in kernel.policy.model.state_dict().items()}
    kernel.run()
    close_roles(kernel)
    after = kernel.policy.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    kernel.policy.save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, after[k])


def test_output_dir_holding_another_run_is_refused(write_config, tmp_path, capsys):
    path = write_config(**{"run.max_steps": 1, "eval.datasets": {}})
    assert main(["run", str(path)]) == 0
    marker = (tmp_path / "run" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["run", str(path)]) == 2
    assert "holds another run" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == marker


@pytest.mark.slow
def test_default_run_learns(tmp_path, capsys):
    """The shipped default run (the README's main command, full length: two stages, history
    resampling, math and code): held-out greedy accuracy rises by at least 15 points. Fast
    tests run pieces of it for a step or two; only this shows that the whole run learns."""
    out = tmp_path / "default"
    assert main(["run", str(TINY / "plugins.yaml"), "--set", f"run.output_dir={out}"]) == 0
    rows = read_metrics(out)
    end = rows[-1]
    gain = end["after/accuracy"] - end["before/accuracy"]
    print(f"held-out accuracy {end['before/accuracy']:.3f} -> {end['after/accuracy']:.3f}")
    assert gain >= 0.15, gain


def test_dapo_overlong_shaping_reaches_rewards_and_loss(write_config, tmp_path, capsys):
    """Soft overlong punishment lowers rewards of long responses; filtering masks truncated
    ones out of the loss (a batch of only truncated responses has no loss tokens)."""
    path = write_config(
        **{
            "run.max_steps": 1,
            "eval.datasets": {},
            "sampler.options.max_new_tokens": 6,
            "algorithm.overlong": {"filter": True, "max_len": 6, "cache_len": 4},
        }
    )
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    step = next(r for r in read_metrics(tmp_path / "run") if r["kind"] == "step")
    assert step["truncated_frac"] == 1.0  # every answer needs more than 6 tokens
    assert step["reward_parts/overlong_penalty"] == -1.0
    assert step["reward/mean"] == -1.0
    assert step["tokens"] == 0.0


def test_stage_overrides_apply_at_the_switch(write_config, tmp_path, capsys):
    """two_stage's per-stage overrides reach the sampler and the loss when the stage flips."""
    from srpo.config import load_config
    from srpo.kernel.build import build, close_roles

    path = write_config(
        **{
            "run.max_steps": 2,
            "run.epochs": 3,
            "run.prompts_per_step": 4,
            "eval.datasets": {},
            "curriculum": {
                "name": "two_stage",
                "options": {
                    "stage1_domains": ["math"],
                    "stage2_mix": {"math": 1.0},
                    "switch": {"after_steps": 1},
                    "stage_overrides": {
                        1: {"sampler": {"temperature": 0.7}, "algorithm": {"clip_high": 0.3}}
                    },
                },
            },
        }
    )
    kernel = build(load_config(path))
    seen: list[float] = []
    update = kernel.policy.update
    kernel.policy.update = lambda batch, *a, **k: (
        seen.append(batch.temperature) or update(batch, *a, **k)
    )
    assert kernel.roles.sampler.options.temperature == 1.0
    kernel.run()
    close_roles(kernel)
    assert kernel.roles.curriculum.stage == 1
    assert kernel.roles.sampler.options.temperature == 0.7
    assert seen == [1.0, 0.7]  # the trainer scores each batch at its sampling temperature
    assert kernel.policy.algo.clip_high == 0.3 and kernel.policy.loss_config.clip_high == 0.3


def test_history_stores_the_response_tokens_when_asked(write_config, tmp_path, capsys):
    """``history.store_tokens: true``: every record carries its response's token ids, as
    many as its length, and they decode to text (this crashed the run before)."""
    from transformers import AutoTokenizer

    from srpo.history import HistoryReader

    path = write_config(**{"run.max_steps": 2, "history.store_tokens": True})
    assert main(["run", str(path)]) == 0, capsys.readouterr().err
    import numpy as np

    with HistoryReader(tmp_path / "run" / "history") as reader:
        blocks = list(reader.iter_epoch(0, ["length", "token_count", "token_ids"]))
    lengths = np.concatenate([b["length"] for b in blocks])
    counts = np.concatenate([b["token_count"] for b in blocks])
    ids = np.concatenate([b["token_ids"] for b in blocks])
    assert len(lengths) == 2 * 8 * 8 and (lengths == counts).all() and counts.sum() > 0
    assert len(ids) == counts.sum()
    text = AutoTokenizer.from_pretrained(TINY / "model").decode(ids[: counts[0]].tolist())
    assert isinstance(text, str) and text
