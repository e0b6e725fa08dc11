"""Runs the tiny example in child processes, kills and resumes them, and checks the result.

A *trial* starts ``python -m srpo.cli run`` on a small run file (48 prompts, 8 per step:
6 steps per epoch, 2 epochs), kills it (SIGKILL at a named fault point via
``SRPO_FAULT_AT``, after a random delay, or SIGINT/SIGTERM), resumes it with ``--resume``
until it completes, and compares against an uninterrupted reference run of the same file:
per-step metrics (all but timings) bitwise, and the history store record by record.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
TINY = ROOT / "examples" / "tiny"
MODEL = Path(os.environ.get("SRPO_TEST_MODEL", TINY / "model"))

#: metrics that measure the machine, not the training: they differ between any two runs
TIMING_PREFIXES = ("time/",)
TIMING_KEYS = ("tokens_per_s",)


def small_config(out: Path, steps_per_epoch: int = 6, **overrides: Any) -> dict:
    """The tiny example cut to 2 epochs of a few short steps (8 prompts × 4 samples each)."""
    cfg = yaml.safe_load((TINY / "math_grpo.yaml").read_text())
    cfg["policy"]["path"] = str(MODEL)
    cfg["datasets"]["math"]["path"] = str(TINY / "data" / "math_train.jsonl")
    cfg["datasets"]["math"]["limit"] = 8 * steps_per_epoch
    cfg["eval"] = {
        "datasets": {"math": {"path": str(TINY / "data" / "math_test.jsonl")}},
        "max_prompts": 8,
    }
    cfg["run"].update(
        output_dir=str(out), max_steps=None, epochs=2, prompts_per_step=8, threads=1, seed=3
    )
    cfg["algorithm"]["group_size"] = 4
    cfg["sampler"]["options"]["max_new_tokens"] = 12
    cfg["checkpoint"] = {"every": 1, "keep": 2}
    cfg["loggers"] = [{"name": "jsonl"}]
    for dotted, value in overrides.items():
        cur = cfg
        keys = dotted.split(".")
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        cur[keys[-1]] = value
    return cfg


def write(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.pop("SRPO_FAULT_AT", None)
    e.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})
    return e


def cli(run_file: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "srpo.cli", "run", str(run_file), *args]


def run(
    run_file: Path, *args: str, timeout: float = 300, **extra_env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli(run_file, *args),
        env=env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=run_file.parent,
    )


def start(run_file: Path, *args: str, **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen(
        cli(run_file, *args),
        env=env(**extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=run_file.parent,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Wait until ``path`` exists (True) or the process ended first (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            return True
        if proc.poll() is not None:
            return path.exists()
        time.sleep(0.02)
    raise TimeoutError(f"{path} did not appear")


# -- results --------------------------------------------------------------------------------


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    """Metric rows without the machine-dependent timings."""
    return [
        {k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES) and k not in TIMING_KEYS}
        for r in rows
    ]


def first_difference(a: list[dict], b: list[dict]) -> str | None:
    if [r.get("kind") for r in a] != [r.get("kind") for r in b]:
        return f"row kinds differ: {[r.get('kind') for r in a]} vs {[r.get('kind') for r in b]}"
    for x, y in zip(a, b, strict=True):
        if x != y:
            keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
            return f"{x.get('kind')} step {x.get('step')}: " + ", ".join(
                f"{k}: {x.get(k)!r} vs {y.get(k)!r}" for k in keys[:5]
            )
    return None


def history_records(run_dir: Path) -> dict[str, np.ndarray]:
    """Every committed record, sorted by (step, prompt_id, sample)."""
    from srpo.history import HistoryReader

    cols: dict[str, list[np.ndarray]] = {}
    with HistoryReader(run_dir / "history", strict=True) as r:
        for e in r.epochs():
            for blk in r.iter_epoch(e):
                for k, v in blk.items():
                    cols.setdefault(k, []).append(v)
    out = {k: np.concatenate(v) for k, v in cols.items()}
    if not out:
        return out
    order = np.lexsort((out["sample"], out["prompt_id"], out["step"]))
    return {k: v[order] for k, v in out.items()}


def check_history(run_dir: Path, reference: dict[str, np.ndarray]) -> None:
    """No gaps, no duplicates: every (step, prompt, sample) exactly once, as in the reference."""
    got = history_records(run_dir)
    keys = np.stack(
        [
            got["step"].astype(np.int64),
            got["prompt_id"].view(np.int64),
            got["sample"].astype(np.int64),
        ],
        1,
    )
    uniq = np.unique(keys, axis=0)
    assert len(uniq) == len(keys), f"{len(keys) - len(uniq)} duplicated history records"
    steps = np.unique(got["step"])
    assert steps.tolist() == list(range(int(steps.max()) + 1)), f"gap in steps {steps.tolist()}"
    assert set(got) == set(reference)
    for k in reference:
        np.testing.assert_array_equal(got[k], reference[k], err_msg=f"history column {k}")


def check_checkpoints(run_dir: Path) -> list[int]:
    """Every published checkpoint is complete and intact; ``latest`` names one of them."""
    from srpo.kernel.checkpoint import LATEST, list_checkpoints, verify

    found = list_checkpoints(run_dir)
    for _, path in found:
        assert verify(path) is None, f"{path}: {verify(path)}"
    latest = run_dir / "checkpoints" / LATEST
    if latest.exists():
        assert (run_dir / "checkpoints" / latest.read_text().strip()).is_dir()
    return [s for s, _ in found]


def tree_hash(root: Path) -> dict[str, str]:
    """path → sha256 of every file under ``root`` (to prove a refused command wrote nothing)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- the reference run (cached per process: several test modules share it) ------------------

