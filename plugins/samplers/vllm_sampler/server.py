"""The engine server: ``vllm.LLM`` in a process of its own, for ``sampler: vllm`` with
``mode: server``.

The sampler starts one itself (``--once --parent PID``: it serves that sampler, and exits
when the sampler disconnects or its process is gone — a trainer killed with -9 leaves no
engine behind). To attach a run to a server started by hand (``url:``), start it with a key
both sides read from ``SRPO_VLLM_KEY``::

    SRPO_VLLM_KEY=... python -m srpo_plugins.samplers.vllm_sampler.server \\
        --listen 127.0.0.1:8765 --cpus 1

It serves one client at a time, and the engine is created by the first client's ``start``
with the arguments that client's sampler derives from its run file and policy — so the run
file stays the one place the engine is configured; a later client asking for different
arguments gets one line naming them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection, Listener
from typing import Any

from srpo_plugins.samplers.vllm_sampler.protocol import (
    describe,
    key_from_env,
    one_line,
    parse_address,
)

NAME = "srpo vllm server"

#: seconds a new client waits for the one before it to be let go (a run that follows
#: another closes and attaches back to back) before it is told the server is busy
HANDOVER_S = 5.0


class EngineServer:
    """The engine and the requests it answers (see ``protocol``)."""

    def __init__(self, log_level: str) -> None:
        self.log_level = log_level
        self.llm: Any = None
        self.args: dict[str, Any] | None = None
        self.transfer_open = False  # init_weight_transfer_engine was called on this engine
        self.updating = False  # between a push's wt_start and its wt_finish
        # why the engine is unusable: vLLM's in-place reload leaves the model without its
        # weights when a push fails half-way (the weights' file vanished, the stream broke)
        self.broken: str | None = None

    def serve(self, conn: Connection) -> bool:
        """Answer one client until it disconnects (False) or asks to shut down (True)."""
        while True:
            try:
                op, payload = conn.recv()
            except (EOFError, OSError):
                if self.updating and self.broken is None:  # the model holds part of a push
                    self.broken = "its client went away in the middle of a push"
                self.updating = False
                return False
            if op == "shutdown":
                conn.send(("ok", None))
                return True
            try:
                reply = ("ok", getattr(self, f"op_{op}")(payload, conn))
            except Exception as e:  # one line back to the sampler; the server lives on
                reply = ("error", one_line(e).removeprefix("sampler vllm: "))
            try:
                conn.send(reply)
            except OSError:  # the client is gone
                return False

    def op_ping(self, payload: Any, conn: Connection) -> str:
        return "pong"

    def op_start(self, payload: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Create the engine (first client), or check a later client wants the same one."""
        import torch

        args = payload["engine_args"]
        if self.broken is not None:  # a new run: a new engine
            self._drop()
        if self.llm is None:
            from srpo_plugins.samplers.vllm_sampler.engine import open_llm
            from srpo_plugins.samplers.vllm_sampler.native import register

            register()  # the srpo_shm weight-transfer backend, before the engine names it
            self.llm = open_llm(args, self.log_level)
            self.transfer_open = False
            self.args = args
        elif args != self.args:
            assert self.args is not None
            diff = sorted(k for k in {*args, *self.args} if args.get(k) != self.args.get(k))
            raise ValueError(
                f"its engine was started with other arguments ({', '.join(diff)}): restart "
                "the server, or run with the options it was started for"
            )
        dtype = self.llm.llm_engine.model_config.dtype
        return {
            "pid": os.getpid(),
            "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
            "cpus": sorted(os.sched_getaffinity(0)),
        }

    def _drop(self) -> None:
        llm, self.llm, self.args, self.broken = self.llm, None, None, None
        self.updating = False
        shutdown = getattr(getattr(llm, "llm_engine", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        gc.collect()

    def _usable(self) -> None:
        if self.llm is None:
            raise RuntimeError("no engine: the client must send start first")
        if self.broken is not None:
            raise RuntimeError(
                f"its engine lost its weights in a failed push ({self.broken}); the next run "
                "that attaches starts a new one"
            )

    def op_generate(self, payload: dict[str, Any], conn: Connection) -> list[Any]:
        from srpo_plugins.samplers.vllm_sampler.engine import completions
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._usable()
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in payload["prompts"]]
        params = [SamplingParams(**p) for p in payload["params"]]
        outputs = self.llm.generate(prompts, params, use_tqdm=False) if prompts else []
        return completions(outputs, payload["logprobs"])

    def op_prompt_logprobs(self, ids: list[int], conn: Connection) -> list[float]:
        from srpo_plugins.samplers.vllm_sampler.weights import engine_logprobs

        self._usable()
        return engine_logprobs(self.llm, ids).tolist()

    def op_load_weights(self, payload: Any, conn: Connection) -> None:
        """The ``socket`` transport (a server on another machine): the weights stream in over
        this connection after the request, into vLLM's in-place reload."""
        from srpo_plugins.samplers.vllm_sampler.transport import StreamReader
        from srpo_plugins.samplers.vllm_sampler.weights import load_weights

        stream = StreamReader(conn)
        try:
            with self._weights_at_risk():
                load_weights(self.llm, stream)
        finally:
            stream.finish()

    # vLLM's weight-transfer control plane (``native``; the client is weight_sync's)

    def op_wt_init(self, init_info: dict[str, Any], conn: Connection) -> None:
        self._usable()
        if self.transfer_open:  # a client before this one opened it (an attached server)
            self.llm.shutdown_weight_transfer_engine()
        self.llm.init_weight_transfer_engine({"init_info": init_info})
        self.transfer_open = True

    def op_wt_start(self, payload: None, conn: Connection) -> None:
        with self._weights_at_risk():
            self.llm.start_weight_update()
        self.updating = True

    def op_wt_update(self, update_info: Any, conn: Connection) -> None:
        with self._weights_at_risk():
            self.llm.update_weights({"update_info": update_info})

    def op_wt_finish(self, version: str | None, conn: Connection) -> None:
        with self._weights_at_risk():
            self.llm.finish_weight_update(version)
        self.updating = False
        self.llm.reset_prefix_cache()  # its KV came from the old weights

    def op_weight_version(self, payload: None, conn: Connection) -> str:
        """The version the last finished update gave the engine (the push count)."""
        self._usable()
        return str(self.llm.get_weight_version())

    @contextlib.contextmanager
    def _weights_at_risk(self) -> Iterator[None]:
        """A step of a push: if it fails, the model may hold part of the weights (vLLM
        reloads in place), so the engine is not used again."""
        self._usable()
        try:
            yield
        except Exception as e:
            if self.llm is not None and self.broken is None:
                self.broken = one_line(e)
            raise


def _exit_with(parent: int) -> None:
    """End this process when ``parent`` is gone (a trainer killed with -9 cannot say so)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else NAME}")
    parser.add_argument("--listen", required=True, help="host:port or unix:/path")
    parser.add_argument("--cpus", help="cores to run on, e.g. 1 or 2,3 (default: all)")
    parser.add_argument("--parent", type=int, help="exit when this process is gone")
    parser.add_argument("--once", action="store_true", help="exit after the first client")
    parser.add_argument("--log-level", default="ERROR", help="vLLM's log level")
    args = parser.parse_args(argv)
    if args.cpus:  # before torch starts its threads: every thread inherits the set
        try:
            os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
        except (ValueError, OSError) as e:
            print(f"{NAME}: error: --cpus {args.cpus}: {e}", file=sys.stderr)
            return 2
    key = key_from_env()
    if key is None:
        print(f"{NAME}: error: set SRPO_VLLM_KEY (the run reads the same)", file=sys.stderr)
        return 2
    try:
        address = parse_address(args.listen)
        listener = Listener(address, authkey=key)
    except (ValueError, OSError) as e:
        print(f"{NAME}: error: --listen {args.listen}: {e}", file=sys.stderr)
        return 2
    if args.parent is not None:
        threading.Thread(target=_exit_with, args=(args.parent,), daemon=True).start()
    print(f"{NAME}: listening on {describe(address)} (pid {os.getpid()})", flush=True)
    server = EngineServer(args.log_level)
    busy = threading.Lock()  # held while a client is served
    clients: queue.Queue[Connection] = queue.Queue()
    closing = threading.Event()
    accepting = (listener, busy, clients, closing)
    threading.Thread(target=_accept, args=accepting, daemon=True).start()
    try:
        while True:  # the engine is driven from the main thread only
            conn = clients.get()
            with conn:
                shutdown = server.serve(conn)
            busy.release()
            if shutdown or args.once:
                return 0
    finally:
        closing.set()
        listener.close()


def _accept(
    listener: Listener, busy: threading.Lock, clients: queue.Queue, closing: threading.Event
) -> None:
    """Accept clients; one is served at a time, one arriving meanwhile is told so within
    ``HANDOVER_S`` (instead of waiting unseen for the first run to end)."""
    while True:
        try:
            conn = listener.accept()
        except Exception as e:  # a client with the wrong key, or one that hung up
            if closing.is_set():
                return
            print(f"{NAME}: refused a connection: {one_line(e)}", flush=True)
            continue
        if busy.acquire(timeout=HANDOVER_S):  # the previous client may be just leaving
            clients.put(conn)
            continue
        with contextlib.suppress(OSError), conn:
            conn.send(("error", "it serves another run (one at a time)"))


if __name__ == "__main__":
    sys.exit(main())
