"""Running the dataset formats of ``formats`` for ``CodeVerifier``: one sandbox per program.

Every test of a program is one request of a single ``calls`` run; a new sandbox starts
only when one crashes or times out (then for the requests after it). Verdicts come from
the judge process (scripts) or from the stdout comparison here (stdin/stdout), never from
the sandbox.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .formats import ScriptSpec, StdioSpec, outputs_match
from .outcome import Outcome, SandboxFailure
from .sandbox import Job


def run_failure(res: Any) -> tuple[str, str]:
    """(reason, error type) for a sandbox run that stopped before answering every request:
    the budget, the output cap, a broken protocol, or a crash, in that order."""
    if res.timed_out:
        return "time limit exceeded", "Timeout"
    if res.output_exceeded:
        return "output limit exceeded", "OutputLimit"
    if res.error:
        return res.error[:300], "ProtocolError"
    return f"process died (status {res.returncode})", "Crash"


if TYPE_CHECKING:
    from . import CodeVerifier


def _failed(etype: str, error: str) -> dict[str, Any]:
    return {"ok": False, "etype": etype, "error": error}


def execute(
    v: CodeVerifier,
    code: str,
    reqs: list[dict[str, Any]],
    deadline: float,
    step_s: float,
    out: Outcome,
) -> tuple[list[dict[str, Any]], str | None]:
    """Each request's result frame (in order), or an init error.

    After a crash or timeout the requests left run in a new sandbox only with
    ``partial_credit``: otherwise the verdict is already 0 and they are skipped."""
    frames: list[dict[str, Any]] = []
    todo = list(reqs)
    while todo:
        if time.monotonic() >= deadline:
            break
        job = Job(
            "calls",
            code,
            requests=todo,
            startup_timeout_s=v.options.startup_timeout_s,
            step_timeout_s=step_s,
            deadline=deadline,
        )
        res = v.backend.run(job)
        if getattr(res, "oom_killed", False):  # whichever process the kernel chose: a fail
            why = f"memory limit exceeded (the sample's processes together, {v.options.memory_mb} MiB)"
            return [], why
        init = next((f for f in res.frames if "init" in f), None)
        if init is None:
            if not res.started and not res.timed_out:
                raise SandboxFailure(res.error or res.stderr.decode(errors="replace")[-500:])
            out.timeout |= res.timed_out
            return [], "time limit exceeded at start" if res.timed_out else "died at start"
        if init.get("init") is not True:
            err = init.get("error")
            return [], f"program failed to compile: {err if isinstance(err, str) else '?'}"[:500]
        got: dict[int, dict[str, Any]] = {}
        for f in res.frames:
            i = f.get("i")
            if type(i) is int and 0 <= i < len(todo) and i not in got:
                got[i] = f
        k = 0
        while k in got:
            frames.append(got[k])
            k += 1
        if k == len(todo):
            return frames, None
        why, etype = run_failure(res)
        out.timeout = out.timeout or bool(res.timed_out)
        frames.append(_failed(etype, why))
        todo = todo[k + 1 :]
        if not v.options.partial_credit:
            frames += [_failed("Skipped", "skipped after a failure")] * len(todo)
            return frames, None
    while len(frames) < len(reqs):
        frames.append(_failed("Timeout", "total time"))
        out.timeout = True
    return frames, None


def _plan(v: CodeVerifier, spec: ScriptSpec, deadline: float) -> list[list[Any]] | None:
    """Each test's first-round calls, planned once per row by the judge (no program)."""
    if spec.plan is None:
        base = {"preamble": spec.preamble, "proxy": spec.proxy, "seed": spec.seed}
        ans = v._judge.call({"op": "plan", **base, "tests": spec.tests}, deadline)
        calls = ans.get("calls") if ans else None
        if not isinstance(calls, list) or len(calls) != len(spec.tests):
            return None
        spec.plan = calls
    return spec.plan


