"""The slow path's hard time bound: math-verify in worker processes that can be killed.

Math-verify's own timeout uses ``signal.alarm``, which works only in the main thread and
never interrupts a long C call inside sympy. So each comparison runs in a persistent worker
subprocess (``worker.py``); one that overruns its budget is killed and a pre-started spare
takes over at once. The bound holds whatever sympy does.
"""

from __future__ import annotations

import json
import os
import queue
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .._session import kill_session

#: What a worker runs: ``worker.py`` plus the call of its entry.
WORKER_SRC = Path(__file__).with_name("worker.py").read_text() + "\nmain()\n"

#: Seconds a worker may take to import sympy and report ready.
STARTUP_TIMEOUT_S = 60.0


class Worker:
    """One math-verify subprocess speaking JSON lines; killed when it overruns."""

    src = WORKER_SRC  # class attribute so tests can swap in a misbehaving worker

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMP")}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.src],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a terminal ^C goes to the trainer, not here
        )
        self._buf = b""
        self.ready = False

    def _readline(self, deadline: float | None) -> bytes | None:
        """One line from the worker, or None on timeout/EOF."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                if not sel.select(left):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def wait_ready(self, deadline: float | None) -> bool:
        """Whether the worker finished start-up (reported ready) by ``deadline``."""
        if not self.ready:
            line = self._readline(deadline)
            self.ready = line is not None and b"ready" in line
        return self.ready

    def call(self, gold: str, pred: str, budget: float) -> dict[str, Any] | None:
        """Verdict dict, or None if the worker overran ``budget`` (it is then dead)."""
        deadline = time.monotonic() + budget
        assert self.proc.stdin is not None
        try:
            # the worker's own alarm fires first, so most overruns cost no restart
            req = {"gold": gold, "pred": pred, "soft": max(budget * 0.8, 0.01)}
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            self.kill()
            return None
        line = self._readline(deadline)
        if line is None:
            self.kill()
            return None
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Kill the worker's whole session (sympy may have started helpers) and reap it."""
        kill_session(self.proc)


class Slot:
    """A worker plus a pre-started spare, so a kill costs no start-up wait."""

    def __init__(self, spare: bool) -> None:
        self.worker = Worker()
        self.spare = Worker() if spare else None

    def get(self, startup_timeout: float) -> Worker:
        """A live, ready worker: the current one, or its replacement if it was killed."""
        if not self.worker.alive():
            self.worker.kill()
            if self.spare is not None:
                self.worker, self.spare = self.spare, Worker()
            else:
                self.worker = Worker()
        if not self.worker.wait_ready(time.monotonic() + startup_timeout):
            self.worker.kill()
            raise RuntimeError("math-verify worker failed to start")
        return self.worker

    def close(self) -> None:
        for w in (self.worker, self.spare):
            if w is not None:
                w.kill()


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
                    self._slots.put(Slot(self.spare))
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
            res = slot.get(startup_timeout=STARTUP_TIMEOUT_S).call(gold, pred, budget)
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
                s.get(startup_timeout=STARTUP_TIMEOUT_S)
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
