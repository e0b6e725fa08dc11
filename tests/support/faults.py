"""Runs the tiny example in child processes, kills and resumes them, and checks the result.

A *trial* starts ``python -m srpo.cli run`` on a small run file (48 prompts, 8 per step:
6 steps per epoch, 2 epochs), kills it (SIGKILL at a named fault point via
``SRPO_FAULT_AT``, or SIGKILL/SIGINT/SIGTERM at a random moment of its training), resumes
it with ``--resume`` until it completes, and compares against an uninterrupted reference
run of the same file: per-step metrics (all but timings) bitwise, and the history store
record by record. Every trial also proves, from the run's own files and output, that the
kill landed mid-run and that the second invocation resumed from a checkpoint; a random
kill that came too late is retried earlier, never counted as a pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tests.support.tiny import ROOT, TINY, set_dotted

TESTS = ROOT / "tests"
MODEL = Path(os.environ.get("SRPO_TEST_MODEL", TINY / "model"))

#: metrics that measure the machine, not the training: they differ between any two runs
TIMING_PREFIXES = ("time/", "memory/")  # machine-dependent: timings, peak memory
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
    return set_dotted(cfg, overrides)


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


def logged_rows(run_dir: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` as they are now (a run may be writing it, or have been
    killed mid-line: an incomplete last line is left out)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def step_rows(rows: list[dict]) -> list[int]:
    return [r["step"] for r in rows if r.get("kind") == "step"]


def completed(rows: list[dict]) -> bool:
    return any(r.get("kind") == "end" and r.get("status") == "completed" for r in rows)


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300):
    """Wait until the run logged training step ``step``: its metrics row, or None if the
    process ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = proc.poll() is not None
        for r in logged_rows(run_dir):
            if r.get("kind") == "step" and r["step"] >= step:
                return r
        if done:
            return None
        time.sleep(0.02)
    raise TimeoutError(f"{run_dir}: step {step} was not logged")


def kill_during(
    proc: subprocess.Popen, run_dir: Path, steps: int, at: float, how: str
) -> tuple[int, float]:
    """Kill the run ``at`` (0 ≤ at < 1) of the way through its ``steps`` training steps: in
    step ``int(at * steps)``, the fractional part of ``at * steps`` of a step's time after
    the previous step was logged (and after the first checkpoint was published, so there is
    one to resume from). Returns the (step, fraction) aimed at; whether the kill landed
    before the run finished is for the caller to check, from what the run wrote."""
    step, frac = divmod(at * steps, 1.0)
    step = int(step)
    if wait_for(run_dir / "checkpoints" / "latest", proc):
        row = wait_for_step(run_dir, max(step, 1) - 1, proc)
        if row is not None:
            time.sleep(frac * float(row.get("time/step") or 0.5))
            kill(proc, how)
    return step, frac


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


RESUMING = re.compile(r"srpo: resuming from (\S+) \(step (\d+), epoch (\d+)\)")


def check_resumed(lines: list[str], run_dir: Path, logged: list[int], steps: int) -> int:
    """Prove the resume continued a killed run: the killed run logged steps ``logged`` (fewer
    than all ``steps``, and no completion); the first ``--resume`` loaded one of its
    checkpoints, at a step it had reached and before the end, and the run now holds every
    step exactly once and completed. Returns the step resumed from."""
    assert len(logged) < steps, f"the killed run had logged all {steps} steps: {logged}"
    assert lines, "the resume did not report a checkpoint it resumed from"
    m = RESUMING.match(lines[0])
    assert m, f"unexpected resume line: {lines[0]!r}"
    ckpt, step = Path(m[1]), int(m[2])
    assert ckpt.parent == run_dir / "checkpoints" and ckpt.name == f"step-{step:06d}", lines[0]
    assert 1 <= step <= len(logged) and step < steps, (
        f"resumed from step {step}, but the killed run had logged {len(logged)} of {steps} "
        f"steps: {lines[0]!r}"
    )
    final = metrics(run_dir)
    assert step_rows(final) == list(range(steps)), step_rows(final)
    assert final[-1].get("status") == "completed", final[-1]
    return step


EXIT = {"kill": -signal.SIGKILL, "int": 130, "term": 143}


