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
    from . import CodeVerifier, Outcome


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
    from . import SandboxFailure

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


def run_script(v: CodeVerifier, spec: ScriptSpec, code: str, deadline: float) -> Outcome:
    """HumanEval/MBPP: transcripts from the sandbox, verdicts from a judge replay."""
    from . import Outcome

    o = v.options
    out = Outcome([])
    n = len(spec.tests)
    base = {"preamble": spec.preamble, "proxy": spec.proxy, "seed": spec.seed}
    reqs = [
        {"src": f"<script {k}>", "env": {"$d": []}, "script": {**base, "test": t}}
        for k, t in enumerate(spec.tests)
    ]
    # a HumanEval check is one request holding many calls: give it the sample's budget
    step = max(o.test_timeout_s, o.total_timeout_s / n)
    frames, init_err = execute(v, code, reqs, deadline, step, out)
    if init_err is not None:
        out.passed, out.reasons = [False] * n, [init_err] * n
        return out
    msg = {"op": "script", **base, "tests": spec.tests, "frames": frames}
    ans = v._judge.call(msg, deadline + o.judge_grace_s)
    vs = ans.get("verdicts") if ans else None
    if not isinstance(vs, list) or len(vs) != n:
        out.timeout = True
        vs = [[False, "judge time limit exceeded"]] * n
    for verdict in vs:
        ok = isinstance(verdict, list) and len(verdict) == 2 and verdict[0] is True
        why = verdict[1] if isinstance(verdict, list) and len(verdict) == 2 else "bad verdict"
        out.passed.append(ok)
        out.reasons.append(None if ok else (why if isinstance(why, str) else "failed"))
    return out


def run_stdio(v: CodeVerifier, spec: StdioSpec, code: str, deadline: float) -> Outcome:
    """stdin/stdout cases, all in one sandbox; stdout compared here by tokens."""
    from . import Outcome

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
