"""plugins/verifiers/_worker.py, the killable worker every verifier runs code in, on real
processes: framed replies under a deadline, a hang or an oversized or broken reply ends in a
kill with no survivors (grandchildren included), the spare takes over, close leaves none."""

from __future__ import annotations

import os
import sys
import time

import pytest
from srpo_plugins.verifiers._worker import CLOSED, SILENCE, KillableWorker, Slot, frame

#: A worker that says ready, then echoes each request's body reversed; b"hang" hangs after
#: starting a grandchild (pid in the reply of b"child"), b"big" announces a huge frame.
ECHO = r"""
import os, struct, subprocess, sys, time
inp, out = sys.stdin.buffer, sys.stdout.buffer
def send(b):
    out.write(struct.pack("!Q", len(b)) + b); out.flush()
send(b"ready")
child = None
while len(head := inp.read(8)) == 8:
    body = inp.read(struct.unpack("!Q", head)[0])
    if body == b"child":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        send(str(child.pid).encode())
    elif body == b"hang":
        time.sleep(600)
    elif body == b"big":
        out.write(struct.pack("!Q", 1 << 40)); out.flush()
    elif body == b"torn":
        out.write(struct.pack("!Q", 100) + b"abc"); out.flush(); os._exit(3)
    else:
        send(body[::-1])
"""


def echo() -> KillableWorker:
    return KillableWorker([sys.executable, "-c", ECHO], max_reply_bytes=1 << 20)


def ready(w: KillableWorker) -> bool:
    return w.handshake(time.monotonic() + 30, lambda b: b == b"ready")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie awaiting its reaper counts as gone
        return f.read().split(")")[-1].split()[0] == "Z"


def test_frames_round_trip_under_a_deadline():
    w = echo()
    try:
        assert ready(w)
        for body in (b"abc", b"", bytes(range(256)) * 100):
            assert w.send(body)
            assert w.receive(time.monotonic() + 10) == body[::-1]
        assert frame(b"xy") == b"\0" * 7 + b"\x02xy"
    finally:
        w.kill()


def test_a_hang_is_silence_and_kill_takes_the_grandchildren():
    w = echo()
    assert ready(w)
    assert w.send(b"child")
    child = int(w.receive(time.monotonic() + 10))
    assert w.send(b"hang")
    t = time.monotonic()
    assert w.receive(time.monotonic() + 0.5) is SILENCE
    assert time.monotonic() - t < 2
    w.kill()
    assert not w.alive() and w.exit() == "killed by SIGKILL"
    deadline = time.monotonic() + 5
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child), "the worker's child survived its kill"


@pytest.mark.parametrize("how", ["big", "torn"])
def test_an_oversized_or_torn_reply_is_closed(how):
    w = echo()
    assert ready(w)
    assert w.send(how.encode())
    assert w.receive(time.monotonic() + 10) is CLOSED
    w.kill()
    assert not w.alive()


def test_a_failed_handshake_kills_the_worker():
    w = KillableWorker([sys.executable, "-c", "print('hello'); import time; time.sleep(60)"])
    assert not w.handshake(time.monotonic() + 2, lambda b: b == b"ready")  # 6 bytes: no frame
    assert not w.alive()


def test_the_spare_takes_over_and_close_leaves_no_process():
    slot = Slot(echo, spare=True)
    first, spare = slot.worker, slot.spare
    assert spare is not None and ready(first)
    first.kill()
    now = slot.live()
    assert now is spare and ready(now) and slot.spare not in (None, first, spare)
    assert now.send(b"ok") and now.receive(time.monotonic() + 10) == b"ko"
    workers = [first, now, slot.spare]
    slot.close()
    assert not any(w.alive() for w in workers if w is not None)