def trial(
    workdir: Path,
    cfg: dict,
    *,
    fault: str | None = None,
    at: float | None = None,
    how: str = "kill",
    name: str = "trial",
    tries: int = 4,
) -> dict[str, Any]:
    """Kill a run (at a fault point, or ``at`` of the way through its training, see
    :func:`kill_during`), resume it, check that it really resumed and that the result equals
    the reference. A random kill that landed after the training was over (the run finished
    first) is retried, each time twice as early. Returns what happened, for messages."""
    assert (fault is None) != (at is None), "a trial kills at a fault point or at a moment"
    ref_metrics, ref_history = reference(cfg, workdir)
    steps = len(step_rows(ref_metrics))
    late = []
    for attempt in range(tries if at is not None else 1):
        out = workdir / (name if attempt == 0 else f"{name}-retry{attempt}")
        c = json.loads(json.dumps(cfg))
        c["run"]["output_dir"] = str(out)
        path = write(c, workdir / f"{out.name}.yaml")
        extra = {"SRPO_FAULT_AT": fault} if fault else {}
        proc = start(path, **extra)
        aimed = kill_during(proc, out, steps, at, how) if at is not None else None
        code, _, err = finish(proc)
        killed = logged_rows(out)
        info = {"name": out.name, "fault": fault, "at": at, "aimed": aimed, "how": how}
        info |= {"exit": code, "logged_steps": len(step_rows(killed))}
        if fault:
            assert code == -signal.SIGKILL, f"{name}: fault {fault} was not reached ({code}): {err}"
        if at is not None and (code == 0 or completed(killed) or len(step_rows(killed)) == steps):
            late.append(info)  # the training was over before the kill: kill earlier
            at /= 2
            continue
        assert code == EXIT[how], f"{info}: {err[-2000:]}"
        assert not completed(killed), f"{info}: the run had completed before the kill"
        check_checkpoints(out)
        lines = resume_to_end(path, out)
        info["resumed_from"] = lines
        info["resumed_step"] = check_resumed(lines, out, step_rows(killed), steps)
        check_checkpoints(out)
        diff = first_difference(ref_metrics, comparable(metrics(out)))
        assert diff is None, f"{info}: metrics differ from the uninterrupted run: {diff}"
        check_history(out, ref_history)
        info["late_attempts"] = late
        return info
    raise AssertionError(f"{name}: every kill landed after the training was over: {late}")


# -- several kills of one run ---------------------------------------------------------------


def chain(
    workdir: Path, cfg: dict, kills: list[str | tuple[float, float, str]], *, name: str
) -> list[dict[str, Any]]:
    """Kill one run again and again: the first invocation, then each ``--resume`` in turn, is
    killed as ``kills`` says, the last resume runs to the end, and the result must equal the
    uninterrupted reference as in :func:`trial`. A kill is a fault point ``"NAME:N"`` (the
    N-th time *that process* reaches it) or ``(u, v, how)``: SIGKILL/SIGINT/SIGTERM (``how``
    in ``kill``/``int``/``term``) in the step a ``u`` (0 ≤ u < 1) share of the way through
    the steps the run has left (one this process trains, never the last, so the kill always
    lands before the training is over), ``v`` (0 ≤ v < 1) of a step's time into it.

    One lineage proves for each kill what a separate :func:`trial` would (the kill landed
    mid-run, the next invocation resumed from the newest checkpoint, the end result is
    exact) at the price of about one run instead of one per kill; and every kill after the
    first hits a process that is itself a resume. Returns what happened at each kill."""
    ref_metrics, ref_history = reference(cfg, workdir)
    steps = len(step_rows(ref_metrics))
    out = workdir / name
    c = json.loads(json.dumps(cfg))
    c["run"]["output_dir"] = str(out)
    path = write(c, workdir / f"{name}.yaml")
    done: list[dict[str, Any]] = []
    resumed = newest = 0
    for i, spec in enumerate(kills):
        args = ("--resume",) if i else ()
        info: dict[str, Any] = {"name": name, "kill": spec, "index": i}
        if isinstance(spec, str):
            how = "kill"
            proc = start(path, *args, SRPO_FAULT_AT=spec)
        else:
            u, v, how = spec
            before = len(step_rows(logged_rows(out)))  # rows this process cuts or redoes
            proc = start(path, *args)
            base = max(before, 1)
            assert steps - base >= 2, f"{info}: too few steps left for a mid-run kill"
            target = base + int(u * (steps - base - 1))  # never the last step
            # the first row this process writes is step `before`: wait for one of its own
            if wait_for(out / "checkpoints" / "latest", proc):
                row = wait_for_step(out, max(target - 1, before if i else 0), proc)
                if row is not None:
                    time.sleep(v * float(row.get("time/step") or 0.5))
                    kill(proc, how)
        code, stdout, err = finish(proc)
        rows = logged_rows(out)
        info |= {"exit": code, "logged_steps": len(step_rows(rows))}
        assert code == EXIT[how], f"{info}: the kill did not land ({code}): {err[-2000:]}"
        assert not completed(rows), f"{info}: the run had completed before the kill"
        if i:
            info["resumed_from"] = _resumed_step(stdout, out)
            assert resumed <= info["resumed_from"] <= newest, f"{info}: newest was {newest}"
            resumed = info["resumed_from"]
        newest = max(check_checkpoints(out), default=0)
        assert newest >= 1, f"{info}: killed before the first checkpoint"
        done.append(info)
    logged = step_rows(logged_rows(out))
    check_resumed(resume_to_end(path, out), out, logged, steps)
    check_checkpoints(out)
    diff = first_difference(ref_metrics, comparable(metrics(out)))
    assert diff is None, f"{name} {done}: metrics differ from the uninterrupted run: {diff}"
    check_history(out, ref_history)
    return done


def _resumed_step(stdout: str, run_dir: Path) -> int:
    """The step a ``--resume`` said it continued from (one of ``run_dir``'s checkpoints)."""
    m = next((m for m in map(RESUMING.match, stdout.splitlines()) if m), None)
    assert m, f"the resume did not report a checkpoint it resumed from: {stdout[-1000:]}"
    assert Path(m[1]).parent == run_dir / "checkpoints", m[0]
    return int(m[2])
