"""Code sandbox, round two: memory per sample, isolation hardening, the rlimit fallback.

* a sample's processes together stay under ``memory_mb`` (cgroup, or the rlimit split),
  the sample scores 0 and the trainer is untouched;
* a seccomp filter denies namespaces, mounts, ptrace, keyrings, BPF... to the program,
  while threads, fork, a Python subprocess and multiprocessing still work;
* without bubblewrap (as root, interpreter under a 0700 dir) correct programs importing
  the stdlib pass, files left in /tmp, /var/tmp, /dev/shm do not survive the sample, and
  the weaker guarantees are said in one warning.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from srpo_plugins.verifiers.code import CodeVerifier
from srpo_plugins.verifiers.code.sandbox import (
    CgroupLimiter,
    CgroupUnavailable,
    RunResult,
    pids_of_uid,
)
from srpo_plugins.verifiers.code.sandbox.seccomp import build_filter

from srpo.api import PluginContext, SrpoWarning
from srpo.types import Prompt
from tests.support import sandbox_probes as probes

ROOT = os.geteuid() == 0
HAVE_BWRAP = shutil.which("bwrap") is not None
REF = {"fn_name": "f", "tests": ["assert f(2) == 4"]}
DENIED = {"fn_name": "f", "tests": ["assert f(0) == 'denied'"]}
MEMORY_MB = 1024
SAMPLED_SLACK = 1.25  # see test_fork_and_allocate_stays_under_the_sample_cap
UID_BASE = 1_500_090_000


def block(code: str) -> str:
    return f"```python\n{code}\n```"


def make(**opts: Any) -> CodeVerifier:
    opts.setdefault("test_timeout_s", 8.0)
    opts.setdefault("total_timeout_s", 12.0)
    opts.setdefault("uid_base", UID_BASE)
    ctx = PluginContext(run_dir=Path("."), seed=0, num_workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SrpoWarning)
        return CodeVerifier(CodeVerifier.Options(**opts), ctx)


def score(v: CodeVerifier, program: str, ref: dict[str, Any] = REF) -> float:
    (s,) = v.score([Prompt(0, "code", "q", ref)], [block(program)])
    assert s.error is None, s.error
    return s.reward


def _cgroups_work() -> bool:
    try:
        CgroupLimiter(64 << 20, 4)
    except CgroupUnavailable:
        return False
    return True


# ---------------------------------------------------------------- memory per sample
class _RssSampler:
    """Sums the memory of every process of the sandbox uids, every few ms (the host's view).

    PSS, not RSS: forked children share their parent's pages, and RSS counts those once
    per child."""

    def __init__(self, uids: list[int]) -> None:
        self.uids, self.peak, self._stop = uids, 0, threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = 0
            for uid in self.uids:
                for pid in pids_of_uid(uid):
                    try:
                        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
                        for line in rollup.splitlines():
                            if line.startswith("Pss:"):
                                total += int(line.split()[1]) << 10
                    except (OSError, ValueError):
                        pass
            self.peak = max(self.peak, total)
            time.sleep(0.005)


def _capture_runs(v: CodeVerifier) -> list[RunResult]:
    runs: list[RunResult] = []
    run = v.backend.run

    def spy(job: Any) -> RunResult:
        res = run(job)
        runs.append(res)
        return res

    v.backend.run = spy  # type: ignore[method-assign]
    return runs


def _leftover_groups() -> list[str]:
    left = []
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids"):
        for dirpath, dirs, _ in os.walk(root):
            left += [f"{dirpath}/{d}" for d in dirs if d.startswith(f"srpo-sbx-{os.getpid()}-")]
            if dirpath.count("/") > 8:
                dirs.clear()
    return left


@pytest.fixture(params=["auto", "rlimit"])
def memory_cap(request: pytest.FixtureRequest) -> str:
    if request.param == "auto" and not _cgroups_work():
        pytest.skip("no usable cgroup here (the rlimit split is tested instead)")
    return str(request.param)


@pytest.mark.skipif(not ROOT, reason="total RSS is measured by slot uid (root only)")
def test_fork_and_allocate_stays_under_the_sample_cap(memory_cap: str) -> None:
    v = make(memory_mb=MEMORY_MB, memory_cap=memory_cap)
    try:
        runs = _capture_runs(v)
        ppid = os.getppid()
        with _RssSampler([UID_BASE, UID_BASE + 1]) as rss:
            reward = score(v, probes.FORK_AND_ALLOCATE)
        assert reward == 0.0, v.last_details
        # The host's view is sampled process by process, not atomically: a fork between two
        # reads counts shared pages twice (seen: 1053 MiB under load at a 1024 MiB cap).
        # Without the cap the sample holds 3.2 GB; the kernel's own peak below is exact.
        assert rss.peak < SAMPLED_SLACK * (MEMORY_MB << 20), f"sample held {rss.peak >> 20} MiB"
        if memory_cap == "auto":  # the kernel's own count, and the reason given
            assert any(r.oom_killed for r in runs)
            peaks = [r.peak_memory_bytes for r in runs if r.peak_memory_bytes is not None]
            assert peaks and max(peaks) <= MEMORY_MB << 20, peaks
            assert "memory limit exceeded" in str(v.last_details), v.last_details
        # the trainer is unaffected: alive, and the next sample passes
        os.kill(ppid, 0)
        assert score(v, "def f(x):\n    return x * x") == 1.0, v.last_details
        assert not _leftover_groups()
    finally:
        v.close()


def test_cgroup_limiter_cleans_up() -> None:
    if not _cgroups_work():
        pytest.skip("no usable cgroup here")
    lim = CgroupLimiter(64 << 20, 4)
    g = lim.create()
    assert all(os.path.isdir(d) for d in g.dirs)
    assert not g.oom_killed()
    g.destroy()
    assert not any(os.path.exists(d) for d in g.dirs)


# ---------------------------------------------------------------- seccomp / userns
@pytest.fixture(scope="module")
def bwrap_verifier() -> Iterator[CodeVerifier]:
    if not HAVE_BWRAP:
        pytest.skip("bubblewrap missing")
    v = make(backend="bwrap", test_timeout_s=4.0, total_timeout_s=10.0)
    yield v
    v.close()


@pytest.mark.skipif(build_filter() is None, reason="no seccomp table for this architecture")
@pytest.mark.parametrize("name", sorted(probes.probes()))
def test_probe_is_denied(bwrap_verifier: CodeVerifier, name: str) -> None:
    program = probes.probes()[name]
    assert score(bwrap_verifier, program, DENIED) == 1.0, bwrap_verifier.last_details


def test_normal_programs_still_work(bwrap_verifier: CodeVerifier) -> None:
    """Threads, fork, a Python subprocess and a multiprocessing pool."""
    assert score(bwrap_verifier, probes.NORMAL) == 1.0, bwrap_verifier.last_details


def test_filter_is_well_formed() -> None:
    prog = build_filter("x86_64")
    assert prog is not None and len(prog) % 8 == 0 and len(prog) // 8 < 4096
    assert build_filter("sparc") is None


# ---------------------------------------------------------------- the rlimit fallback
@pytest.fixture(scope="module")
def fallback() -> Iterator[CodeVerifier]:
    if not ROOT:
        pytest.skip("the fallback drops to a slot uid only as root")
    v = make(backend="rlimit", uid_base=UID_BASE + 10)
    yield v
    v.close()


@pytest.mark.parametrize("module", sorted(probes.STDLIB_IMPORTS))
def test_fallback_imports_the_stdlib(fallback: CodeVerifier, module: str) -> None:
    assert score(fallback, probes.STDLIB_IMPORTS[module]) == 1.0, fallback.last_details


def test_fallback_leaves_no_files_behind(fallback: CodeVerifier) -> None:
    token = f"srpo-litter-{uuid.uuid4().hex}"
    assert score(fallback, probes.litter(token)) == 1.0, fallback.last_details
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        for name in (token, f"{token}-dir"):
            assert not os.path.lexists(os.path.join(d, name)), f"{d}/{name} survived"


def _sysv_shm_uids() -> list[int]:
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()
    head = lines[0].split()
    return [int(line.split()[head.index("cuid")]) for line in lines[1:]]


def test_fallback_leaves_no_sysv_ipc_behind(fallback: CodeVerifier) -> None:
    assert score(fallback, probes.SYSV_SHM) == 1.0, fallback.last_details
    slot_uids = set(range(UID_BASE + 10, UID_BASE + 20))
    assert not slot_uids & set(_sysv_shm_uids())


def test_fallback_warns_once(tmp_path: Path) -> None:
    ctx = PluginContext(run_dir=tmp_path, seed=0, num_workers=1)
    opts = CodeVerifier.Options(backend="rlimit", memory_cap="rlimit", uid_base=UID_BASE + 20)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        v = CodeVerifier(opts, ctx)
        try:
            score(v, "def f(x):\n    return x * x")
            score(v, "def f(x):\n    return x * x + 0")
        finally:
            v.close()
    ours = [w for w in rec if issubclass(w.category, SrpoWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    text = str(ours[0].message)
    assert "bubblewrap unavailable" in text and "per process, not per sample" in text
