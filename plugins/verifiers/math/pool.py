"""The slow path's hard time bound: math-verify in worker processes that can be killed.

Math-verify's own timeout uses ``signal.alarm``, which works only in the main thread and
never interrupts a long C call inside sympy. So each comparison runs in a persistent worker
subprocess (``worker.py``, a ``KillableWorker``); one that overruns its budget is killed and
a pre-started spare takes over at once. The bound holds whatever sympy does.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .._worker import KillableWorker, Slot

#: What a worker runs: ``worker.py`` plus the call of its entry.
WORKER_SRC = Path(__file__).with_name("worker.py").read_text() + "\nmain()\n"

#: Seconds a worker may take to import sympy and report ready.
STARTUP_TIMEOUT_S = 60.0


class Worker(KillableWorker):
    """One math-verify subprocess speaking JSON frames; killed when it overruns."""

    src = WORKER_SRC  # class attribute so tests can swap in a misbehaving worker

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMP")}
        super().__init__([sys.executable, "-c", self.src], env=env)

    def call(self, gold: str, pred: str, budget: float) -> dict[str, Any] | None:
        """Verdict dict, or None if the worker overran ``budget`` or broke the protocol (it
        is then dead)."""
        deadline = time.monotonic() + budget
        # the worker's own alarm fires first, so most overruns cost no restart
        req = {"gold": gold, "pred": pred, "soft": max(budget * 0.8, 0.01)}
        if not self.send(json.dumps(req).encode()):
            return None
        got = self.receive(deadline)
        try:
            res = json.loads(got) if isinstance(got, bytes) else None
        except ValueError:
            res = None
        if not isinstance(res, dict):
            self.kill()
            return None
        return res


def _ready(body: bytes) -> bool:
    return body == b'{"ready": true}'


def live_worker(slot: Slot, startup_timeout: float) -> Worker:
    """A live, ready worker of ``slot``: the current one, or its replacement if it died."""
    worker = slot.live()
    assert isinstance(worker, Worker)
    if not worker.handshake(time.monotonic() + startup_timeout, _ready):
        raise RuntimeError("math-verify worker failed to start")
    return worker


class WorkerPool:
    """``n`` slots and ``n`` threads that feed them; started on first use, restartable."""

    def __init__(self, n: int, spare: bool) -> None:
        self.n = n
        self.spare = spare
        self._slots: queue.Queue[Slot] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> tuple[queue.Queue[Slot], ThreadPoolExecutor]:
        """Start the slots and threads if not running (workers start in the background)."""
        with self._lock:
            if self._slots is None or self._executor is None:
                self._slots = queue.Queue()
                for _ in range(self.n):
                    self._slots.put(Slot(Worker, self.spare))
                self._executor = ThreadPoolExecutor(self.n, thread_name_prefix="mathv")
            return self._slots, self._executor

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` on a pool thread (``fn`` typically calls ``compare``)."""
        return self._ensure()[1].submit(fn, *args)

    def compare(self, gold: str, pred: str, budget: float) -> dict[str, Any]:
        """Verdict of one comparison, within ``budget`` seconds whatever sympy does."""
        slots = self._ensure()[0]
        slot = slots.get()
        try:
            res = live_worker(slot, STARTUP_TIMEOUT_S).call(gold, pred, budget)
            if res is None:
                return {"correct": False, "error": f"timeout after {budget}s"}
            return res
        finally:
            slots.put(slot)

    def warmup(self) -> None:
        """Wait until every worker is ready (otherwise: on the first slow-path answer)."""
        slots = self._ensure()[0]
        held = [slots.get() for _ in range(self.n)]
        try:
            for s in held:
                live_worker(s, STARTUP_TIMEOUT_S)
        finally:
            for s in held:
                slots.put(s)

    def close(self) -> None:
        """Finish queued comparisons, then kill every worker."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            if self._slots is not None:
                while not self._slots.empty():
                    self._slots.get().close()
                self._slots = None