def run_script(v: CodeVerifier, spec: ScriptSpec, code: str, deadline: float) -> Outcome:
    """HumanEval/MBPP: the planned calls in the sandbox, verdicts from a judge replay.

    A test whose replay needs calls the plan did not foresee gets them in another sandbox
    run (with its earlier calls, so program objects are rebuilt), up to ``max_rounds``."""
    o = v.options
    out = Outcome([])
    n = len(spec.tests)
    judge_deadline = deadline + o.judge_grace_s
    plan = _plan(v, spec, judge_deadline)
    if plan is None:
        out.timeout = True
        out.passed, out.reasons = [False] * n, ["judge time limit exceeded (planning)"] * n
        return out
    calls = [list(c) for c in plan]
    verdicts: list[tuple[bool, str | None] | None] = [None] * n
    base = {"preamble": spec.preamble, "proxy": spec.proxy, "seed": spec.seed}
    # a HumanEval check is one request holding many calls: give it the sample's budget
    step = max(o.test_timeout_s, o.total_timeout_s / n)
    todo = list(range(n))
    for round_ in range(o.max_rounds):
        reqs = [
            {"src": f"<script {k}>", "env": {"$d": []}, "script": {"calls": calls[k]}} for k in todo
        ]
        frames, init_err = execute(v, code, reqs, deadline, step, out)
        if init_err is not None:
            for k in todo:
                verdicts[k] = (False, init_err)
            break
        more = round_ + 1 < o.max_rounds
        msg = {"op": "script", **base, "more": more, "frames": frames}
        msg["tests"] = [spec.tests[k] for k in todo]
        msg["calls"] = [calls[k] for k in todo]
        ans = v._judge.call(msg, judge_deadline)
        vs = ans.get("verdicts") if ans else None
        if not isinstance(vs, list) or len(vs) != len(todo):
            out.timeout = True
            for k in todo:
                verdicts[k] = (False, "judge time limit exceeded")
            break
        again = []
        for k, verdict in zip(todo, vs, strict=True):
            ok, why = verdict if isinstance(verdict, list) and len(verdict) == 2 else (0, 0)
            if ok is None and isinstance(why, list) and more:
                calls[k] += why
                again.append(k)
            else:
                verdicts[k] = (ok is True, None if ok is True else str(why or "failed"))
        todo = again
        if not todo:
            break
    for verdict in verdicts:
        ok, why = verdict or (False, "not judged")
        out.passed.append(ok)
        out.reasons.append(why)
    return out


def run_stdio(v: CodeVerifier, spec: StdioSpec, code: str, deadline: float) -> Outcome:
    """stdin/stdout cases, all in one sandbox; stdout compared here by tokens."""
    o = v.options
    out = Outcome([])
    cap = o.max_output_kb << 10
    reqs = [
        {
            "src": f"<stdin case {k}>",
            "env": {"$d": []},
            "stdio": {"input": inp, "step_s": o.test_timeout_s, "max_output": cap},
        }
        for k, (inp, _) in enumerate(spec.cases)
    ]
    # the harness kills a case at test_timeout_s; the sandbox's own step limit is a backstop
    frames, init_err = execute(v, code, reqs, deadline, o.test_timeout_s + 2.0, out)
    n = len(reqs)
    if init_err is not None:
        out.passed, out.reasons = [False] * n, [init_err] * n
        return out
    for k, (frame, (_, want)) in enumerate(zip(frames, spec.cases, strict=True)):
        val = frame.get("value") if frame.get("ok") is True else None
        ok, why = False, None
        if not isinstance(val, dict):
            why = f"{frame.get('etype')}: {frame.get('error')}"[:300]
        elif val.get("timeout") is True:
            why, out.timeout = "time limit exceeded", True
        elif val.get("over") is not False:
            why = "output limit exceeded"
        elif val.get("status") != 0:
            err = val.get("stderr")
            why = f"exit status {val.get('status')}: {err if isinstance(err, str) else ''}"
            why = why[-300:]
        elif not isinstance(val.get("stdout"), str) or len(val["stdout"]) > cap:
            why = "malformed output"
        elif not outputs_match(val["stdout"], want):
            why = f"wrong output on case {k}"
        else:
            ok = True
        out.passed.append(ok)
        out.reasons.append(why)
    return out
