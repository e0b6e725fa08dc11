"""Math verifier: extract the final answer, compare it with the reference answer.

``Prompt.reference`` is the gold answer as a string (``"579"``, ``"\\frac{1}{2}"``,
``"[1,2]"``, ``"\\begin{pmatrix}1&2\\end{pmatrix}"`` ...).

Why this shape:

* The common case (integer answers of the tiny task, exact matches) must cost
  microseconds, so a fast path compares normalized strings and plain numbers in-process.
* Everything else goes to math-verify (sympy), which can hang (``9^{9^{9}}``, huge nested
  expressions) inside C code where no signal reaches it. Math-verify's own timeout uses
  ``signal.alarm`` and only works in the main thread. So slow-path comparisons run in
  persistent worker subprocesses that are killed and replaced (a pre-started spare takes
  over at once) when an answer exceeds its budget: the bound holds whatever sympy does.
* A bad answer never raises: it scores 0 with the reason in ``Score.error``; only a crash of
  the verifier itself raises, and only with ``fail_fast``.

Reward = accuracy (1/0) + ``format_reward`` when an answer was extracted;
breakdown = ``{"accuracy", "format", "no_answer"}``; ``Score.correct`` is accuracy only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from typing import Any

from pydantic import Field

from srpo.api import PluginContext, PluginOptions, Verifier
from srpo.types import Prompt, Score

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces) or ``\\boxed x``; None if absent."""
    for m in reversed(list(_BOX_RE.finditer(text))):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                c = text[j]
                if c == "\\":  # skip escaped chars such as \{ and \}
                    j += 2
                    continue
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
                j += 1
            continue  # unbalanced: try an earlier box
        if i > m.end():  # "\boxed 5": one token
            tok = re.match(r"[^\s$]+", text[i:])
            if tok:
                return tok.group(0)
    return None


def extract_answer(text: str, pattern: re.Pattern[str] | None) -> str | None:
    """Last match of ``pattern`` (group 1 if it has groups), else the last boxed answer."""
    if pattern is None:
        return extract_boxed(text)
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - we want the last match
        pass
    if last is None:
        return None
    return (last.group(1) if pattern.groups else last.group(0)).strip()


# --------------------------------------------------------------------------- fast path

_STRIP_TOKENS = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "$", "\\displaystyle")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_NUM = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")
_FRAC = re.compile(r"^([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")
_SLASH = re.compile(r"^([+-]?\d+)/(\d+)$")
_TEXT_WRAP = re.compile(r"^\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}$")


