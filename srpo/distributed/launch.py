"""``srpo run --nproc N``: start the ranks with torchrun's own elastic launcher.

The same job as ``torchrun --nproc-per-node N -m srpo run ...``, with two differences that
matter to a user: a rank that dies (kill -9, out of memory) ends the job with one line
naming the rank and how it died, not the launcher's multi-page report; and Ctrl-C reaches
the ranks alone (each finishes its step, they checkpoint together, the job exits 130).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType


@dataclass
class LaunchSpec:
    nproc: int
    nnodes: int = 1
    rdzv_endpoint: str | None = None  # HOST:PORT of the c10d rendezvous (multi-node)
    run_id: str | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(spec: LaunchSpec, srpo_args: Sequence[str]) -> int:
    """Run ``python -m srpo <srpo_args>`` on ``spec.nproc`` local ranks (this node's share
    of ``spec.nnodes``); the job's exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    endpoint = spec.rdzv_endpoint or f"127.0.0.1:{_free_port()}"
    config = LaunchConfig(
        min_nodes=spec.nnodes,
        max_nodes=spec.nnodes,
        nproc_per_node=spec.nproc,
        run_id=spec.run_id or (uuid.uuid4().hex if spec.nnodes == 1 else "srpo"),
        rdzv_backend="c10d",
        rdzv_endpoint=endpoint,
        max_restarts=0,  # a failed rank ends the job: --resume continues it exactly
        monitor_interval=0.5,
        start_method="spawn",
        signals_to_handle="SIGTERM,SIGHUP,SIGQUIT",  # SIGINT: the ranks' own graceful stop
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default; run.threads overrides
    # the ranks run in sessions of their own (torchrun's doing): a Ctrl-C here reaches only
    # this process, which passes it on; each rank then stops after the same step
    previous = signal.signal(signal.SIGINT, _forward_to_children)
    # the agent logs each failed rank at ERROR level in its own format; srpo says it once
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, sys.executable)("-m", "srpo", *srpo_args)
    except ChildFailedError as e:
        return _report(e)
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc; empty where there is none)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _forward_to_children(signum: int, frame: FrameType | None) -> None:
    for child in _children(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)


def _report(error: object) -> int:
    """The job's exit code: the ranks' own when they agree (130/143 after Ctrl-C, 2 for bad
    input), else 1; and one line when a rank died without saying why (killed by a signal:
    kill -9, the OOM killer), naming it."""
    failures = sorted(getattr(error, "failures", {}).items(), key=lambda kv: kv[1].timestamp)
    codes = {f.exitcode for _, f in failures}
    if codes and min(codes) > 0:  # every rank exited by itself and said why in its line
        return next(iter(codes)) if len(codes) == 1 else 1
    killed = [(rank, f) for rank, f in failures if f.exitcode < 0]
    if not killed:  # nothing the launcher knows more about than the ranks' own lines
        return 1
    rank, first = killed[0]
    others = len(failures) - 1
    tail = f" ({others} other rank(s) stopped with it)" if others > 0 else ""
    print(
        f"srpo: error: rank {rank} (pid {first.pid}) was killed by {first.signal_name()}; the "
        f"job was stopped{tail}; continue from the last checkpoint with --resume",
        file=sys.stderr,
        flush=True,
    )
    return 1
