"""The parts of the ``vllm`` sampler's server mode that need no engine (fast tier): the
options, the weight transports (a real /dev/shm file, a real connection), the trainer's
core pinning, and the server process's own errors and the client's start-up errors, each
against a real server process. ``tests/test_sampler_vllm_server.py`` runs the engine."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Listener, Pipe
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from srpo_plugins.samplers.vllm_sampler import VLLMSampler, VLLMSamplerOptions
from srpo_plugins.samplers.vllm_sampler.process import (
    exit_status,
    physical_gpu,
    pin_trainer,
    server_gpus,
    unpin_trainer,
)
from srpo_plugins.samplers.vllm_sampler.protocol import KEY_ENV, parse_address
from srpo_plugins.samplers.vllm_sampler.transport import (
    ShmFile,
    ShmReader,
    StreamReader,
    remove_stale_files,
    send_stream,
    shm_dir,
)
from srpo_plugins.samplers.vllm_sampler.weight_sync import backend_for

from srpo.api import PluginContext, PluginError

ROOT = Path(__file__).resolve().parents[1]
SERVER = "srpo_plugins.samplers.vllm_sampler.server"


# -- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "127.0.0.1:1"}, "apply to mode: server only"),
        ({"cpus": [1]}, "apply to mode: server only"),
        ({"devices": [1]}, "apply to mode: server only"),
        ({"mode": "server", "devices": [1, 1]}, "a GPU is listed twice"),
        ({"mode": "server", "devices": [1, 2]}, "2 GPU\\(s\\) for tensor_parallel_size 1"),
        ({"mode": "server", "url": "127.0.0.1:1", "cpus": [1]}, "pin one at url yourself"),
        ({"mode": "server", "cpus": [1, 1]}, "a core is listed twice"),
        ({"mode": "server", "cpus": []}, "at least 1 item"),
        ({"mode": "remote"}, "'colocate' or 'server'"),
        ({"mode": "server", "url": "localhost"}, "is not host:port, tcp://host:port or unix:"),
    ],
)
def test_server_options_that_do_not_fit_are_refused(options: dict, message: str):
    with pytest.raises(ValidationError, match=message):
        VLLMSamplerOptions(**options)


def test_addresses():
    assert parse_address("unix:/tmp/x.sock") == "/tmp/x.sock"
    assert parse_address("unix:///tmp/x.sock") == "/tmp/x.sock"
    assert parse_address("10.0.0.2:8765") == ("10.0.0.2", 8765)
    assert parse_address("tcp://[::1]:8765") == ("::1", 8765)
    for bad in ("localhost", "host:port", "unix:"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_exit_status_in_words():
    assert exit_status(-9) == "was killed by signal 9 (SIGKILL)"
    assert exit_status(1) == "exited with code 1"


# -- weight transports ---------------------------------------------------------------------


def weights() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        ("a.weight", torch.randn(7, 5, generator=g)),
        ("b.bias", torch.randn(3, generator=g).to(torch.bfloat16)),  # no numpy dtype
        ("c.weight", torch.randn(4, 6, generator=g).t()),  # not contiguous
        ("d.scale", torch.tensor(2.5, dtype=torch.float64)),  # 0-d
    ]


def test_the_shm_file_round_trips_every_dtype_and_layout():
    out = ShmFile()
    try:
        index = out.write(weights())
        assert all(offset % 64 == 0 for *_, offset, _ in index)
        reader = ShmReader()
        got = [(n, t.clone()) for n, t in reader.read(str(out.path), index)]
        assert [n for n, _ in got] == [n for n, _ in weights()]
        for (_, a), (_, b) in zip(got, weights(), strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)
        # the next push rewrites the same pages: the kept mapping sees the new values
        changed = [(n, t * 2) for n, t in weights()]
        index2 = out.write(changed)
        assert index2 == index
        again = list(reader.read(str(out.path), index2))
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(again, changed, strict=True))
    finally:
        out.remove()
    assert not out.path.exists()


def test_a_weight_file_left_by_a_dead_trainer_is_removed():
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    stale = shm_dir() / f"srpo-vllm-{int(dead.stdout)}-00000000.bin"
    mine = shm_dir() / f"srpo-vllm-{os.getpid()}-00000000.bin"
    for p in (stale, mine):
        p.write_bytes(b"x")
    try:
        remove_stale_files(shm_dir())
        assert not stale.exists() and mine.exists()
    finally:
        for p in (stale, mine):
            p.unlink(missing_ok=True)


def test_the_socket_stream_round_trips_and_a_failed_load_leaves_the_connection_in_step():
    here, there = Pipe()
    sender = threading.Thread(target=send_stream, args=(here, weights()))
    sender.start()
    got = [(n, t.clone()) for n, t in StreamReader(there)]
    sender.join()
    for (_, a), (_, b) in zip(got, weights(), strict=True):
        assert torch.equal(a, b)
    # a load that stops after one tensor: finish() skips the rest, the next message is next
    sender = threading.Thread(target=lambda: (send_stream(here, weights()), here.send("next")))
    sender.start()
    stream = StreamReader(there)
    next(iter(stream))
    stream.finish()
    assert there.recv() == "next"
    sender.join()


# -- the trainer's cores -------------------------------------------------------------------


def test_cpus_must_be_this_process_cores_and_leave_the_trainer_one():
    mine = sorted(os.sched_getaffinity(0))
    with pytest.raises(PluginError, match=r"cpus \[4096\] are not among this process's cores"):
        pin_trainer([4096])
    with pytest.raises(PluginError, match="leave the trainer at least one"):
        pin_trainer(mine)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_pinning_moves_every_thread_of_the_trainer_and_unpinning_restores_them():
    started, stop = threading.Event(), threading.Event()
    ids: list[int] = []

    def worker() -> None:
        ids.append(threading.get_native_id())
        started.set()
        stop.wait()

    t = threading.Thread(target=worker)
    t.start()
    started.wait()
    before = os.sched_getaffinity(0)
    engine = max(before)
    try:
        saved = pin_trainer([engine])
        assert saved == before
        assert os.sched_getaffinity(0) == before - {engine}
        assert os.sched_getaffinity(ids[0]) == before - {engine}  # a thread already running
    finally:
        unpin_trainer(before)
        stop.set()
        t.join()
    assert os.sched_getaffinity(0) == before


# -- the server process and starting it ----------------------------------------------------


def server_cli(*args: str, key: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run(
        [sys.executable, "-m", SERVER, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_the_server_refuses_to_start_without_a_key_or_with_a_bad_address(tmp_path: Path):
    run = server_cli("--listen", f"unix:{tmp_path}/e.sock", key=None)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "srpo vllm server: error: set SRPO_VLLM_KEY (the run reads the same)"
    ]
    run = server_cli("--listen", "nowhere", key="k")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert "--listen nowhere: 'nowhere' is not host:port" in run.stderr


def stub_policy() -> SimpleNamespace:
    """The other role: only what starting the server reads of a policy."""
    return SimpleNamespace(
        tokenizer=None, device=torch.device("cpu"), dtype="float32", model_dir=Path("/nowhere")
    )


def start(tmp_path: Path, **options) -> VLLMSampler:
    ctx = PluginContext(run_dir=tmp_path, seed=0, policy=stub_policy())  # type: ignore[arg-type]
    return VLLMSampler(VLLMSamplerOptions(mode="server", **options), ctx)


def children() -> list[int]:
    """Pids of this process's children that are engine servers."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and SERVER.encode() in cmd and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_a_server_that_does_not_start_in_time_is_killed_with_one_line(tmp_path: Path):
    t = time.monotonic()
    with pytest.raises(PluginError) as e:
        start(tmp_path, startup_timeout_s=1.5)  # importing vLLM alone takes longer
    assert str(e.value) == (
        "sampler vllm: the engine server did not start within 1.5 s (startup_timeout_s)"
    )
    assert time.monotonic() - t < 30
    assert children() == []


