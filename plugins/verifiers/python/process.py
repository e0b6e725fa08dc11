"""The reward function in killable worker processes: a hang costs one kill and a restart.

Python cannot stop a thread, so a time limit that must hold runs the function elsewhere: a
persistent worker process per slot imports the reward file once and answers calls over
pipes (``runtime.serve``). Its own alarm stops most overruns at ``timeout_s``; one that
does not stop is killed ``KILL_GRACE_S`` later, with everything it started (it leads its
own session), and the slot starts a fresh worker for the calls that are left.
"""

from __future__ import annotations

import pickle
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._worker import CLOSED, SILENCE, KillableWorker
from .._worker import Slot as WorkerSlot
from .runtime.invoke import Args

#: Seconds a worker may take to import the reward file (and what it imports) at start-up.
STARTUP_TIMEOUT_S = 120.0

#: The worker's own alarm fires at ``timeout_s``; this much later the process is killed.
KILL_GRACE_S = 1.0

#: Largest reply accepted from a worker (a verdict is a few hundred bytes).
MAX_REPLY_BYTES = 64 << 20

#: Loads ``runtime`` as a standalone package (without its parents, hence without srpo and
#: torch) and serves. argv: runtime dir, reward file, function name, "1" when batched.
BOOT = """\
import importlib.util, sys
folder, path, function, batched = sys.argv[1:]
spec = importlib.util.spec_from_file_location(
    "_srpo_reward_runtime", folder + "/__init__.py", submodule_search_locations=[folder])
pkg = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pkg
spec.loader.exec_module(pkg)
from _srpo_reward_runtime.serve import main
main(path, function, batched == "1")
"""

RUNTIME_DIR = Path(__file__).with_name("runtime")


@dataclass(frozen=True)
class Target:
    """Which function of which file, called in which form."""

    path: Path
    function: str
    batched: bool


@dataclass(frozen=True)
class StartFailure:
    """Why a worker could not serve; ``option`` as in ``runtime.load.LoadError``."""

    message: str
    option: str | None = None


class WorkerProcess(KillableWorker):
    """One worker: started at construction, ready once it has imported the reward file."""

    def __init__(self, target: Target) -> None:
        self.target = target
        argv = [str(RUNTIME_DIR), str(target.path), target.function, "1" if target.batched else "0"]
        # stderr inherited: the function's prints and warnings reach the trainer's log
        super().__init__(
            [sys.executable, "-c", BOOT, *argv], stderr=None, max_reply_bytes=MAX_REPLY_BYTES
        )

    def reply(self, deadline: float) -> Any:
        """The next frame's object, ``SILENCE`` at the deadline, or ``CLOSED``."""
        got = self.receive(deadline)
        if not isinstance(got, bytes):
            return got
        try:
            return pickle.loads(got)
        except Exception:  # a corrupted stream: this worker cannot be trusted any more
            self.kill()
            return CLOSED

    def start(self, deadline: float) -> StartFailure | None:
        """Wait until the worker imported the reward file; why not, if it did not."""
        if self.ready:
            return None
        got = self.reply(deadline)
        if isinstance(got, tuple) and got[0] == "ready":
            self.ready = True
            return None
        self.kill()
        if isinstance(got, tuple) and got[0] == "fatal":
            return StartFailure(got[2], got[1])
        if got is SILENCE:
            return StartFailure(
                f"{self.target.path}: importing it took longer than {STARTUP_TIMEOUT_S:g}s"
            )
        return StartFailure(f"{self.target.path}: the worker exited at start-up ({self.exit()})")

    def request(self, soft: float, calls: Sequence[bytes]) -> bool:
        """Hand the worker a request; False if it is gone."""
        return self.send(pickle.dumps((soft, list(calls)), protocol=pickle.HIGHEST_PROTOCOL))


class Slot:
    """A worker that is replaced when it dies or overruns; answers its share of calls."""

    def __init__(self, target: Target, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._slot = WorkerSlot(lambda: WorkerProcess(target))

    def _live_worker(self) -> WorkerProcess | StartFailure:
        """The current worker, replaced if it died, once it has imported the file."""
        worker = self._slot.worker
        assert isinstance(worker, WorkerProcess)
        if worker.ready and worker.alive():
            return worker
        if worker.ready:  # killed after an overrun, or crashed: start another
            worker = self._slot.replace()
            assert isinstance(worker, WorkerProcess)
        failure = worker.start(time.monotonic() + STARTUP_TIMEOUT_S)
        if failure is not None:
            self._slot.replace()  # the next score() tries again
            return failure
        return worker

    def run(self, calls: Sequence[Args]) -> list[Any]:
        """One reply per call, in order: the worker's, or ``{"error": ...}`` for a call that
        overran, killed its worker or could not be sent."""
        blobs = [_pickled(args) for args in calls]
        replies: list[Any] = []
        while len(replies) < len(calls):
            head = blobs[len(replies)]
            if isinstance(head, dict):  # this call's arguments could not be pickled
                replies.append(head)
                continue
            worker = self._live_worker()
            if isinstance(worker, StartFailure):
                msg = {"error": f"the reward worker could not start: {worker.message}"}
                return replies + [msg] * (len(calls) - len(replies))
            todo: list[bytes] = []
            for b in blobs[len(replies) :]:
                if not isinstance(b, bytes):
                    break
                todo.append(b)
            replies += self._exchange(worker, todo)
        return replies

    def _exchange(self, worker: WorkerProcess, blobs: Sequence[bytes]) -> list[Any]:
        """Replies to a prefix of ``blobs`` (at least one): all of them, or up to the call
        that overran or crashed the worker (which is then dead, replaced next round)."""
        if not worker.request(self.timeout_s, blobs):
            worker.kill()
            return [{"error": f"the reward worker died ({worker.exit()})"}]
        replies: list[Any] = []
        for _ in blobs:
            got = worker.reply(time.monotonic() + self.timeout_s + KILL_GRACE_S)
            if got is SILENCE:
                worker.kill()
                replies.append({"error": f"timed out after {self.timeout_s:g}s (worker killed)"})
                break
            if got is CLOSED:
                worker.kill()
                replies.append({"error": f"the reward worker died ({worker.exit()})"})
                break
            replies.append(got)
        return replies

    def close(self) -> None:
        self._slot.close()


def _pickled(args: Args) -> bytes | dict[str, str]:
    """A call's arguments as a pickle, or the error reply when they cannot be pickled."""
    try:
        return pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        return {"error": f"cannot send this call to the worker: {type(e).__name__}: {e}"}


class ProcessRunner:
    """``num_workers`` slots; a call list is split into contiguous shards, one per slot."""

    def __init__(self, target: Target, timeout_s: float, num_workers: int) -> None:
        self._slots = [Slot(target, timeout_s) for _ in range(num_workers)]
        self._threads = ThreadPoolExecutor(num_workers) if num_workers > 1 else None

    def run(self, calls: Sequence[Args]) -> list[Any]:
        """One reply per call, in order."""
        if self._threads is None or len(calls) < 2:
            return self._slots[0].run(calls)
        n = min(len(self._slots), len(calls))
        bounds = [len(calls) * k // n for k in range(n + 1)]
        shards = [calls[bounds[k] : bounds[k + 1]] for k in range(n)]
        futures = [
            self._threads.submit(s.run, sh) for s, sh in zip(self._slots[:n], shards, strict=True)
        ]
        return [r for f in futures for r in f.result()]

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)
        for s in self._slots:
            s.close()