_REFERENCE: dict[str, tuple[list[dict], dict[str, np.ndarray]]] = {}


def reference(cfg: dict, workdir: Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Comparable metrics and history records of an uninterrupted run of ``cfg``."""
    key = json.dumps({k: v for k, v in cfg.items() if k != "run"}, sort_keys=True) + json.dumps(
        {k: v for k, v in cfg["run"].items() if k != "output_dir"}, sort_keys=True
    )
    if key not in _REFERENCE:
        out = workdir / f"reference-{len(_REFERENCE)}"
        c = json.loads(json.dumps(cfg))
        c["run"]["output_dir"] = str(out)
        path = write(c, workdir / f"reference-{len(_REFERENCE)}.yaml")
        r = run(path)
        assert r.returncode == 0, r.stderr[-3000:]
        _REFERENCE[key] = (comparable(metrics(out)), history_records(out))
    return _REFERENCE[key]


# -- one trial ------------------------------------------------------------------------------


def kill(proc: subprocess.Popen, how: str) -> None:
    sig = {"kill": signal.SIGKILL, "int": signal.SIGINT, "term": signal.SIGTERM}[how]
    if proc.poll() is None:
        proc.send_signal(sig)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise
    return proc.returncode, out, err


def resume_to_end(run_file: Path, run_dir: Path, max_resumes: int = 3) -> list[str]:
    """``--resume`` until the run completes; returns each resume's "resuming from" line."""
    lines = []
    for _ in range(max_resumes):
        r = run(run_file, "--resume")
        assert r.returncode == 0, f"resume failed ({r.returncode}): {r.stderr[-3000:]}"
        lines += [x for x in r.stdout.splitlines() if x.startswith("srpo: resuming from")]
        if metrics(run_dir)[-1].get("status") == "completed":
            return lines
    raise AssertionError("the run did not complete after resuming")


def trial(
    workdir: Path,
    cfg: dict,
    *,
    fault: str | None = None,
    delay: float | None = None,
    how: str = "kill",
    name: str = "trial",
) -> dict[str, Any]:
    """Kill a run (at a fault point, or ``delay`` s after its first checkpoint), resume it,
    check it against the reference. Returns what happened, for the test's message."""
    ref_metrics, ref_history = reference(cfg, workdir)
    out = workdir / name
    c = json.loads(json.dumps(cfg))
    c["run"]["output_dir"] = str(out)
    path = write(c, workdir / f"{name}.yaml")
    extra = {"SRPO_FAULT_AT": fault} if fault else {}
    proc = start(path, **extra)
    if delay is not None and wait_for(out / "checkpoints" / "latest", proc):
        time.sleep(delay)
        kill(proc, how)
    code, _, err = finish(proc)
    info = {"name": name, "fault": fault, "delay": delay, "how": how, "exit": code}
    if fault:
        assert code == -signal.SIGKILL, f"{name}: fault {fault} was not reached ({code}): {err}"
    check_checkpoints(out)
    if code == 0:  # the kill came after the run had finished
        info["resumed_from"] = []
    else:
        if how == "int":
            assert code == 130, err[-2000:]
        if how == "term":
            assert code == 143, err[-2000:]
        info["resumed_from"] = resume_to_end(path, out)
        assert info["resumed_from"], "the resume did not report its checkpoint"
    check_checkpoints(out)
    diff = first_difference(ref_metrics, comparable(metrics(out)))
    assert diff is None, f"{info}: metrics differ from the uninterrupted run: {diff}"
    check_history(out, ref_history)
    return info
