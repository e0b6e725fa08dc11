"""One full training step of the tiny model (generate → verify → update), and its parts.

    ./dev python -m pytest benchmarks/bench_train_step.py

Compare runs only as ratios on the same machine (these machines are shared and noisy).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    from srpo.config import load_config
    from srpo.kernel.build import build

    cfg = yaml.safe_load((TINY / "math_grpo.yaml").read_text())
    cfg["policy"]["path"] = str(TINY / "model")
    cfg["datasets"]["math"]["path"] = str(TINY / cfg["datasets"]["math"]["path"])
    cfg["eval"] = {}
    cfg["loggers"] = []
    cfg["run"]["output_dir"] = str(tmp_path_factory.mktemp("bench") / "run")
    path = tmp_path_factory.mktemp("cfg") / "plugins.yaml"
    path.write_text(yaml.safe_dump(cfg))
    k = build(load_config(path))
    k.roles.curriculum.begin_epoch(0)
    return k


def test_full_training_step(benchmark, kernel):
    benchmark.pedantic(kernel.step, rounds=5, iterations=1, warmup_rounds=1)


def test_generate_only(benchmark, kernel):
    prompts = kernel.roles.curriculum.prompts[:32]
    benchmark.pedantic(kernel.roles.sampler.generate, args=(prompts, 8), rounds=5, warmup_rounds=1)


def test_update_only(benchmark, kernel):
    prompts = kernel.roles.curriculum.prompts[:32]
    batch = kernel.roles.sampler.generate(prompts, 8)
    scores = kernel.verify(batch)
    benchmark.pedantic(kernel.policy.update, args=(batch, scores), rounds=5, warmup_rounds=1)
