"""Math verifier: extract the final answer, compare it with the reference answer.

``Prompt.reference`` is the gold answer as a string (``"579"``, ``"\\frac{1}{2}"``,
``"[1,2]"``, ``"\\begin{pmatrix}1&2\\end{pmatrix}"`` ...).

Why this shape:

* The common case (integer answers, exact matches) must cost microseconds, so a fast path
  (``fast``) compares normalized strings and plain numbers in-process.
* Everything else goes to math-verify (sympy), which can hang; it runs in killable worker
  processes (``pool``), so every answer has a hard time bound.
* A bad answer never raises: it scores 0 with the reason in ``Score.error``; only a crash of
  the verifier itself raises, and only with ``fail_fast``.

Reward = accuracy (1/0) + ``format_reward`` when an answer was extracted;
breakdown = ``{"accuracy", "format", "no_answer"}``; ``Score.correct`` is accuracy only.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from pydantic import Field

from srpo.api import PluginContext, PluginError, PluginOptions, Prompt, Score, Verifier

from .extract import extract_answer, extract_boxed
from .fast import as_number, fast_compare
from .fast import normalize as normalize_answer
from .pool import WorkerPool

__all__ = ["MathVerifier", "extract_answer", "extract_boxed", "fast_compare"]

#: An answer the fast path could not decide: (index, gold, pred, format reward).
_Deferred = tuple[int, str, str, float]


def _breakdown(acc: float, fmt: float) -> dict[str, float]:
    return {"accuracy": acc, "format": fmt, "no_answer": 0.0}


def _crash_score(fmt: float, e: Exception) -> Score:
    return Score(fmt, False, _breakdown(0.0, fmt), f"verifier error: {e!r}"[:500])


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
        fail_fast: bool = Field(
            False, description="stop the run (PluginError) on the verifier's own crashes"
        )

    options: Options

    def __init__(self, options: Options, context: PluginContext) -> None:
        super().__init__(options, context)
        self._pattern = re.compile(options.answer_pattern) if options.answer_pattern else None
        n_workers = options.num_workers or max(1, min(2, context.num_workers))
        self._workers = WorkerPool(n_workers, options.spare_workers)

    def warmup(self) -> None:
        """Start the workers now (otherwise: on the first slow-path answer)."""
        self._workers.warmup()

    def _slow(self, gold: str, pred: str) -> dict[str, Any]:
        return self._workers.compare(gold, pred, self.options.timeout_s)

    def _score_one(self, prompt: Prompt, response: str) -> Score | tuple[str, str, float]:
        """A Score, or (gold, pred, fmt) when the slow path must decide."""
        opts = self.options
        gold = str(prompt.reference).strip()
        pred = extract_answer(response, self._pattern)
        if pred is None:
            return Score(0.0, False, {"accuracy": 0.0, "format": 0.0, "no_answer": 1.0})
        fmt = opts.format_reward
        if len(pred) > opts.max_answer_chars:
            error = f"answer longer than {opts.max_answer_chars}"
            return Score(fmt, False, _breakdown(0.0, fmt), error)
        verdict = fast_compare(gold, pred)
        if verdict is not None:
            return Score(float(verdict) + fmt, verdict, _breakdown(float(verdict), fmt))
        return gold, pred, fmt

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[Score]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        out: list[Score | None] = [None] * len(prompts)
        deferred: list[_Deferred] = []
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            try:
                res = self._score_one(p, r)
            except Exception as e:  # a verifier bug, not a bad answer
                if self.options.fail_fast:  # the kernel stops the run on a PluginError
                    raise PluginError(f"math verifier failed: {type(e).__name__}: {e}") from e
                out[i] = _crash_score(0.0, e)
                continue
            if isinstance(res, Score):
                out[i] = res
            else:
                deferred.append((i, *res))
        if deferred:
            self._score_slow(deferred, out)
        return [s for s in out if s is not None]

    def _score_slow(self, deferred: list[_Deferred], out: list[Score | None]) -> None:
        """Fill ``out`` for the answers the fast path left, compared in parallel workers."""
        futures: list[tuple[int, float, Future[Any]]] = [
            (i, fmt, self._workers.submit(self._slow, g, p)) for i, g, p, fmt in deferred
        ]
        for i, fmt, fut in futures:
            try:
                res = fut.result()
            except Exception as e:
                if self.options.fail_fast:  # the kernel stops the run on a PluginError
                    raise PluginError(f"math verifier failed: {type(e).__name__}: {e}") from e
                out[i] = _crash_score(fmt, e)
                continue
            ok = bool(res.get("correct"))
            out[i] = Score(float(ok) + fmt, ok, _breakdown(float(ok), fmt), res.get("error"))

    def normalize(self, response: str) -> str | None:
        """The extracted answer, normalized by the fast path (so ``\\dfrac{1}{2}`` and
        ``\\frac{1}{2}`` vote together), plain numbers as exact fractions (``0.5`` = ``1/2``);
        ``None`` without an answer. Never slower than a regex: votes are counted for every
        sample, and a miss only splits a vote, it never changes a reward."""
        pred = extract_answer(response, self._pattern)
        if pred is None or len(pred) > self.options.max_answer_chars:
            return None
        norm = normalize_answer(pred)
        if not norm:
            return None
        value = as_number(norm)
        return norm if value is None else str(value)

    def close(self) -> None:
        self._workers.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
