"""Decode values a program returned, bounded: plain types only, every cost linear.

A program chooses the bytes it returns, so decoding them must not give it a way to make the
judge slow: no recursion (deep nesting cannot exhaust the stack), caps on depth, element
count, integer and float-literal size, and a refusal of data whose distinct hashable
elements collide in hash (building a set or dict of those, here or in a test, is
quadratic). Integers keep to a bit length whose arithmetic stays cheap. Runs in the judge
worker (``worker``), which is also killed at its time budget: the caps make hostile values
fail fast and plainly, the budget covers what the caps cannot foresee.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 512  # ``harness.encode`` sends 200 levels; a dict entry counts as two
MAX_NODES = 2_000_000
MAX_INT_BITS = 1 << 20  # ~315,000 decimal digits: a square of it still takes milliseconds
MAX_COLLISIONS = 8  # distinct values sharing one hash


class BadValue(ValueError):
    """A returned value that is malformed or over a cap: the test fails, nothing else."""


def _int(v: int) -> int:
    if v.bit_length() > MAX_INT_BITS:
        raise BadValue(f"integer over {MAX_INT_BITS} bits")
    return v


def _float(s: Any) -> float:
    if not isinstance(s, str) or len(s) > 32:
        raise BadValue("malformed float")
    return float(s)


def _scalar(x: Any) -> Any:
    """A tag-free JSON scalar, or a tagged one ($i, $f, $c, $b); BadValue otherwise."""
    if x is None or isinstance(x, bool | str | float):
        return x
    if isinstance(x, int):
        return _int(x)
    if not isinstance(x, dict) or len(x) != 1:
        raise BadValue("malformed value")
    ((tag, v),) = x.items()
    if tag == "$i":
        if not isinstance(v, str) or len(v) > MAX_INT_BITS // 4 + 4:
            raise BadValue(f"integer over {MAX_INT_BITS} bits")
        return _int(int(v, 16))
    if tag == "$f":
        return _float(v)
    if tag == "$c":
        if not isinstance(v, list) or len(v) != 2:
            raise BadValue("malformed complex")
        parts = [p if isinstance(p, float | int) else _float(p.get("$f")) for p in v]
        return complex(*(float(p) for p in parts))
    if tag == "$b":
        if not isinstance(v, str):
            raise BadValue("malformed bytes")
        return bytes.fromhex(v)
    raise BadValue(f"unknown tag {str(tag)[:20]!r}")


class _Hashes:
    """Distinct values per hash; refuses a hash shared by more than MAX_COLLISIONS."""

    def __init__(self) -> None:
        self.seen: dict[int, list[Any]] = {}

    def add(self, x: Any) -> None:
        group = self.seen.setdefault(hash(x), [])
        for y in group:
            if type(y) is type(x) and y == x:
                return
        if len(group) >= MAX_COLLISIONS:
            raise BadValue("too many distinct values with one hash")
        group.append(x)


def _build(tag: str, items: list[Any]) -> Any:
    if tag == "list":
        return items
    if tag == "$t":
        return tuple(items)
    if tag == "$d":
        if not all(isinstance(p, list) and len(p) == 2 for p in items):
            raise BadValue("malformed dict")
        keys = _Hashes()
        for k, _ in items:
            keys.add(k)
        return dict(items)
    members = _Hashes()
    for x in items:
        members.add(x)
    return set(items) if tag == "$s" else frozenset(items)


def decode_value(enc: Any) -> Any:
    """The inverse of ``harness.encode``, iterative and capped; raises BadValue/TypeError."""
    nodes = 0
    leaves = _Hashes()  # a list of colliding ints is quadratic too, once a test sets it
    top: list[Any] = []
    stack: list[tuple[str, Any, list[Any], list[Any]]] = []

    def visit(x: Any, sink: list[Any]) -> bool:
        """Append a scalar to ``sink`` (False) or open a container on the stack (True)."""
        nonlocal nodes
        nodes += 1
        if nodes > MAX_NODES:
            raise BadValue(f"value has over {MAX_NODES} elements")
        tag, items = "list", x
        if isinstance(x, dict) and len(x) == 1:
            ((tag, items),) = x.items()
        if (tag == "list" and isinstance(x, list)) or tag in ("$t", "$s", "$fs", "$d"):
            if not isinstance(items, list):
                raise BadValue("malformed container")
            if len(stack) >= MAX_DEPTH:
                raise BadValue(f"value nested over {MAX_DEPTH} levels")
            stack.append((tag, iter(items), [], sink))
            return True
        v = _scalar(x)
        if isinstance(v, int | float | complex) and not isinstance(v, bool):
            leaves.add(v)
        sink.append(v)
        return False

    visit(enc, top)
    while stack:
        tag, it, out, sink = stack[-1]
        for x in it:
            if visit(x, out):
                break
        else:
            stack.pop()
            sink.append(_build(tag, out))
    return top[0]
