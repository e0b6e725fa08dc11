"""Run the harness in a child process and police it: feed it, collect, enforce limits.

The child gets the job message on one pipe and writes result frames on another (so the
program's own stdout/stderr cannot be mistaken for results). The parent multiplexes all
pipes with one selector, so a program that floods output, stops reading stdin or never
answers is cut off at the output cap or the step/run deadline, and its whole process group
is SIGKILLed in every case. Result frames are parsed under caps on total bytes, frame count,
nesting and integer digits, so what a program writes there costs the trainer linear time.
With ``info_fd`` (bubblewrap's ``--info-fd``) the run returns only once the sandbox's PID
namespace is empty: its init is gone, and the kernel reaps a namespace's members first.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .job import Job, Limits, RunResult
from .reap import SandboxInit

#: The in-sandbox harness (``code/harness.py``), also embedded by the remote backend.
HARNESS_SRC = (Path(__file__).parent.parent / "harness.py").read_text()
#: The harness with a tiny entry that takes the pipe fds from argv.
HARNESS_SRC_MAIN = HARNESS_SRC + "\nmain(int(sys.argv[1]), int(sys.argv[2]))\n"

_CHUNK = 65536
_MAX_FRAME_BYTES = 64 << 20
_MAX_INT_DIGITS = 4300  # CPython's default int_max_str_digits; bigger ints travel as hex


def _harness_source(preamble: str) -> str:
    """The harness with ``preamble`` run just before its entry point."""
    if not preamble:
        return HARNESS_SRC_MAIN
    return HARNESS_SRC + "\n" + preamble + "\nmain(int(sys.argv[1]), int(sys.argv[2]))\n"


def run_harness(
    argv: list[str],
    job: Job,
    limits: Limits,
    message: Callable[[], bytes],
    cwd: str | None,
    env: dict[str, str],
    info_pipe: tuple[int, int] | None = None,
    extra_fds: tuple[int, ...] = (),
    preamble: str = "",
) -> RunResult:
    """Start ``argv -c <harness> MSG_FD RES_FD`` and police it to the end.

    ``message`` is built once the child exists, so a uid task count taken for it includes
    the child itself. ``info_pipe``: (read, write) ends of a pipe on which the child
    reports ``{"child-pid": N}`` (bwrap's ``--info-fd``, given the write end); the run then
    also waits for that process, hence its PID namespace, to be gone. Both ends are closed.
    ``extra_fds`` are passed to the child too (the caller closes them); ``preamble``
    (trusted code) runs in the harness after its definitions, before ``main``.
    """
    msg_r, msg_w = os.pipe()
    res_r, res_w = os.pipe()
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            [*argv, "-c", _harness_source(preamble), str(msg_r), str(res_w)],
            stdin=subprocess.PIPE if job.mode == "stdin" else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(msg_r, res_w, *(info_pipe[1:] if info_pipe else ()), *extra_fds),
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except OSError as e:
        for fd in (msg_r, msg_w, res_r, res_w, *(info_pipe or ())):
            os.close(fd)
        return RunResult([], b"", b"", None, error=f"cannot start sandbox: {e}")
    os.close(msg_r)
    os.close(res_w)
    if info_pipe:
        os.close(info_pipe[1])
    info = SandboxInit(info_pipe[0] if info_pipe else None)
    try:
        return _Collector(proc, job, limits, message(), msg_w, res_r, t0, info).collect()
    finally:
        info.note()  # no "started" frame came: bwrap may still be alive to ask
        kill_group(proc)
        info.wait_gone()
        for fd in (msg_w, res_r, *(info_pipe[:1] if info_pipe else ())):
            with contextlib.suppress(OSError):
                os.close(fd)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


class _Stop(Exception):
    """An output cap was hit: stop collecting, the run is over."""


class _Collector:
    """One run being policed: pending writes, captured output, frames and the deadline.

    The step deadline starts as the start-up budget and is renewed by every frame, so it
    bounds the program's import, each request, and (in stdin mode) the whole run.
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        job: Job,
        limits: Limits,
        message: bytes,
        msg_w: int,
        res_r: int,
        t0: float,
        info: SandboxInit,
    ) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self.proc, self.job, self.limits, self.t0 = proc, job, limits, t0
        self.msg_w, self.res_r = msg_w, res_r
        self.stdout_fd, self.stderr_fd = proc.stdout.fileno(), proc.stderr.fileno()
        self.outs: dict[int, bytearray] = {self.stdout_fd: bytearray()}
        self.outs[self.stderr_fd] = bytearray()
        self.frame_buf = bytearray()
        self.frame_bytes = 0  # all result bytes so far: the cap is per run, not per frame
        self.max_frames = 2 * len(job.requests) + 4  # started, init, <= 2 per request
        self.info = info
        self.result = RunResult([], b"", b"", None)
        self.step_deadline = t0 + job.startup_timeout_s
        self.writes: dict[int, memoryview] = {msg_w: memoryview(message)}
        if job.mode == "stdin":
            assert proc.stdin is not None
            self.writes[proc.stdin.fileno()] = memoryview(job.stdin)
        self.sel = selectors.DefaultSelector()
        for fd in self.writes:
            os.set_blocking(fd, False)
        for fd in [*self.outs, res_r]:
            self.sel.register(fd, selectors.EVENT_READ)
        for fd in self.writes:
            self.sel.register(fd, selectors.EVENT_WRITE)
        self.open_reads = len(self.outs) + 1

    def deadline(self) -> float:
        return min(self.step_deadline, self.job.deadline)

    def collect(self) -> RunResult:
        """Pump until every pipe closed, a deadline passed or a cap was hit; then reap."""
        result = self.result
        try:
            self._pump()
        except _Stop:
            pass
        except ValueError as e:  # malformed frame: the program wrote garbage on the channel
            result.error = f"protocol error: {e}"
        finally:
            self.sel.close()
        if not result.timed_out and not result.output_exceeded and result.error is None:
            # all pipes closed: the process is exiting; give it the rest of its step time
            try:
                self.proc.wait(max(0.0, self.deadline() - time.monotonic()) + 0.05)
            except subprocess.TimeoutExpired:
                result.timed_out = True
        kill_group(self.proc)
        result.returncode = self.proc.returncode
        result.stdout = bytes(self.outs[self.stdout_fd])
        result.stderr = bytes(self.outs[self.stderr_fd])
        result.wall_s = time.monotonic() - self.t0
        return result

    def _pump(self) -> None:
        while self.open_reads:
            now = time.monotonic()
            deadline = self.deadline()
            if now >= deadline:
                self.result.timed_out = True
                return
            for key, _ in self.sel.select(deadline - now):
                if key.fd in self.writes:
                    self._write(key.fd)
                else:
                    self._read(key.fd)

    def _write(self, fd: int) -> None:
        buf = self.writes[fd]
        try:
            n = os.write(fd, buf[:_CHUNK])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reader gone: the program closed stdin or died
            n = len(buf)
        self.writes[fd] = buf = buf[n:]
        if not buf:
            self.sel.unregister(fd)
            del self.writes[fd]
            if self.proc.stdin is not None and fd != self.msg_w:
                self.proc.stdin.close()  # EOF for the program; msg_w closes later

    def _read(self, fd: int) -> None:
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            self.sel.unregister(fd)
            self.open_reads -= 1
        elif fd == self.res_r:
            self._on_frames(chunk)
        else:
            self._on_output(fd, chunk)

    def _on_frames(self, chunk: bytes) -> None:
        self.frame_buf += chunk
        self.frame_bytes += len(chunk)
        if self.frame_bytes > self.limits.result_bytes:
            self.result.output_exceeded = True
            raise _Stop
        got: list[dict[str, Any]] = []
        try:
            parse_frames(self.frame_buf, got)
        finally:  # frames before a malformed one still count: "started" proves the harness ran
            for fr in got:
                if "started" in fr:
                    self.info.note()
                self.result.frames.append(fr)
                if len(self.result.frames) > self.max_frames:
                    self.result.output_exceeded = True
                    raise _Stop
                self.step_deadline = time.monotonic() + self.job.step_timeout_s

    def _on_output(self, fd: int, chunk: bytes) -> None:
        buf = self.outs[fd]
        room = self.limits.output_bytes - len(buf)
        buf += chunk[: max(room, 0)]
        if len(chunk) > room:
            self.result.output_exceeded = True
            # stderr overflow in calls mode only truncates: results travel on their own pipe
            if fd == self.stdout_fd or self.job.mode == "stdin":
                raise _Stop


def _bounded_int(digits: str) -> int:
    """JSON integers as the default ``int_max_str_digits`` allows: str->int is quadratic."""
    if len(digits) > _MAX_INT_DIGITS:
        raise ValueError("integer literal too long")
    return int(digits)


def loads_bounded(data: bytes | str) -> Any:
    """``json.loads`` in linear time; deep nesting is a ValueError, not a RecursionError."""
    try:
        return json.loads(data, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError("frame nested too deeply") from None


def parse_frames(buf: bytearray, out: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Complete frames at the head of ``buf`` (consumed), appended to ``out``; raises
    ValueError on garbage, with the frames before it already in ``out``."""
    out = [] if out is None else out
    while len(buf) >= 4:
        (n,) = struct.unpack(">I", buf[:4])
        if n > _MAX_FRAME_BYTES:
            raise ValueError("frame too large")
        if len(buf) < 4 + n:
            break
        obj = loads_bounded(bytes(buf[4 : 4 + n]))
        del buf[: 4 + n]
        if not isinstance(obj, dict):
            raise ValueError("frame is not an object")
        out.append(obj)
    return out


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group (its session) and reap the child."""
    if proc.returncode is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
