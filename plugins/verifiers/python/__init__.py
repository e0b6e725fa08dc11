"""Python verifier: rewards from a function in your own Python file.

::

    verifiers:
      math: {name: python, options: {path: rewards.py, function: score}}

**The contract.** ``path`` is relative to the run file; ``function`` (default ``score``) is
called once per response::

    score(prompt, response, reference) -> float | (float, bool) | dict

* ``prompt`` is the prompt text (for chat prompts, the last user message), ``response`` the
  model's decoded response, ``reference`` the dataset's reference value as loaded (a
  string, a number, a dict ...).
* It returns one of:

  - a number (``bool``, NumPy and torch scalars count): the reward; the response counts as
    correct when ``reward > correct_above`` (option, default 0);
  - ``(reward, correct)``, ``correct`` a bool;
  - ``{"reward": r, "correct": c, NAME: x, ...}``: ``correct`` optional (then as for a
    number); every other key is a number, a part of the reward reported as the step
    metric ``reward_parts/NAME`` (its mean).
* A function with a parameter named ``meta`` (or ``**kwargs``) also gets
  ``meta={"id": prompt id, "domain": ..., "messages": chat messages or None,
  "row": the dataset row's other fields}``.
* ``batched: true``: one call per step and domain, with lists —
  ``score(prompts, responses, references[, meta])`` — returning a list with one result
  (any form above) per response. It may, say, compare a response with its group's others.

**Failures cost a response, never the run.** An exception, a NaN or infinite number, a
result outside the contract, or a call longer than ``timeout_s`` scores the response 0
(not correct) with the reason (``rewards.py:7: KeyError: ...``) in ``Score.error``, which
counts in the step's ``verifier_errors``; the first such failure is also a warning (once
per run, not per response). In the batched form a call that raises, overruns or returns
the wrong number of results costs its whole batch; a bad element costs its response.

**Isolation.** ``isolation: process`` (default): ``num_workers`` worker processes import
the file once and answer calls; a call over ``timeout_s`` is interrupted inside the
worker, and a worker that still does not answer a second later is killed and replaced
(the replacement imports the file again). Module-level state (caches) is per worker; the
function's prints go to stderr. ``isolation: none`` calls the function in the trainer's
process: no inter-process cost, but ``timeout_s`` is NOT enforced (a hang hangs the run)
and a hard crash ends the run.

**Not a sandbox.** Either way the code runs unsandboxed with your privileges: it can read
and write your files and use the network. Run only code you trust; to execute programs a
model wrote, use the ``code`` verifier.

**Validation.** ``srpo validate`` (and every run, before the model loads) imports the file
in a worker process and checks the function exists and accepts these arguments; a problem
is one line: the option's line of the run file (missing file, missing function) or the
reward file's line (``rewards.py:3: SyntaxError: ...``, an import-time exception, a
``def`` with the wrong parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from srpo.api import PluginContext, PluginOptions, Prompt, Score, Verifier, warn

from .check import check, resolve
from .inprocess import InProcessRunner
from .process import ProcessRunner, Target

__all__ = ["PythonVerifier"]


def _meta(p: Prompt) -> dict[str, Any]:
    """What a function with a ``meta`` parameter receives about the prompt (builtins only:
    it is pickled to the worker)."""
    messages = [dict(m) for m in p.messages] if p.messages is not None else None
    return {"id": p.id, "domain": p.domain, "messages": messages, "row": dict(p.meta)}


class PythonVerifier(Verifier):
    """Scores responses with a user function from a Python file (unsandboxed)."""

    class Options(PluginOptions):
        path: Path = Field(description="the Python file, relative to the run file")
        function: str = Field("score", description="name of the reward function in it")
        batched: bool = Field(False, description="call once per batch with lists")
        timeout_s: float = Field(
            10.0, gt=0, description="per call (per batch if batched); isolation: process only"
        )
        isolation: Literal["process", "none"] = Field(
            "process", description="process: killable workers; none: in the trainer"
        )
        num_workers: int = Field(
            1, ge=1, description="worker processes sharing the calls (not batched)"
        )
        correct_above: float = Field(
            0.0, description="a reward with no `correct` counts as correct above this"
        )

    options: Options

    @classmethod
    def preflight(cls, options: Options, base_dir: Path) -> None:  # type: ignore[override]
        check(cls._target(options, base_dir), options.isolation, options.num_workers)

    @staticmethod
    def _target(options: Options, base_dir: Path | None) -> Target:
        return Target(resolve(options.path, base_dir), options.function, options.batched)

    def __init__(self, options: Options, context: PluginContext) -> None:
        super().__init__(options, context)
        # relative to the run file; constructed by hand (no run file), to the current directory
        target = self._target(options, context.base_dir)
        self._label = f"{target.path.name}:{target.function}"
        self._warned = False
        self._runner: InProcessRunner | ProcessRunner
        if options.isolation == "none":
            self._runner = InProcessRunner(target)
        else:
            self._runner = ProcessRunner(target, options.timeout_s, options.num_workers)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[Score]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            return []
        metas: dict[int, dict[str, Any]] = {}  # one per prompt, shared by its group
        meta = [metas.setdefault(id(p), _meta(p)) for p in prompts]
        texts, references = [p.text for p in prompts], [p.reference for p in prompts]
        if self.options.batched:
            reply = self._runner.run([(texts, list(responses), references, meta)])[0]
            replies = reply if isinstance(reply, list) else [reply] * len(prompts)
        else:
            replies = self._runner.run(list(zip(texts, responses, references, meta, strict=True)))
        scores = [self._to_score(v) for v in replies]
        self._warn_once(scores)
        return scores

    def _to_score(self, verdict: dict[str, Any]) -> Score:
        if "error" in verdict:
            return Score(0.0, False, error=str(verdict["error"]))
        reward = float(verdict["reward"])
        correct = verdict["correct"]
        if correct is None:
            correct = reward > self.options.correct_above
        return Score(reward, bool(correct), dict(verdict["parts"]))

    def _warn_once(self, scores: Sequence[Score]) -> None:
        """One warning for the run's first failures; later ones only count as errors."""
        if self._warned:
            return
        errors = [s.error for s in scores if s.error is not None]
        if errors:
            self._warned = True
            warn(
                f"python verifier {self._label}: {len(errors)} of {len(scores)} responses "
                f"could not be scored (first: {errors[0]}); they get reward 0 and count in "
                "verifier_errors (warned once per run)"
            )

    def close(self) -> None:
        self._runner.close()
