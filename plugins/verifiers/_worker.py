"""A killable worker process: the one machine every verifier that runs code elsewhere needs.

Python cannot stop a thread, and the code a verifier runs (sympy inside math-verify, a
user's reward function, a judge replaying a test) can hang in C, crash, exhaust memory or
write garbage. So it runs in a persistent subprocess that answers framed requests, and the
trusted side waits for each answer only until a deadline: a worker that overruns, dies or
answers something unreadable is SIGKILLed with everything it started and replaced, from a
pre-started spare when there is one (a kill then costs no start-up wait).

What is shared here: the process (its own session, so a terminal ^C reaches the trainer
and ``kill`` reaches every grandchild), the framing (an 8-byte big-endian length, then the
body; a length over the cap kills the worker), the deadline, the readiness handshake, the
kill-and-replace with an optional spare, and a clean close that leaves no survivors. What a
frame's body means (JSON, a pickle) and what a verdict is stays with each verifier.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Sequence

#: The frame header: the body's length in bytes, unsigned 64-bit big-endian.
HEADER = struct.Struct("!Q")

#: Largest reply accepted by default (verdicts are small; a transcript can be megabytes).
MAX_REPLY_BYTES = 64 << 20


class Silence:
    """Nothing (or not all of a frame) arrived before the deadline."""

    def __repr__(self) -> str:
        return "SILENCE"


class Closed:
    """The worker's output ended (it exited or was killed), or it broke the framing."""

    def __repr__(self) -> str:
        return "CLOSED"


SILENCE, CLOSED = Silence(), Closed()


def frame(body: bytes) -> bytes:
    """One frame: the body's length, then the body."""
    return HEADER.pack(len(body)) + body


class KillableWorker:
    """One worker process, started at construction, speaking frames over its stdin/stdout."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stderr: int | None = subprocess.DEVNULL,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.max_reply_bytes = max_reply_bytes
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            start_new_session=True,  # ^C goes to the trainer; kill() reaches grandchildren
        )
        self._buf = bytearray()
        self.ready = False

    def send(self, body: bytes) -> bool:
        """Write one request frame; False when the worker is gone (it is then killed)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(frame(body))
            self.proc.stdin.flush()
            return True
        except OSError:
            self.kill()
            return False

    def _fill(self, want: int, deadline: float) -> Silence | Closed | None:
        """Read until ``want`` bytes are buffered (None), or say why not."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while len(self._buf) < want:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return SILENCE
                chunk = os.read(fd, max(want - len(self._buf), 1 << 16))
                if not chunk:
                    return CLOSED
                self._buf += chunk
        return None

    def receive(self, deadline: float) -> bytes | Silence | Closed:
        """The next frame's body, ``SILENCE`` at ``deadline`` (time.monotonic), or
        ``CLOSED``. A frame announced over the cap kills the worker (``CLOSED``): nothing
        that large is a reply, and reading it would let the worker choose our memory."""
        short = self._fill(HEADER.size, deadline)
        if short is not None:
            return short
        (n,) = HEADER.unpack(self._buf[: HEADER.size])
        if n > self.max_reply_bytes:
            self.kill()
            return CLOSED
        short = self._fill(HEADER.size + n, deadline)
        if short is not None:
            return short
        body = bytes(self._buf[HEADER.size : HEADER.size + n])
        del self._buf[: HEADER.size + n]
        return body

    def handshake(self, deadline: float, is_ready: Callable[[bytes], bool]) -> bool:
        """Whether the worker finished start-up by ``deadline``: its first frame is the
        readiness message (``is_ready`` says). A worker that fails it is killed."""
        if not self.ready:
            got = self.receive(deadline)
            self.ready = isinstance(got, bytes) and is_ready(got)
            if not self.ready:
                self.kill()
        return self.ready

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit(self) -> str:
        """How the worker ended, in words (after ``kill`` or its own exit)."""
        code = self.proc.wait()
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def kill(self) -> None:
        """SIGKILL the worker's whole session (what it ran may have started processes), reap
        it, and close our ends of its pipes: no survivors, no leaked descriptors."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


class Slot:
    """A worker that is replaced when it dies, with an optional pre-started spare."""

    def __init__(self, start: Callable[[], KillableWorker], spare: bool = False) -> None:
        self._start = start
        self.worker = start()
        self.spare = start() if spare else None

    def replace(self) -> KillableWorker:
        """Kill the current worker (if still running) and put the spare, or a new one, in
        its place; a new spare starts in the background."""
        self.worker.kill()
        if self.spare is not None:
            self.worker, self.spare = self.spare, self._start()
        else:
            self.worker = self._start()
        return self.worker

    def live(self) -> KillableWorker:
        """The current worker, replaced first if it has died (readiness is the caller's)."""
        return self.worker if self.worker.alive() else self.replace()

    def close(self) -> None:
        for w in (self.worker, self.spare):
            if w is not None:
                w.kill()
