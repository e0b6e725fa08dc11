"""Reward files for the ``python`` verifier's tests, and run files that use them."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.support.tiny import tiny_config

#: Every return form of the contract, plus the ways a function can go wrong.
REWARDS = """
import math
import os
import signal


def exact(prompt, response, reference):
    return float(response.strip() == str(reference))


def as_bool(prompt, response, reference):
    return response == reference


def as_tuple(prompt, response, reference):
    return 0.25, response == reference


def as_dict(prompt, response, reference):
    ok = response == reference
    return {"reward": float(ok) + 0.1, "correct": ok, "format": 0.1, "length": len(response)}


def dict_without_correct(prompt, response, reference):
    return {"reward": -1.0, "style": 0.5}


def with_meta(prompt, response, reference, meta):
    return {"reward": meta["row"]["level"], "correct": meta["domain"] == "math"}


def batched(prompts, responses, references):
    return [r == ref for r, ref in zip(responses, references)]


def batched_short(prompts, responses, references):
    return [1.0]


def misbehaves(prompt, response, reference):
    if response == "raise":
        return {}["missing"]
    if response == "nan":
        return math.nan
    if response == "inf":
        return (math.inf, True)
    if response == "str":
        return "1.0"
    if response == "none":
        return None
    if response == "triple":
        return (1.0, True, 2)
    if response == "no-reward":
        return {"correct": True}
    if response == "bad-part":
        return {"reward": 1.0, "note": "fine"}
    if response == "bad-correct":
        return (1.0, "yes")
    if response == "hang":
        while True:
            pass
    if response == "stubborn":  # the in-worker alarm cannot stop it: only a kill can
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            pass
    if response == "crash":
        os._exit(3)
    if response == "print":
        print("noise on stdout")
    return 1.0


def pid(prompt, response, reference):
    return float(os.getpid())
"""


def write_rewards(folder: Path, source: str = REWARDS, name: str = "rewards.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


def python_run_config(out: Path, rewards: str = "rewards.py", **options: object) -> dict:
    """The tiny math run scored by the python verifier: one short step, no held-out set."""
    cfg = tiny_config(
        out,
        **{
            "run.max_steps": 1,
            "run.prompts_per_step": 2,
            "algorithm.group_size": 4,
            "sampler.options.max_new_tokens": 16,
            "eval.datasets": {},
        },
    )
    cfg["verifiers"] = {"math": {"name": "python", "options": {"path": rewards, **options}}}
    return cfg
