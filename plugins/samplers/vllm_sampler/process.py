"""The engine server as a child process: started on its own cores, its death described in
words, stopped for good; and the trainer moved off the engine's cores.

The child runs in a session of its own, so a Ctrl-C at the terminal reaches the trainer
only: the trainer finishes its step (which may still need the engine), checkpoints, and
then stops the engine in ``close``. The child exits by itself when the trainer is gone
(``--parent``), so a trainer killed with -9 leaves no engine holding RAM and cores.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

from srpo.api import PluginError

SERVER_MODULE = "srpo_plugins.samplers.vllm_sampler.server"


def exit_status(code: int) -> str:
    """A ``Popen.returncode`` in words: ``killed by signal 9 (SIGKILL)``, ``exited with
    code 1``."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"was killed by signal {-code} ({name})"
    return f"exited with code {code}"


def physical_gpu(index: int) -> str:
    """The machine's name of this process's CUDA device ``index`` (through its own
    ``CUDA_VISIBLE_DEVICES``, which may list numbers or UUIDs), for a child's."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    visible = [v for v in visible if v]
    return visible[index] if index < len(visible) else str(index)


def server_gpus(device: torch.device, devices: list[int] | None) -> list[str] | None:
    """The GPUs an engine server runs on (its ``CUDA_VISIBLE_DEVICES``): ``devices``, else
    the trainer's own GPU, shared; None on CPU."""
    if device.type != "cuda":
        return None
    if devices:
        return [str(d) for d in devices]
    return [physical_gpu(device.index or 0)]


class ServerProcess:
    """A server process this sampler started: its socket and log in a private directory."""

    def __init__(
        self,
        cpus: list[int] | None,
        threads: int,
        log_level: str,
        key: bytes,
        gpus: list[str] | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="srpo-vllm-"))
        self.socket = str(self.dir / "engine.sock")
        self.log = self.dir / "server.log"
        env = {
            **os.environ,
            "SRPO_VLLM_KEY": key.decode(),
            # the engine's threads: one per core it owns, else as many as the trainer's
            "OMP_NUM_THREADS": str(len(cpus) if cpus else threads),
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            "PYTHONUNBUFFERED": "1",
        }
        env.setdefault("VLLM_LOGGING_LEVEL", log_level)
        if gpus is not None:  # the server's own numbering starts at 0 over these
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        cmd = [sys.executable, "-m", SERVER_MODULE, "--listen", f"unix:{self.socket}"]
        cmd += ["--once", "--parent", str(os.getpid()), "--log-level", log_level]
        if cpus:
            cmd += ["--cpus", ",".join(map(str, cpus))]
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpus))
        with open(self.log, "wb") as log:
            self.popen = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def ended(self) -> str | None:
        """None while it runs, else how it ended (with the last line of its log)."""
        code = self.popen.poll()
        if code is None:
            return None
        said = self.last_words() if code > 0 else ""  # a signal has nothing to add
        return f"the engine server (pid {self.pid}) {exit_status(code)}{said}"

    def wait_ended(self, timeout_s: float = 5.0) -> str | None:
        """``ended()`` after giving a process whose connection just closed time to exit."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout_s)
        return self.ended()

    def last_words(self) -> str:
        """': <last line of its log>' when it wrote one (why it failed to start)."""
        try:
            lines = [x.strip() for x in self.log.read_text(errors="replace").splitlines()]
        except OSError:
            return ""
        lines = [x for x in lines if x and not x.startswith(("Loading", "[W", "warnings"))]
        return f": {lines[-1][:300]}" if lines else ""

    def stop(self, grace_s: float = 10.0) -> None:
        """Wait ``grace_s`` for it to exit (after a shutdown request), then kill it."""
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)  # its session: nothing of it survives
            self.popen.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def pin_trainer(engine_cpus: Iterable[int]) -> set[int]:
    """Move every thread of this process off ``engine_cpus``; the affinity it had before
    (for ``unpin_trainer``). ``PluginError`` when the cores are not this process's, or
    leave it none."""
    before = os.sched_getaffinity(0)
    wanted = set(engine_cpus)
    if not wanted <= before:
        raise PluginError(
            f"sampler vllm: cpus {sorted(wanted - before)} are not among this process's "
            f"cores {sorted(before)}"
        )
    rest = before - wanted
    if not rest:
        raise PluginError(
            f"sampler vllm: cpus takes every core of this process ({sorted(before)}): leave "
            "the trainer at least one"
        )
    _set_all(rest)
    return before


def unpin_trainer(before: set[int]) -> None:
    _set_all(before)


def _set_all(cpus: set[int]) -> None:
    for tid in _threads():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus)
