"""How a torchrun rank leaves its process: ``srpo.distributed.end_rank_process``.

A rank that joined a gloo group ends with ``os._exit`` after its ``atexit`` handlers, not
through interpreter finalization, where a gloo worker thread still freeing a finished
collective gets killed inside a C++ destructor (SIGABRT, a completed run reported failed;
the two-node test hit it about 1 run in 7). What must hold: the exit code is the one
given, what the rank printed (unflushed too) arrives, the ``atexit`` handlers run (they
stop multiprocessing children and remove temporary directories), and a process that
joined no group is not ended at all.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no distributed")

RANK = textwrap.dedent(
    """
    import atexit, os, sys
    from pathlib import Path
    from srpo.distributed import end_rank_process, init_from_env, shutdown

    out = Path(sys.argv[1])
    dist = init_from_env("cpu")
    atexit.register(lambda: (out / f"atexit-{dist.rank}").write_text("ran"))
    dist.all_gather(list(range(1000)))
    shutdown(dist)
    sys.stdout.write(f"rank {dist.rank} unflushed")  # no newline: still in the buffer
    end_rank_process(3)
    (out / f"returned-{dist.rank}").write_text("end_rank_process returned")
    """
)


def test_a_rank_ends_with_its_code_output_and_atexit_handlers(tmp_path: Path):
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["--tee", "1", "--log-dir", str(tmp_path / "logs"), str(script), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0  # torchrun reports a rank's non-zero code as a failure
    assert "exitcode  : 3" in done.stderr, done.stderr[-2000:]
    for rank in (0, 1):
        assert (tmp_path / f"atexit-{rank}").read_text() == "ran"
        assert not (tmp_path / f"returned-{rank}").exists()
        assert f"rank {rank} unflushed" in done.stdout


def test_a_process_that_joined_no_group_is_not_ended(tmp_path: Path):
    code = "from srpo.distributed import end_rank_process; end_rank_process(3); print('went on')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "went on"
