"""GracefulStop's hand-over of signal dispositions, checked in this (main-thread) process.

The end-to-end signal tests live in test_resume.py and test_faults.py; these pin the one
property a late signal depends on and that a timing test only finds by luck: once a run is
over, SIGINT/SIGTERM go from srpo's handler straight to SIG_IGN, never through SIG_DFL.
"""

from __future__ import annotations

import os
import signal
import types

import pytest

from srpo.kernel.signals import GracefulStop

SIGNALS = GracefulStop.SIGNALS


@pytest.fixture
def saved_dispositions():
    before = {s: signal.getsignal(s) for s in SIGNALS}
    yield before
    for s, handler in before.items():
        signal.signal(s, handler)


@pytest.fixture
def recorded(monkeypatch):
    """Every disposition set through ``signal.signal``, in order (the calls still happen)."""
    calls: list[tuple[int, object]] = []
    real = signal.signal

    def record(signum, handler):
        calls.append((signum, handler))
        return real(signum, handler)

    monkeypatch.setattr(signal, "signal", record)
    return calls


def test_ignore_after_swaps_the_handler_for_sig_ign_without_a_default_in_between(
    saved_dispositions, recorded
):
    target = types.SimpleNamespace(stop_requested=None)
    with GracefulStop(target, ignore_after=True) as stop:
        assert all(signal.getsignal(s) == stop._handle for s in SIGNALS)
    assert all(signal.getsignal(s) == signal.SIG_IGN for s in SIGNALS)
    after_enter = recorded[len(SIGNALS) :]
    assert after_enter == [(s, signal.SIG_IGN) for s in SIGNALS]
    os.kill(os.getpid(), signal.SIGTERM)  # really delivered: ignored, this process lives on
    os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt either
    assert target.stop_requested is None


def test_without_ignore_after_the_previous_handlers_come_back(saved_dispositions):
    target = types.SimpleNamespace(stop_requested=None)
    with GracefulStop(target):
        pass
    assert {s: signal.getsignal(s) for s in SIGNALS} == saved_dispositions


def test_a_signal_after_completion_is_recorded_but_requests_no_stop(saved_dispositions):
    target = types.SimpleNamespace(stop_requested=None)
    with GracefulStop(target, ignore_after=True) as stop:
        stop.completed = True
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signum == signal.SIGTERM
    assert target.stop_requested is None


def test_a_signal_during_the_run_requests_a_stop_and_sets_the_exit_code(saved_dispositions):
    target = types.SimpleNamespace(stop_requested=None)
    with GracefulStop(target) as stop:
        os.kill(os.getpid(), signal.SIGINT)
    assert target.stop_requested == "SIGINT"
    assert stop.exit_code == 130