def test_a_server_that_connects_but_never_starts_its_engine_is_a_start_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The deadline can pass after the connection is made, while the engine loads: that is
    still "did not start", not "closed the connection" (TimeoutError is an OSError)."""
    monkeypatch.setenv(KEY_ENV, "k")
    listener = Listener(str(tmp_path / "slow.sock"), authkey=b"k")
    held: list = []
    accepting = threading.Thread(target=lambda: held.append(listener.accept()), daemon=True)
    accepting.start()
    try:
        with pytest.raises(PluginError) as e:
            start(tmp_path, url=f"unix:{tmp_path}/slow.sock", startup_timeout_s=0.5)
        assert str(e.value) == (
            "sampler vllm: the engine server did not start within 0.5 s (startup_timeout_s)"
        )
    finally:
        accepting.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_attaching_needs_a_key_and_a_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(PluginError, match=f"url: set {KEY_ENV} to the key"):
        start(tmp_path, url=f"unix:{tmp_path}/none.sock")
    monkeypatch.setenv(KEY_ENV, "k")
    with pytest.raises(PluginError) as e:
        start(tmp_path, url=f"unix:{tmp_path}/none.sock")
    assert str(e.value).startswith(f"sampler vllm: no engine server at unix:{tmp_path}/none.sock")


def test_a_client_with_the_wrong_key_is_refused_and_the_server_lives_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    sock = tmp_path / "e.sock"
    env = {**os.environ, KEY_ENV: "right"}
    server = subprocess.Popen(
        [sys.executable, "-m", SERVER, "--listen", f"unix:{sock}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        assert server.stdout is not None
        assert "listening on" in server.stdout.readline()
        monkeypatch.setenv(KEY_ENV, "wrong")
        with pytest.raises(PluginError) as e:
            start(tmp_path, url=f"unix:{sock}")
        assert "AuthenticationError" in str(e.value) and "\n" not in str(e.value)
        assert "refused a connection" in server.stdout.readline()
        assert server.poll() is None
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def test_a_second_run_is_told_at_once_that_the_server_is_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from srpo_plugins.samplers.vllm_sampler.protocol import await_reply, connect, send

    sock = tmp_path / "e.sock"
    env = {**os.environ, KEY_ENV: "k"}
    server = subprocess.Popen(
        [sys.executable, "-m", SERVER, "--listen", f"unix:{sock}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        assert server.stdout is not None and "listening on" in server.stdout.readline()
        first = connect(str(sock), b"k")
        send(first, "ping")
        assert await_reply(first, lambda: None, 30) == "pong"  # being served
        monkeypatch.setenv(KEY_ENV, "k")
        t = time.monotonic()
        with pytest.raises(PluginError) as e:
            start(tmp_path, url=f"unix:{sock}")
        assert time.monotonic() - t < 15
        assert str(e.value) == (
            f"sampler vllm: the engine server at unix:{sock}: it serves another run (one at a time)"
        )
        send(first, "ping")  # the first is still served
        assert await_reply(first, lambda: None, 30) == "pong"
        first.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def test_a_server_exits_when_the_process_that_started_it_is_killed(tmp_path: Path):
    """A trainer killed with -9 cannot stop its engine: the engine notices (--parent)."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-m', '{SERVER}', '--listen', "
            f"'unix:{tmp_path}/e.sock', '--parent', str(os.getpid())], "
            f"env={{**os.environ, '{KEY_ENV}': 'k'}})\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert parent.stdout is not None
    engine = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while not (tmp_path / "e.sock").exists():  # up and listening
        assert time.monotonic() < deadline
        time.sleep(0.1)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while True:
        try:
            state = Path(f"/proc/{engine}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:  # exited and reaped
            break
        if state == "Z":  # exited; its new parent has not reaped it yet
            break
        assert time.monotonic() < deadline, "the server outlived its parent"
        time.sleep(0.2)


def test_what_server_mode_does_not_do_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Refused before anything starts, each in one line naming the option."""
    cuda = stub_policy()
    cuda.device = torch.device("cuda", 0)
    ctx = PluginContext(run_dir=tmp_path, seed=0, policy=cuda)  # type: ignore[arg-type]
    refused = [
        ({"cpus": [0]}, "on CUDA use devices"),
        ({"weight_transport": "shm"}, "shm is the CPU transport"),
        ({"enable_sleep_mode": True}, "enable_sleep_mode applies to mode: colocate"),
    ]
    for options, message in refused:
        with pytest.raises(PluginError, match=message):
            VLLMSampler(VLLMSamplerOptions(mode="server", **options), ctx)
    with pytest.raises(PluginError, match="names GPUs: the policy is on the CPU"):
        start(tmp_path, devices=[1])
    monkeypatch.setenv("WORLD_SIZE", "2")
    for options in ({"cpus": [0]}, {"url": "unix:/tmp/x.sock"}):
        with pytest.raises(PluginError, match="with 2 ranks starts one engine server per rank"):
            start(tmp_path, **options)
    with pytest.raises(PluginError, match=r"url \(one shared server\), cpus .* and devices"):
        VLLMSampler(VLLMSamplerOptions(mode="server", devices=[1]), ctx)
    assert children() == []


def test_the_weight_transfer_backend_follows_where_the_engine_runs(
    monkeypatch: pytest.MonkeyPatch,
):
    """CPU: srpo_shm (ours, registered in vLLM's factory by the server). CUDA: vLLM's IPC on
    the trainer's own GPU, its NCCL on others; a server's GPUs name the machine's GPUs, seen
    through the trainer's CUDA_VISIBLE_DEVICES."""
    cpu, gpu1 = torch.device("cpu"), torch.device("cuda", 1)
    assert server_gpus(cpu, None) is None and backend_for(cpu, None) == "srpo_shm"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert server_gpus(gpu1, None) == ["1"] and backend_for(gpu1, ["1"]) == "ipc"
    assert server_gpus(gpu1, [2, 3]) == ["2", "3"] and backend_for(gpu1, ["2", "3"]) == "nccl"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert physical_gpu(1) == "6" and server_gpus(gpu1, None) == ["6"]
    assert backend_for(gpu1, ["6"]) == "ipc" and backend_for(gpu1, ["1"]) == "nccl"
    with pytest.raises(PluginError, match="shares the trainer's GPU alone"):
        backend_for(gpu1, ["6", "7"])
