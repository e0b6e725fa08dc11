"""Judge processes on the trusted side: send a judge request, wait at most until a deadline.

The trainer's process only moves bytes here: it never decodes a returned value nor runs a
test on one. A worker that misses its deadline, crashes, runs out of memory or answers
garbage is SIGKILLed and replaced, and the caller gets ``None`` (every open test fails).
Workers are reused across samples; one runs per verifier thread at most.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .._worker import KillableWorker

_BOOT = """\
import sys, types
pkg = types.ModuleType("_srpo_judge")
pkg.__path__ = [{dir!r}]
sys.modules["_srpo_judge"] = pkg
from _srpo_judge.worker import main
main({memory})
"""
_MAX_ANSWER_BYTES = 64 << 20


class JudgeWorker(KillableWorker):
    """One judge process: ``python -I -S`` with only the judge's modules loaded."""

    def __init__(self, memory_bytes: int, python: str = sys.executable) -> None:
        boot = _BOOT.format(dir=str(Path(__file__).parent), memory=memory_bytes)
        super().__init__([python, "-I", "-S", "-c", boot], max_reply_bytes=_MAX_ANSWER_BYTES)

    def call(self, msg: dict[str, Any], deadline: float) -> dict[str, Any] | None:
        """The worker's answer, or None when it missed ``deadline`` or misbehaved."""
        msg = {**msg, "cpu_s": max(1, math.ceil(deadline - time.monotonic()))}
        # the worker is idle, so it reads all of this before doing anything else
        if not self.send(json.dumps(msg).encode()):
            return None
        got = self.receive(deadline)
        if not isinstance(got, bytes):
            return None
        try:
            ans = json.loads(got)
        except (ValueError, RecursionError):
            return None
        return ans if isinstance(ans, dict) and "error" not in ans else None


class JudgePool:
    """Idle ``JudgeWorker``s, started on demand and killed when a call goes wrong."""

    def __init__(self, memory_bytes: int) -> None:
        self.memory_bytes = memory_bytes
        self._idle: list[JudgeWorker] = []
        self._lock = threading.Lock()
        self._closed = False

    def call(self, msg: dict[str, Any], deadline: float) -> dict[str, Any] | None:
        """Judge ``msg`` before ``deadline`` (time.monotonic); None if that failed."""
        if time.monotonic() >= deadline:
            return None
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = JudgeWorker(self.memory_bytes)
        ans = None
        try:
            ans = worker.call(msg, deadline)
        finally:
            if ans is None:
                worker.kill()
            else:
                with self._lock:
                    keep = not self._closed
                    if keep:
                        self._idle.append(worker)
                if not keep:
                    worker.kill()
        return ans

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for w in idle:
            w.kill()
