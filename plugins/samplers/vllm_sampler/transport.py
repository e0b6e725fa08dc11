"""Weights from the trainer to an engine server on CPU, both ends.

Two transports, one layout (name, dtype, shape, raw bytes per tensor, in the order the
policy yields them — the order ``reload_weights`` consumes them in):

* ``shm``: one file of the flattened weights in /dev/shm (RAM-backed), rewritten in place at
  every push; the server maps it and hands the engine views into the mapping, so the bytes
  are copied twice (trainer → file, mapping → engine parameters) and never pickled. The file
  is named after the trainer's pid, so a file left by a trainer that was killed is removed
  by the next one to start.
* ``socket``: each tensor as one raw frame on the RPC connection, consumed by the engine as
  it arrives (the only way to a server on another machine).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import torch

#: byte alignment of every tensor in the shm file (a view needs its dtype's alignment)
ALIGN = 64

#: (name, dtype, shape, offset, nbytes) of one tensor in the shm file
Entry = tuple[str, str, tuple[int, ...], int, int]

_SHM_NAME = re.compile(r"srpo-vllm-(\d+)-[0-9a-f]+\.bin")


def raw(t: torch.Tensor) -> np.ndarray:
    """A tensor's bytes as a flat uint8 array (a view when it is already contiguous on CPU);
    viewing as bytes keeps bfloat16, which numpy has no type for."""
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def shm_dir() -> Path:
    """/dev/shm where it exists (RAM, not disk), else the temp directory."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_stale_files(where: Path) -> None:
    """Remove weight files whose trainer is gone (a kill -9 leaves its file behind)."""
    for path in where.glob("srpo-vllm-*.bin"):
        match = _SHM_NAME.fullmatch(path.name)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                path.unlink()


class ShmFile:
    """The trainer's side of the ``shm`` transport: one file, rewritten at every push."""

    def __init__(self) -> None:
        where = shm_dir()
        remove_stale_files(where)
        self.path = where / f"srpo-vllm-{os.getpid()}-{secrets.token_hex(4)}.bin"

    def write(self, weights: Iterable[tuple[str, torch.Tensor]]) -> list[Entry]:
        """Write every tensor (aligned), truncate to this push's size; the index."""
        index: list[Entry] = []
        offset = 0
        with open(self.path, "r+b" if self.path.exists() else "wb") as f:
            for name, t in weights:
                data = raw(t)
                offset = -(-offset // ALIGN) * ALIGN
                f.seek(offset)
                f.write(memoryview(data))
                index.append((name, dtype_name(t), tuple(t.shape), offset, data.nbytes))
                offset += data.nbytes
            f.truncate(offset)
        return index

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


class ShmReader:
    """The server's side of ``shm``: views into a shared mapping of the file (no copy). The
    mapping is kept while the file keeps its size: the trainer rewrites the same pages, so a
    later push reads them without faulting every page in again (540 MB of float32 SmolLM2:
    0.11 s to copy out of a kept mapping, 0.7-0.9 s through a fresh one; 2-core EPYC VM)."""

    def __init__(self) -> None:
        self.key: tuple[str, int] | None = None
        self.buf: torch.Tensor | None = None

    def read(self, path: str, index: list[Entry]) -> Iterator[tuple[str, torch.Tensor]]:
        key = (path, os.path.getsize(path))
        if key != self.key or self.buf is None:
            self.buf = None  # unmap the old one first
            self.buf = torch.from_file(path, shared=True, size=key[1], dtype=torch.uint8)
            self.key = key
        buf = self.buf
        for name, dtype, shape, offset, nbytes in index:
            yield name, buf[offset : offset + nbytes].view(getattr(torch, dtype)).view(shape)


def send_stream(conn: Connection, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """The trainer's side of ``socket``: a header and a raw frame per tensor, then None."""
    for name, t in weights:
        data = raw(t)
        conn.send((name, dtype_name(t), tuple(t.shape), data.nbytes))
        conn.send_bytes(memoryview(data))
    conn.send(None)


class StreamReader:
    """The server's side of ``socket``: tensors as their frames arrive, until the None.
    ``finish()`` skips what a failed load left unread, so the next request is in step."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.done = False

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        while (header := self.conn.recv()) is not None:
            name, dtype, shape, nbytes = header
            buf = bytearray(nbytes)
            self.conn.recv_bytes_into(buf)
            t = torch.frombuffer(buf, dtype=torch.uint8)
            yield name, t.view(getattr(torch, dtype)).view(shape)
        self.done = True

    def finish(self) -> None:
        while not self.done:
            header = self.conn.recv()
            if header is None:
                self.done = True
            else:
                self.conn.recv_bytes_into(bytearray(header[3]))