def normalize(s: str) -> str:
    """Cheap textual normalization; equal results mean equal answers."""
    s = s.strip()
    for tok in _STRIP_TOKENS:
        s = s.replace(tok, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = "".join(s.split())
    m = _TEXT_WRAP.match(s)
    if m:
        s = m.group(1)
    s = s.rstrip(".")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s


def as_number(s: str) -> Fraction | None:
    """Exact value of a plain integer, decimal or simple fraction; None for anything else."""
    try:
        if _NUM.match(s):
            return Fraction(s)
        m = _FRAC.match(s)
        if m:
            sign = -1 if m.group(1) == "-" else 1
            return sign * Fraction(int(m.group(2)), int(m.group(3)))
        m = _SLASH.match(s)
        if m:
            return Fraction(int(m.group(1)), int(m.group(2)))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def fast_compare(gold: str, pred: str) -> bool | None:
    """True/False when decidable without sympy, None when the slow path must decide."""
    g, p = normalize(gold), normalize(pred)
    if g == p and g:
        return True
    if len(g) > 64 or len(p) > 64:
        return None
    gn, pn = as_number(g), as_number(p)
    if gn is not None and pn is not None:
        return gn == pn
    return None


# --------------------------------------------------------------------------- worker pool

_WORKER_SRC = r"""
import json, os, signal, sys
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # stray prints must not corrupt the protocol
import logging
logging.disable(logging.CRITICAL)
from math_verify import parse, verify

class _Timeout(BaseException):
    pass

def _alarm(signum, frame):
    raise _Timeout()

signal.signal(signal.SIGALRM, _alarm)
_gold = {}
try:  # first sympy use in a process is slow: pay it before taking requests
    verify(parse("\\boxed{(x+1)^2}"), parse("\\boxed{x^2+2x+1}"))
except Exception:
    pass
out.write('{"ready": true}\n'); out.flush()
for line in sys.stdin:
    try:
        req = json.loads(line)
        res = {}
        try:
            signal.setitimer(signal.ITIMER_REAL, req["soft"])
            g = _gold.get(req["gold"])
            if g is None:
                g = parse("\\boxed{" + req["gold"] + "}", parsing_timeout=None)
                if len(_gold) > 4096:
                    _gold.clear()
                _gold[req["gold"]] = g
            p = parse("\\boxed{" + req["pred"] + "}", parsing_timeout=None)
            if not g:
                res = {"correct": False, "error": "reference answer unparsable"}
            elif not p:
                res = {"correct": False, "error": "answer unparsable"}
            else:
                res = {"correct": bool(verify(g, p, timeout_seconds=None))}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        res = {"correct": False, "error": "timeout (sympy)"}
    except BaseException as e:
        res = {"correct": False, "error": ("%s: %s" % (type(e).__name__, e))[:300]}
    out.write(json.dumps(res) + "\n"); out.flush()
"""


class _Worker:
    """One math-verify subprocess speaking JSON lines; killed when it overruns."""

    src = _WORKER_SRC  # class attribute so tests can swap in a misbehaving worker

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMP")}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.src],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a terminal ^C goes to the trainer, not here
        )
        self._buf = b""
        self.ready = False

    def _readline(self, deadline: float | None) -> bytes | None:
        """One line from the worker, or None on timeout/EOF."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                if not sel.select(left):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def wait_ready(self, deadline: float | None) -> bool:
        if not self.ready:
            line = self._readline(deadline)
            self.ready = line is not None and b"ready" in line
        return self.ready

    def call(self, gold: str, pred: str, budget: float) -> dict[str, Any] | None:
        """Verdict dict, or None if the worker overran ``budget`` (it is then dead)."""
        deadline = time.monotonic() + budget
        assert self.proc.stdin is not None
        try:
            req = {"gold": gold, "pred": pred, "soft": max(budget * 0.8, 0.01)}
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            self.kill()
            return None
        line = self._readline(deadline)
        if line is None:
            self.kill()
            return None
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


class _Slot:
    """A worker plus a pre-started spare, so a kill costs no start-up wait."""

    def __init__(self, spare: bool) -> None:
        self.worker = _Worker()
        self.spare = _Worker() if spare else None

    def get(self, startup_timeout: float) -> _Worker:
        if not self.worker.alive():
            self.worker.kill()
            if self.spare is not None:
                self.worker, self.spare = self.spare, _Worker()
            else:
                self.worker = _Worker()
        if not self.worker.wait_ready(time.monotonic() + startup_timeout):
            self.worker.kill()
            raise RuntimeError("math-verify worker failed to start")
        return self.worker

    def close(self) -> None:
        for w in (self.worker, self.spare):
            if w is not None:
                w.kill()


class MathVerifier(Verifier):
    """Boxed-answer math verifier with a microsecond fast path and a hard time bound."""

    class Options(PluginOptions):
        answer_pattern: str | None = Field(
            None, description="regex for the answer (group 1 if any); default: last \\boxed{}"
        )
        format_reward: float = Field(0.0, description="bonus added when an answer is found")
        timeout_s: float = Field(2.0, gt=0, description="hard budget per slow-path answer")
        num_workers: int | None = Field(
            None, ge=1, description="math-verify subprocesses; default min(2, num_workers)"
        )
        spare_workers: bool = Field(True, description="keep a pre-started spare per worker")
        max_answer_chars: int = Field(2000, ge=1, description="longer answers score 0")
        fail_fast: bool = Field(False, description="raise on verifier crashes instead")

    options: Options

    def __init__(self, options: Options, context: PluginContext) -> None:
        super().__init__(options, context)
        self._pattern = re.compile(options.answer_pattern) if options.answer_pattern else None
        self._n_workers = options.num_workers or max(1, min(2, context.num_workers))
        self._slots: queue.Queue[_Slot] | None = None
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # --------------------------------------------------------------- slow path plumbing
    def _ensure_pool(self) -> queue.Queue[_Slot]:
        with self._lock:
            if self._slots is None:
                self._slots = queue.Queue()
                for _ in range(self._n_workers):
                    self._slots.put(_Slot(self.options.spare_workers))
                self._pool = ThreadPoolExecutor(self._n_workers, thread_name_prefix="mathv")
            return self._slots

    def _slow(self, gold: str, pred: str) -> dict[str, Any]:
        slots = self._ensure_pool()
        slot = slots.get()
        try:
            worker = slot.get(startup_timeout=60.0)
            res = worker.call(gold, pred, self.options.timeout_s)
            if res is None:
                return {"correct": False, "error": f"timeout after {self.options.timeout_s}s"}
            return res
        finally:
            slots.put(slot)

    def warmup(self) -> None:
        """Start the workers now (otherwise: on the first slow-path answer)."""
        slots = self._ensure_pool()
        held = [slots.get() for _ in range(self._n_workers)]
        try:
            for s in held:
                s.get(startup_timeout=60.0)
        finally:
            for s in held:
                slots.put(s)

    # --------------------------------------------------------------- scoring
    def _score_one(self, prompt: Prompt, response: str) -> Score | tuple[str, str, float]:
        """A Score, or (gold, pred, fmt) when the slow path must decide."""
        opts = self.options
        gold = str(prompt.reference).strip()
        pred = extract_answer(response, self._pattern)
        if pred is None:
            return Score(0.0, False, {"accuracy": 0.0, "format": 0.0, "no_answer": 1.0})
        fmt = opts.format_reward
        if len(pred) > opts.max_answer_chars:
            return Score(fmt, False, _bd(0.0, fmt), f"answer longer than {opts.max_answer_chars}")
        verdict = fast_compare(gold, pred)
        if verdict is not None:
            return Score(float(verdict) + fmt, verdict, _bd(float(verdict), fmt))
        return gold, pred, fmt

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[Score]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        out: list[Score | None] = [None] * len(prompts)
        slow: list[tuple[int, str, str, float]] = []
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            try:
                res = self._score_one(p, r)
            except Exception as e:  # a verifier bug, not a bad answer
                if self.options.fail_fast:
                    raise
                out[i] = Score(0.0, False, _bd(0.0, 0.0), f"verifier error: {e!r}"[:500])
                continue
            if isinstance(res, Score):
                out[i] = res
            else:
                slow.append((i, *res))
        if slow:
            self._ensure_pool()
            assert self._pool is not None
            futures = [(i, fmt, self._pool.submit(self._slow, g, p)) for i, g, p, fmt in slow]
            for i, fmt, fut in futures:
                try:
                    res = fut.result()
                except Exception as e:
                    if self.options.fail_fast:
                        raise
                    out[i] = Score(fmt, False, _bd(0.0, fmt), f"verifier error: {e!r}"[:500])
                    continue
                ok = bool(res.get("correct"))
                out[i] = Score(float(ok) + fmt, ok, _bd(float(ok), fmt), res.get("error"))
        return [s for s in out if s is not None]

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            if self._slots is not None:
                while not self._slots.empty():
                    self._slots.get().close()
                self._slots = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _bd(acc: float, fmt: float) -> dict[str, float]:
    return {"accuracy": acc, "format": fmt, "no_answer": 0.0}
