"""Length-prefixed pickles over pipes: the worker protocol's wire format.

Pickle rather than JSON so references reach the function with their exact types (a
Parquet row's values need not be JSON); only builtins travel back (see ``verdict``).
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, BinaryIO

HEADER = struct.Struct("!Q")


def encode(obj: Any) -> bytes:
    """One frame: the pickle's length, then the pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def write(f: BinaryIO, obj: Any) -> None:
    f.write(encode(obj))
    f.flush()


def _exactly(f: BinaryIO, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = f.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read(f: BinaryIO) -> Any:
    """The next frame's object, blocking; None at end of stream."""
    head = _exactly(f, HEADER.size)
    if head is None:
        return None
    body = _exactly(f, HEADER.unpack(head)[0])
    return None if body is None else pickle.loads(body)
