"""The sampler's side of ``mode: server``: an engine server it started, or one it attached
to, behind the calls the sampler makes of an engine (generate, prompt log-probs, a weight
push, close).

Every failure of the server reaches the run as one ``PluginError`` line: a server that died
names its pid and how it ended (``was killed by signal 9 (SIGKILL)``), one that does not
start in ``startup_timeout_s`` is killed and says so, an attached server that drops the
connection is named by its URL. After such a failure the engine is never used again.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection
from typing import Any

import torch
from srpo_plugins.samplers.vllm_sampler.engine import Completion
from srpo_plugins.samplers.vllm_sampler.process import ServerProcess, pin_trainer, unpin_trainer
from srpo_plugins.samplers.vllm_sampler.protocol import (
    KEY_ENV,
    RemoteError,
    ServerGone,
    await_reply,
    connect,
    describe,
    is_local,
    key_from_env,
    one_line,
    parse_address,
    send,
)
from srpo_plugins.samplers.vllm_sampler.transport import send_stream
from srpo_plugins.samplers.vllm_sampler.weight_sync import Weights, WeightSync

from srpo.api import PluginError, warn


class RemoteEngine:
    """An engine server: started here (``url`` None) or attached to at ``url``."""

    def __init__(
        self,
        options: Any,
        engine_args: dict[str, Any],
        threads: int,
        gpus: list[str] | None = None,
    ) -> None:
        self.options = options
        self.gpus = gpus  # CUDA: the GPUs a server we start runs on (server_gpus)
        self.proc: ServerProcess | None = None
        self.conn: Connection | None = None
        self.pinned: set[int] | None = None
        self.broken = False  # the server died or a request was abandoned: never used again
        self.sync: WeightSync | None = None  # pushes through vLLM's weight-transfer calls
        self.where = "the engine server"
        deadline = time.monotonic() + options.startup_timeout_s
        try:
            if options.url is None:
                address, key = self._spawn(threads)
                self.where = f"the engine server (pid {self.proc.pid})"  # type: ignore[union-attr]
            else:
                address, key = self._attach_address()
                self.where = f"the engine server at {options.url}"
            self.conn = self._connect(address, key, deadline)
            self.info = self._call(
                "start", {"engine_args": engine_args}, timeout_s=deadline - time.monotonic()
            )
        except BaseException:
            self.close()
            raise
        if options.url is not None:
            self.where = f"the engine server at {options.url} (pid {self.info['pid']})"
        transport = options.weight_transport
        if transport == "auto":
            transport = "shm" if is_local(address) else "socket"
        self.transport = transport
        # every transport but socket goes through vLLM's weight-transfer control plane:
        # srpo_shm on CPU, vLLM's ipc or nccl on CUDA (weight_sync, native)
        backend = engine_args["weight_transfer_config"]["backend"]
        if transport != "socket":
            self.sync = WeightSync(self._call, backend, int(engine_args["tensor_parallel_size"]))

    # -- starting -------------------------------------------------------------------------

    def _spawn(self, threads: int) -> tuple[str, bytes]:
        o = self.options
        if o.cpus:
            self.pinned = pin_trainer(o.cpus)  # checks the cores before anything starts
            left = len(self.pinned) - len(o.cpus)
            if threads > left:
                warn(
                    f"sampler vllm: the trainer runs {threads} threads on the {left} core(s) "
                    f"cpus leaves it: set run.threads: {left}"
                )
        key = secrets.token_hex(16).encode()
        self.proc = ServerProcess(o.cpus, threads, o.log_level, key, self.gpus)
        return self.proc.socket, key

    def _attach_address(self) -> tuple[Any, bytes]:
        key = key_from_env()
        if key is None:
            raise PluginError(
                f"sampler vllm: url: set {KEY_ENV} to the key the engine server was started with"
            )
        return parse_address(self.options.url), key

    def _connect(self, address: Any, key: bytes, deadline: float) -> Connection:
        """Connect, retrying while a server we started is still coming up."""
        while True:
            try:
                return connect(address, key)
            except (FileNotFoundError, ConnectionRefusedError) as e:
                if self.proc is None:
                    raise PluginError(
                        f"sampler vllm: no engine server at {describe(address)}: {one_line(e)}"
                    ) from None
            except Exception as e:  # the wrong key, a reset: nothing to retry
                raise PluginError(
                    f"sampler vllm: cannot connect to the engine server at {describe(address)}: "
                    f"{type(e).__name__}: {one_line(e)}"
                ) from None
            ended = self.proc.ended()
            if ended is not None:
                raise PluginError(f"sampler vllm: while starting, {ended}")
            if time.monotonic() >= deadline:
                raise self._start_timeout()
            time.sleep(0.1)

    def _start_timeout(self) -> PluginError:
        self.broken = True
        return PluginError(
            f"sampler vllm: the engine server did not start within "
            f"{self.options.startup_timeout_s:g} s (startup_timeout_s)"
        )

    # -- requests -------------------------------------------------------------------------

    def _ended(self) -> str | None:
        return None if self.proc is None else self.proc.ended()

    def _gone(self, why: str) -> PluginError:
        """The error for a server that is gone: how its process ended when we started it,
        else that the connection closed."""
        self.broken = True
        ended = self.proc.wait_ended() if self.proc is not None else None
        said = ended or f"{self.where} closed the connection ({why})"
        return PluginError(f"sampler vllm: {said}; the run stops")

    def _call(
        self,
        op: str,
        payload: Any = None,
        timeout_s: float | None = None,
        stream: Iterable[tuple[str, torch.Tensor]] | None = None,
    ) -> Any:
        """One request (``stream``: weights sent after it as raw frames) and its reply."""
        if self.broken or self.conn is None:
            raise PluginError(f"sampler vllm: {self.where} failed earlier and is not used again")
        try:
            send(self.conn, op, payload)
            if stream is not None:
                send_stream(self.conn, stream)
            return await_reply(self.conn, self._ended, timeout_s)
        except RemoteError as e:
            raise PluginError(f"sampler vllm: {self.where}: {e}") from None
        except TimeoutError:  # before OSError, of which it is a subclass
            if op == "start":
                raise self._start_timeout() from None
            self.broken = True
            raise PluginError(f"sampler vllm: {op} timed out") from None
        except (ServerGone, OSError) as e:
            raise self._gone(one_line(e)) from None
        except BaseException:  # interrupted mid-request: the reply is still on its way
            self.broken = True
            raise

    def generate(
        self, prompts: list[list[int]], params: list[dict[str, Any]], with_logprobs: bool
    ) -> list[list[Completion]]:
        payload = {"prompts": prompts, "params": params, "logprobs": with_logprobs}
        return self._call("generate", payload)

    def prompt_logprobs(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor(self._call("prompt_logprobs", ids), dtype=torch.float64)

    def push(self, weights: Weights, version: int) -> None:
        """The weights (``weights()`` iterates them) into the server's engine, in place, its
        prefix cache reset; ``version`` becomes its weight version (vLLM's control plane:
        not the socket transport). No deadline here: the sampler's watchdog bounds it."""
        if self.sync is not None:
            self.sync.push(weights, version)
        else:
            self._call("load_weights", None, stream=weights())

    def weight_version(self) -> str:
        """The engine's weight version: the ``version`` of the last push it finished."""
        return str(self._call("weight_version"))

    # -- stopping -------------------------------------------------------------------------

    def abandon(self) -> None:
        """A request was given up on (a watchdog fired): the connection is out of step."""
        self.broken = True

    def close(self) -> None:
        """Stop a server we started (asked, then killed after a grace period); leave an
        attached one running for the next run. Restore the trainer's cores."""
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.proc is not None and not self.broken:
                with contextlib.suppress(Exception):
                    send(conn, "shutdown")
                    await_reply(conn, self._ended, 10.0)
            with contextlib.suppress(OSError):
                conn.close()
        if self.proc is not None:
            self.proc.stop(grace_s=0.0 if self.broken else 10.0)
        if self.sync is not None:
            with contextlib.suppress(Exception):  # its file in /dev/shm; a CUDA group
                self.sync.close()
        if self.pinned is not None:
            unpin_trainer(self.pinned)
            self.pinned = None
