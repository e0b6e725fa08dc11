"""Code verifier: run model-written programs against tests, in a sandbox it cannot fool.

``Prompt.reference`` (a dict, or the same as a JSON string) takes exactly one of three forms:

* assertion tests, any Python statements over the program's names::

      {"fn_name": "f", "tests": ["assert f(2) == 4", "assert abs(f(0.5) - 0.25) < 1e-9"]}

  ``fn_name`` is optional here (it only marks a name as the program's even if it collides
  with a stdlib module name).
* input/output pairs: ``fn_name(*inputs[k])`` must equal ``outputs[k]``; an input that is
  not a list is a single argument; a method of class ``Solution`` is found too (LeetCode
  style); tuples equal lists, floats compare with rel. tol. 1e-6, and ``[x]`` accepts ``x``
  (APPS/TACO wrap outputs)::

      {"fn_name": "f", "inputs": [[2], [3]], "outputs": [4, 9]}

* stdin/stdout (LiveCodeBench/APPS/TACO style): the program runs as ``__main__`` once per
  case; it passes when it exits 0 in time and its stdout equals ``output`` line by line
  after stripping each line and leading/trailing blank lines::

      {"stdin_tests": [{"input": "1 2\\n", "output": "3\\n"}]}

Dataset rows as they ship are detected by shape (``formats``): HumanEval (``test`` with
``check(candidate)`` and ``entry_point``), MBPP (``test_list`` + ``test_setup_code`` /
``test_imports``) and stdin/stdout cases (APPS ``input_output``, ``inputs``/``outputs``
without ``fn_name``, CodeContests ``input``/``output``, LiveCodeBench case lists), also
when the reference is only the row's ``test``/``test_list`` field and the rest is in
``Prompt.meta``. Each program then gets one sandbox; see ``formats`` for the threat model.

Why it cannot be fooled: pass/fail is never read from the program's process. For function
tests the sandbox only returns the *values* of the expressions that touch the program
(see ``judge``); comparisons run on the trusted side with expected values the sandbox never
sees. For stdin tests the trusted side compares the captured stdout. An early
``exit(0)``, printed "PASSED", patched ``assert``/builtins/harness, or a killed parent
therefore fail. Isolation layers are described in ``sandbox``.

Why it cannot be stalled: the trainer's process never decodes a returned value nor runs a
test on one. Result frames are parsed under caps (bytes, count, nesting, integer digits);
values are decoded (``values``) and tests judged (``worker``) in a separate judge process
that is killed at the sample's deadline plus ``judge_grace_s`` (``judge_pool``). A hostile
value therefore costs at most that budget and fails its test; it is never a verifier error.

Reward: 1.0 when every test passes, else 0.0, or the pass fraction with
``partial_credit``. Breakdown: ``accuracy`` (all passed), ``pass_rate``, ``no_code``,
``timeout``. ``Score.error`` is set only for verifier-side problems (malformed reference,
sandbox failure); why a program failed is in ``CodeVerifier.last_details``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import Field

from srpo.api import PluginContext, PluginError, PluginOptions, Prompt, Score, Verifier

from .extract import extract_code
from .format_run import run_failure, run_script, run_stdio
from .formats import ScriptSpec, StdioSpec, parse_format, unwrap_apps
from .judge import ReferenceError_, normalize_output, request_key
from .judge_pool import JudgePool
from .judge_reference import Spec, io_request, parse_reference
from .outcome import Outcome, SandboxFailure
from .sandbox import Backend, Job, Limits, make_backend

log = logging.getLogger(__name__)

__all__ = ["CodeVerifier", "SandboxFailure"]


class CodeVerifier(Verifier):
    """Sandboxed test-based reward for code; see the module docstring for the schema."""

    class Options(PluginOptions):
        backend: Literal["auto", "bwrap", "rlimit", "remote"] = Field(
            "auto", description="auto: bwrap if usable, else rlimit (with a loud warning)"
        )
        remote_url: str | None = Field(None, description="SandboxFusion base URL (remote)")
        extract: Literal["fenced", "fenced_or_bare", "bare"] = Field(
            "fenced",
            description="where the program is taken from: the last fenced block, that or "
            "bare code, or bare code only",
        )
        partial_credit: bool = Field(False, description="reward = fraction of tests passed")
        test_timeout_s: float = Field(
            4.0, gt=0, description="per function call / per stdin case / program import"
        )
        total_timeout_s: float = Field(30.0, gt=0, description="wall budget per sample")
        startup_timeout_s: float = Field(10.0, gt=0, description="sandbox start-up budget")
        memory_mb: int = Field(
            1024,
            ge=64,
            description="memory of a whole sample, all its processes together (cgroup "
            "memory.max, swap off; an OOM kill scores 0); also RLIMIT_AS per process. "
            "Without cgroups: RLIMIT_AS = memory_mb / min(max_processes, 4) per process",
        )
        max_processes: int = Field(
            16,
            ge=1,
            description="tasks (processes + threads) of a sample: cgroup pids.max and "
            "RLIMIT_NPROC per sandbox uid; without cgroups cut to at most 4",
        )
        memory_cap: Literal["auto", "cgroup", "rlimit"] = Field(
            "auto",
            description="how memory_mb/max_processes are enforced: auto (a cgroup per "
            "sample where the machine allows one, else the rlimit split, with a warning), "
            "cgroup (required), rlimit (per-process rlimits only)",
        )
        file_size_mb: int = Field(16, ge=1, description="largest file a sample may write (MB)")
        open_files: int = Field(64, ge=16, description="open files per sandboxed process")
        tmpfs_mb: int = Field(64, ge=1, description="size of the sandbox's /sandbox and /tmp")
        max_output_kb: int = Field(1024, ge=1, description="stdout/stderr cap; more fails")
        max_workers: int | None = Field(None, ge=1, description="concurrent sandboxes")
        python: str | None = Field(None, description="interpreter in the sandbox")
        site_packages: bool = Field(
            True, description="programs may import installed packages (False: -S, faster)"
        )
        uid_base: int = Field(1_500_000_000, ge=1000, description="first sandbox uid (root)")
        max_rounds: int = Field(
            8,
            ge=1,
            description="sandbox rounds for calls that need test values, or step on a "
            "program object (``Solution().twoSum(...)``: one round per step)",
        )
        judge_grace_s: float = Field(
            2.0, ge=0, description="judging may run this long past total_timeout_s"
        )
        judge_memory_mb: int = Field(2048, ge=256, description="RLIMIT_AS of a judge process")
        max_code_chars: int = Field(
            200_000, ge=1, description="a longer program scores 0 without running"
        )
        fail_fast: bool = Field(
            False, description="stop the run (PluginError) on the verifier's own errors"
        )

    options: Options

    def __init__(self, options: Options, context: PluginContext) -> None:
        super().__init__(options, context)
        o = options
        self.workers = o.max_workers or context.num_workers or os.cpu_count() or 1
        self.limits = Limits(
            cpu_s=max(1, int(o.total_timeout_s) + 1),
            memory_bytes=o.memory_mb << 20,
            file_size_bytes=o.file_size_mb << 20,
            open_files=o.open_files,
            processes=o.max_processes,
            output_bytes=o.max_output_kb << 10,
            tmpfs_bytes=o.tmpfs_mb << 20,
        )
        python = o.python or sys.executable
        self.backend: Backend
        if o.backend == "remote":
            from .remote import RemoteBackend

            if not o.remote_url:
                raise ValueError("backend 'remote' needs remote_url")
            self.backend = RemoteBackend(o.remote_url, self.limits)
        else:
            self.backend = make_backend(
                o.backend,
                self.limits,
                python,
                self.workers,
                o.uid_base,
                o.site_packages,
                o.memory_cap,
            )
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="codev")
        self._judge = JudgePool(o.judge_memory_mb << 20)
        self._specs: dict[str, Spec | ScriptSpec | StdioSpec] = {}
        self.last_details: list[Outcome | None] = []

    # ----------------------------------------------------------------- public
    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[Score]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        # A group's rollouts often repeat a program verbatim; a verdict depends only on the
        # program and its prompt's tests, so each distinct pair runs once and is fanned out.
        first: dict[tuple[int, str | None], int] = {}
        slot = []
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            key = (p.id, extract_code(r, self.options.extract))
            slot.append(first.setdefault(key, i))
        futures = {
            i: self._pool.submit(self._score_one, prompts[i], responses[i]) for i in set(slot)
        }
        scores, details = [], []
        for fut in (futures[j] for j in slot):
            try:
                s, d = fut.result()
            except Exception as e:
                if self.options.fail_fast:  # the kernel stops the run on a PluginError
                    raise PluginError(f"code verifier failed: {type(e).__name__}: {e}") from e
                log.debug("code verifier error", exc_info=True)
                s, d = self._zero(error=f"verifier error: {type(e).__name__}: {e}"[:500]), None
            scores.append(s)
            details.append(d)
        self.last_details = details
        return scores

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._judge.close()
        self.backend.close()

    # ----------------------------------------------------------------- internals
    def _zero(self, error: str | None = None, no_code: bool = False) -> Score:
        bd = {"accuracy": 0.0, "pass_rate": 0.0, "no_code": float(no_code), "timeout": 0.0}
        return Score(0.0, False, bd, error)

    def _spec(self, prompt: Prompt) -> Spec | ScriptSpec | StdioSpec:
        meta = dict(prompt.meta) if prompt.meta else {}
        extra = {k: meta.get(k) for k in ("entry_point", "prompt", "test_setup_code")}
        extra["test_imports"] = meta.get("test_imports")
        ref = prompt.reference
        if "entry_point" in meta or (isinstance(ref, dict) and "entry_point" in ref):
            extra["text"] = prompt.text  # HumanEval helpers when the row's prompt is the text
        key = repr(prompt.reference) + repr(extra)
        spec = self._specs.get(key)
        if spec is None:
            # dataset formats (HumanEval, MBPP, stdin/stdout rows) first: see ``formats``
            spec = parse_format(prompt.reference, extra)
            if spec is None:
                spec = parse_reference(unwrap_apps(prompt.reference))
            if len(self._specs) > 10_000:
                self._specs.clear()
            self._specs[key] = spec
        return spec

    def _score_one(self, prompt: Prompt, response: str) -> tuple[Score, Outcome | None]:
        try:
            spec = self._spec(prompt)
        except ReferenceError_ as e:
            if self.options.fail_fast:
                raise PluginError(f"code verifier: bad reference: {e}") from e
            return self._zero(error=f"bad reference: {e}"), None
        code = extract_code(response, self.options.extract)
        if code is None:
            return self._zero(no_code=True), None
        if len(code) > self.options.max_code_chars or spec.num_tests == 0:
            why = "program too long" if spec.num_tests else "no tests"
            return self._zero(), Outcome([], [why])
        deadline = time.monotonic() + self.options.total_timeout_s
        if spec.kind == "script":
            out = run_script(self, spec, code, deadline)
        elif spec.kind == "stdio":
            out = run_stdio(self, spec, code, deadline)
        elif spec.kind == "stdin":
            out = self._run_stdin(spec, code, deadline)
        else:
            out = self._run_calls(spec, code, deadline)
        n = len(out.passed)
        rate = sum(out.passed) / n if n else 0.0
        allok = n > 0 and all(out.passed)
        reward = 1.0 if allok else (rate if self.options.partial_credit else 0.0)
        bd = {"accuracy": float(allok), "pass_rate": rate, "no_code": 0.0}
        bd["timeout"] = float(out.timeout)
        return Score(reward, allok, bd), out

    def _oom_reason(self) -> str:
        return (
            f"memory limit exceeded (the sample's processes together, {self.options.memory_mb} MiB)"
        )

    def _job(self, mode: str, code: str, deadline: float, **kw: Any) -> Job:
        o = self.options
        return Job(
            mode,
            code,
            startup_timeout_s=o.startup_timeout_s,
            step_timeout_s=o.test_timeout_s,
            deadline=deadline,
            **kw,
        )

    def _run_stdin(self, spec: Spec, code: str, deadline: float) -> Outcome:
        out = Outcome([])
        for k, (inp, want) in enumerate(spec.stdin_tests):
            if time.monotonic() >= deadline:
                out.passed.append(False)
                out.reasons.append("total time limit exceeded")
                out.timeout = True
                continue
            res = self.backend.run(self._job("stdin", code, deadline, stdin=inp.encode()))
            if not res.started and not res.timed_out:
                raise SandboxFailure(res.error or res.stderr.decode(errors="replace")[-500:])
            ok, why = False, None
            if res.oom_killed:
                why = self._oom_reason()
            elif res.timed_out:
                why, out.timeout = "time limit exceeded", True
            elif res.output_exceeded:
                why = "output limit exceeded"
            elif res.returncode != 0:
                why = f"exit status {res.returncode}: {res.stderr.decode(errors='replace')[-300:]}"
            elif normalize_output(res.stdout.decode(errors="replace")) != normalize_output(want):
                why = f"wrong output on case {k}"
            else:
                ok = True
            out.passed.append(ok)
            out.reasons.append(why)
            if not ok and not self.options.partial_credit:  # the verdict is already 0
                rest = len(spec.stdin_tests) - k - 1
                out.passed += [False] * rest
                out.reasons += ["skipped"] * rest
                break
        return out

    def _execute(
        self,
        code: str,
        reqs: list[dict[str, Any]],
        results: dict[str, dict[str, Any]],
        deadline: float,
        out: Outcome,
    ) -> str | None:
        """Evaluate ``reqs`` in as many sandboxes as crashes need; None or an init error.

        ``results`` gets each request's result frame as the sandbox sent it: values are
        decoded only by the judge process.
        """
        todo = list(reqs)
        while todo:
            if time.monotonic() >= deadline:
                break
            res = self.backend.run(self._job("calls", code, deadline, requests=todo))
            if res.oom_killed:  # a child may have died in the parent's place: never a pass
                return self._oom_reason()
            init = next((f for f in res.frames if "init" in f), None)
            if init is None:
                if not res.started and not res.timed_out:
                    raise SandboxFailure(res.error or res.stderr.decode(errors="replace")[-500:])
                why = "time limit exceeded at import" if res.timed_out else "died at import"
                out.timeout |= res.timed_out
                return why
            if init.get("init") is not True:
                err = init.get("error")
                return f"program failed at import: {err if isinstance(err, str) else '?'}"[:500]
            got: dict[int, dict[str, Any]] = {}
            for f in res.frames:
                i = f.get("i")
                if type(i) is int and 0 <= i < len(todo) and i not in got:
                    got[i] = f
            k = 0
            while k in got:
                results[request_key(todo[k])] = got[k]
                k += 1
            if k == len(todo):
                return None
            why, etype = run_failure(res)
            out.timeout = out.timeout or bool(res.timed_out)
            results[request_key(todo[k])] = _failed(etype, why)
            todo = todo[k + 1 :]
        for r in todo:
            results[request_key(r)] = _failed("Timeout", "total time")
            out.timeout = True
        return None

    def _run_calls(self, spec: Spec, code: str, deadline: float) -> Outcome:
        """Function tests: values from the sandbox, verdicts from a bounded judge process."""
        out = Outcome([])
        results: dict[str, dict[str, Any]] = {}
        judge_deadline = deadline + self.options.judge_grace_s
        if spec.kind == "io":
            assert spec.fn_name is not None
            reqs = [io_request(spec.fn_name, args) for args in spec.inputs]
            init_err = self._execute(code, reqs, results, deadline, out)
            n = len(reqs)
            if init_err is not None:
                out.passed, out.reasons = [False] * n, [init_err] * n
                return out
            cases = [
                [results.get(request_key(r), _failed("NotRun", "not run")), want]
                for r, want in zip(reqs, spec.outputs, strict=True)
            ]
            ans = self._judge.call({"op": "io", "cases": cases}, judge_deadline)
            verdicts = _verdict_list(ans, n)
            if verdicts is None:
                out.timeout = True
                verdicts = [(False, "judge time limit exceeded")] * n
            for ok, why in verdicts:
                out.passed.append(ok)
                out.reasons.append(why)
            return out
        # assertion tests: static holes first, then rounds for holes needing test values
        first = {}
        for t in spec.tests:
            for req in t.static:
                first[request_key(req)] = req
        names = [spec.fn_name] if spec.fn_name else []
        decided: dict[int, tuple[bool, str | None]] = {}
        reqs = list(first.values())
        init_err = judge_err = None
        for _ in range(self.options.max_rounds):
            if reqs:
                init_err = self._execute(code, reqs, results, deadline, out)
                if init_err is not None:
                    break
            tests = {str(i): t.source for i, t in enumerate(spec.tests) if i not in decided}
            msg = {"op": "asserts", "names": names, "tests": tests, "results": results}
            ans = self._judge.call(msg, judge_deadline)
            round_ = _assert_round(ans, tests)
            if round_ is None:
                judge_err, out.timeout = "judge time limit exceeded", True
                break
            decided.update(round_[0])
            reqs = [r for r in round_[1] if request_key(r) not in results]
            if not reqs:
                break
        for i in range(len(spec.tests)):
            passed, why = decided.get(i, (False, None))
            out.passed.append(passed)
            out.reasons.append(init_err or why or judge_err or (None if passed else "unresolved"))
        return out


def _failed(etype: str, error: str) -> dict[str, Any]:
    """A result frame for a request the sandbox gave no value for."""
    return {"ok": False, "etype": etype, "error": error}


def _verdict(v: Any) -> tuple[bool, str | None] | None:
    if isinstance(v, list) and len(v) == 2 and isinstance(v[0], bool):
        return v[0], v[1] if isinstance(v[1], str) else None
    return None


def _verdict_list(ans: dict[str, Any] | None, n: int) -> list[tuple[bool, str | None]] | None:
    """The judge's io verdicts, or None when it failed or answered out of shape."""
    vs = ans.get("verdicts") if ans else None
    if not isinstance(vs, list) or len(vs) != n:
        return None
    out = [_verdict(v) for v in vs]
    return None if None in out else out  # type: ignore[return-value]


def _assert_round(
    ans: dict[str, Any] | None, tests: dict[str, str]
) -> tuple[dict[int, tuple[bool, str | None]], list[dict[str, Any]]] | None:
    """(decided tests, pending requests) of one judge round, or None when it failed."""
    vs, pending = (ans.get("verdicts"), ans.get("pending")) if ans else (None, None)
    if not isinstance(vs, dict) or not isinstance(pending, list):
        return None
    decided = {}
    for k in tests:
        v = vs.get(k)
        if isinstance(v, list) and len(v) == 2 and v[0] is None:
            continue  # still pending
        got = _verdict(v)
        if got is None:
            return None
        decided[int(k)] = got
    reqs = [r for r in pending if isinstance(r, dict) and isinstance(r.get("src"), str)]
    return decided, [r for r in reqs if "env" in r]
