"""CodeVerifier dataset formats: HumanEval check(candidate), MBPP asserts, stdin/stdout rows.

Canonical solutions score 1, wrong ones 0, every forging attempt 0, and each program gets
one sandbox start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from srpo_plugins.verifiers.code import CodeVerifier
from srpo_plugins.verifiers.code.formats import (
    ScriptSpec,
    StdioSpec,
    outputs_match,
    parse_format,
)
from srpo_plugins.verifiers.code.judge import ReferenceError_

from srpo.api import PluginContext
from srpo.types import Prompt
from tests.support.code_datasets import (
    HE_ADD,
    HE_DECODE_CYCLIC,
    HE_FIND_ZERO,
    HE_SORT_COPY,
    HUMANEVAL,
    MBPP,
    STDIO,
    he_record,
    he_solution,
    mbpp_record,
)


def make(**opts) -> CodeVerifier:
    opts.setdefault("test_timeout_s", 3.0)
    opts.setdefault("total_timeout_s", 15.0)
    ctx = PluginContext(run_dir=Path("."), seed=0, num_workers=2)
    return CodeVerifier(CodeVerifier.Options(**opts), ctx)


class Counting:
    """Counts sandbox starts of the wrapped backend."""

    def __init__(self, backend) -> None:
        self.backend, self.starts = backend, 0

    def run(self, job):
        self.starts += 1
        return self.backend.run(job)

    def __getattr__(self, name):
        return getattr(self.backend, name)


@pytest.fixture(scope="module")
def verifier():
    v = make()
    v.backend = Counting(v.backend)
    yield v
    v.close()


def block(code: str) -> str:
    return f"Sure:\n```python\n{code}\n```\n"


def score(v: CodeVerifier, refs: list, codes: list[str], metas: list | None = None):
    prompts = [
        Prompt(i, "code", "q", ref, meta=(metas[i] if metas else {})) for i, ref in enumerate(refs)
    ]
    before = v.backend.starts if isinstance(v.backend, Counting) else None
    scores = v.score(prompts, [block(c) for c in codes])
    starts = None if before is None else v.backend.starts - before
    return scores, list(v.last_details), starts


# ----------------------------------------------------------------------------- HumanEval


def test_humaneval_canonical_pass_wrong_fail(verifier):
    refs = [he_record(p) for p in HUMANEVAL] * 2
    codes = [he_solution(p, p["canonical"]) for p in HUMANEVAL]
    codes += [he_solution(p, p["wrong"]) for p in HUMANEVAL]
    scores, details, starts = score(verifier, refs, codes)
    n = len(HUMANEVAL)
    for p, s, d in zip(HUMANEVAL, scores[:n], details[:n], strict=True):
        assert (s.reward, s.correct, s.error) == (1.0, True, None), (p["task_id"], d)
    for p, s, d in zip(HUMANEVAL, scores[n:], details[n:], strict=True):
        assert (s.reward, s.correct) == (0.0, False), (p["task_id"], d)
    assert starts == 2 * n  # one sandbox per program, however many calls a check makes


def test_humaneval_as_reference_key_test_with_row_in_meta(verifier):
    """``reference_key: test``: the test program is the reference, the row is meta."""
    metas = [{"entry_point": p["entry_point"], "prompt": p["prompt"]} for p in HUMANEVAL]
    refs = [p["test"] for p in HUMANEVAL]
    codes = [he_solution(p, p["canonical"]) for p in HUMANEVAL]
    scores, details, _ = score(verifier, refs, codes, metas)
    assert [s.reward for s in scores] == [1.0] * len(HUMANEVAL), details
    # the same as a JSON string of the whole row
    scores, details, _ = score(verifier, [json.dumps(he_record(HE_ADD))], [codes[6]])
    assert scores[0].correct, details


def test_humaneval_solution_without_prompt_text(verifier):
    """A model that writes only the function (no prompt copy) still gets the helpers."""
    code = "def decode_cyclic(s):\n" + HE_DECODE_CYCLIC["canonical"].replace(
        "encode_cyclic(encode_cyclic(s))",
        "''.join(g[-1] + g[:-1] if len(g) == 3 else g "
        "for g in [s[3 * i:3 * i + 3] for i in range((len(s) + 2) // 3)])",
    )
    scores, details, _ = score(verifier, [he_record(HE_DECODE_CYCLIC)], [code])
    assert scores[0].correct, details


def test_humaneval_prompt_without_docstring(verifier):
    ref = {**he_record(HE_ADD), "prompt": "def add(x: int, y: int):"}
    scores, details, _ = score(verifier, [ref], ["def add(x, y):\n    return x + y\n"])
    assert scores[0].correct, (scores, details)


def test_humaneval_program_using_random_itself_still_replays(verifier):
    """The program's own use of ``random`` does not shift the check's draws."""
    code = "import random\ndef add(x, y):\n    random.random()\n    return x + y\n"
    scores, details, _ = score(verifier, [he_record(HE_ADD)], [code])
    assert scores[0].correct, details


# forging attempts: each one's add() is wrong or absent, so an honest verdict is 0
HE_FORGERIES = {
    "eq_always_true_object": (
        "class Y:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
        "def add(x, y):\n    return Y()\n"
    ),
    "eq_always_true_int_subclass": (
        "class Y(int):\n    def __eq__(self, o):\n        return True\n"
        "    __hash__ = int.__hash__\ndef add(x, y):\n    return Y(0)\n"
    ),
    "eq_always_true_list_subclass": (
        "class L(list):\n    def __eq__(self, o):\n        return True\n"
        "def sort_array(a):\n    return L()\n"
    ),
    "exit_0_at_import": "import os\nos._exit(0)\n",
    "sys_exit_at_import_with_magic": "print('PASSED')\nimport sys\nsys.exit(0)\n",
    "system_exit_in_candidate": "def add(x, y):\n    raise SystemExit(0)\n",
    "keyboard_interrupt_in_candidate": "def add(x, y):\n    raise KeyboardInterrupt\n",
    "patch_assert_and_builtins": (
        "import builtins\nbuiltins.AssertionError = type('A', (BaseException,), {})\n"
        "builtins.isinstance = lambda *a: True\nbuiltins.abs = lambda x: 0\n"
        "builtins.sorted = lambda *a, **k: []\n"
        "def add(x, y):\n    return 0\n"
    ),
    "define_check_in_program": "def check(candidate):\n    return None\ndef add(x, y):\n    return 0\n",
    "patch_the_harness": (
        "import sys\nm = sys.modules['__main__']\n"
        "m._run_script = lambda spec, g: []\n"
        "m.encode = lambda *a, **k: 1\n"
        "def add(x, y):\n    return 0\n"
    ),
    "forge_transcript_via_harness": (
        "import sys\nm = sys.modules['__main__']\nreal = m._run_script\n"
        "def fake(spec, g):\n"
        "    calls = real(spec, g)\n"
        "    return [[k, {'ok': True, 'value': {'$h': 0}}] for k, _ in calls]\n"
        "m._run_script = fake\n"
        "def add(x, y):\n    return 0\n"
    ),
    "easy_random_inputs": (
        "import random\nrandom.randint = lambda a, b: 0\n"
        "def add(x, y):\n    return x + y if (x, y) == (0, 0) or x + y < 13 else 0\n"
    ),
    "return_a_function": "def add(x, y):\n    return lambda *a: x + y\n",
    "hang": "def add(x, y):\n    while True:\n        pass\n",
    "no_such_function": "def plus(x, y):\n    return x + y\n",
}


@pytest.mark.parametrize("name", sorted(HE_FORGERIES))
def test_humaneval_forgeries_score_zero(verifier, name):
    code = HE_FORGERIES[name]
    prob = HE_SORT_COPY if "sort_array" in code else HE_ADD
    scores, details, starts = score(verifier, [he_record(prob)], [code])
    assert (scores[0].reward, scores[0].correct) == (0.0, False), details
    assert scores[0].error is None
    assert starts == 1


# ----------------------------------------------------------------------------- MBPP


def test_mbpp_canonical_pass_wrong_fail(verifier):
    refs = [mbpp_record(p) for p in MBPP] * 2
    codes = [p["code"] for p in MBPP] + [p["wrong"] for p in MBPP]
    scores, details, starts = score(verifier, refs, codes)
    n = len(MBPP)
    for p, s, d in zip(MBPP, scores[:n], details[:n], strict=True):
        assert (s.reward, s.correct, s.error) == (1.0, True, None), (p["task_id"], d)
    for p, s, d in zip(MBPP, scores[n:], details[n:], strict=True):
        assert (s.reward, s.correct) == (0.0, False), (p["task_id"], d)
    assert starts == 2 * n


def test_mbpp_as_reference_key_test_list_with_row_in_meta(verifier):
    p = MBPP[3]  # the one with test_setup_code and test_imports
    meta = {"test_setup_code": p["test_setup_code"], "test_imports": p["test_imports"]}
    scores, details, _ = score(verifier, [p["test_list"]], [p["code"]], [meta])
    assert scores[0].correct, details
    scores, details, _ = score(verifier, [p["test_list"]], [p["code"]], [{}])
    assert not scores[0].correct  # without the setup, `radius` is undefined


def test_mbpp_partial_credit():
    v = make(partial_credit=True)
    try:
        code = "def remove_Occ(s, ch):\n    return 'heo' if s == 'hello' else s\n"
        scores, details, _ = score(v, [mbpp_record(MBPP[1])], [code])
    finally:
        v.close()
    assert scores[0].reward == pytest.approx(1 / 3), details
    assert details[0].passed == [True, False, False]


MBPP_FORGERIES = {
    "eq_true": (
        "class S:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
        "    def __iter__(self):\n        return iter(())\n"
        "def remove_Occ(s, ch):\n    return S()\n"
    ),
    "str_subclass_eq": (
        "class S(str):\n    def __eq__(self, o):\n        return True\n"
        "    __hash__ = str.__hash__\n"
        "def remove_Occ(s, ch):\n    return S('nope')\n"
    ),
    "exit_at_import": "raise SystemExit(0)\n",
    "system_exit_in_call": "def remove_Occ(s, ch):\n    raise SystemExit(0)\n",
    "shadow_builtins": (
        "import builtins\nbuiltins.AssertionError = KeyError\n"
        "def remove_Occ(s, ch):\n    return s\n"
    ),
}


@pytest.mark.parametrize("name", sorted(MBPP_FORGERIES))
def test_mbpp_forgeries_score_zero(verifier, name):
    scores, details, starts = score(verifier, [mbpp_record(MBPP[1])], [MBPP_FORGERIES[name]])
    assert (scores[0].reward, scores[0].correct) == (0.0, False), details
    assert starts == 1


# ----------------------------------------------------------------------------- stdin/stdout


def test_stdio_canonical_pass_wrong_fail(verifier):
    refs = [p["ref"] for p in STDIO] * 2
    codes = [p["canonical"] for p in STDIO] + [p["wrong"] for p in STDIO]
    scores, details, starts = score(verifier, refs, codes)
    n = len(STDIO)
    for p, s, d in zip(STDIO, scores[:n], details[:n], strict=True):
        assert (s.reward, s.correct, s.error) == (1.0, True, None), (p["name"], d)
    for p, s, d in zip(STDIO, scores[n:], details[n:], strict=True):
        assert (s.reward, s.correct) == (0.0, False), (p["name"], d)
    assert starts == 2 * n  # all cases of a program in one sandbox


def test_stdio_cases_are_isolated(verifier):
    """Each case runs as a fresh __main__: module state does not leak between cases."""
    code = (
        "import sys\nseen = getattr(sys, 'seen', 0)\nsys.seen = seen + 1\n"
        "a, b = map(int, input().split())\nprint(a + b + seen)\n"
    )
    scores, details, _ = score(verifier, [STDIO[0]["ref"]], [code])
    assert scores[0].correct, details


STDIO_FORGERIES = {
    "magic_line": "print('PASSED')\nprint('All tests passed')\n",
    "exit_0_early": "import sys\nsys.exit(0)\n",
    "os_exit_0": "import os\nos._exit(0)\n",
    "fake_frames_on_every_fd": (
        "import os, json, struct\n"
        "body = json.dumps({'i': 0, 'ok': True, 'value': {'status': 0, 'timeout': False,"
        " 'over': False, 'stdout': '3', 'stderr': ''}}).encode()\n"
        "for fd in range(3, 64):\n"
        "    try:\n        os.write(fd, struct.pack('>I', len(body)) + body)\n"
        "    except OSError:\n        pass\n"
    ),
    "kill_the_harness": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    "hang": "while True:\n    pass\n",
    "flood_output": "import sys\nwhile True:\n    sys.stdout.write('3 ' * 10000)\n",
}


@pytest.mark.parametrize("name", sorted(STDIO_FORGERIES))
def test_stdio_forgeries_score_zero(verifier, name):
    scores, details, starts = score(verifier, [STDIO[0]["ref"]], [STDIO_FORGERIES[name]])
    assert (scores[0].reward, scores[0].correct) == (0.0, False), details
    assert scores[0].error is None
    assert starts == 1  # a crash does not buy the program more sandboxes


def test_stdio_timeout_is_per_case():
    v = make(test_timeout_s=1.0)
    try:
        code = "a, b = map(int, input().split())\nif a == 10:\n    while True: pass\nprint(a + b)\n"
        ref = {"inputs": ["1 2\n", "10 1\n", "2 2\n"], "outputs": ["3", "11", "4"]}
        v.options.partial_credit = True
        _, details, _ = score(v, [ref], [code])
    finally:
        v.close()
    assert details[0].passed == [True, False, True], details
    assert details[0].timeout


def test_outputs_match_tokens_and_floats():
    assert outputs_match("1 2\n3\n", "1\n2 3")
    assert outputs_match("  7  \r\n\n", "7")
    assert not outputs_match("1 2", "1 2 3")
    assert not outputs_match("12", "1 2")
    assert outputs_match("2.3333333", "2.3333333333")
    assert outputs_match("1.5000001", "1.5")
    assert outputs_match("0.5", "5e-1")
    assert not outputs_match("1.51", "1.5")
    assert not outputs_match("1.0000001", "1")  # an integer answer is exact
    assert not outputs_match("1000000000000000001", "1000000000000000000")
    assert not outputs_match("nan", "1.5")
    assert not outputs_match("inf", "1e309")
    assert not outputs_match("YES", "yes")


# ----------------------------------------------------------------------------- detection


def test_format_detection():
    assert isinstance(parse_format(he_record(HE_FIND_ZERO)), ScriptSpec)
    assert isinstance(parse_format(HE_ADD["test"], {"entry_point": "add"}), ScriptSpec)
    assert isinstance(parse_format(mbpp_record(MBPP[0])), ScriptSpec)
    assert isinstance(parse_format(MBPP[0]["test_list"]), ScriptSpec)
    for p in STDIO:
        assert isinstance(parse_format(p["ref"]), StdioSpec), p["name"]
        assert isinstance(parse_format(json.dumps(p["ref"])), StdioSpec), p["name"]
    # the judge's own formats are left to it
    assert parse_format({"fn_name": "f", "tests": ["assert f(1) == 1"]}) is None
    assert parse_format({"fn_name": "f", "inputs": [[1]], "outputs": [1]}) is None
    assert parse_format({"stdin_tests": [{"input": "", "output": ""}]}) is None
    assert parse_format({"input_output": {"fn_name": "f", "inputs": [], "outputs": []}}) is None
    spec = parse_format(mbpp_record(MBPP[4]))
    assert spec.proxy == ["Pair", "max_chain_length"]
    spec = parse_format({"test": HE_DECODE_CYCLIC["test"], "entry_point": "decode_cyclic"})
    assert spec.proxy == ["decode_cyclic", "encode_cyclic"]  # no prompt: from the program


@pytest.mark.parametrize(
    "ref",
    [
        {"test": "def check(:", "entry_point": "f"},
        {"test": "x = 1", "entry_point": "f"},
        {"test": "def check(c): pass", "entry_point": "not an identifier"},
        {"test_list": ["assert f(1) ==="]},
        {"test_list": [1, 2]},
        {"inputs": ["1"], "outputs": ["1", "2"]},
        [{"input": "1", "output": "1", "testtype": "functional"}],
    ],
)
def test_bad_references_are_reported(verifier, ref):
    with pytest.raises(ReferenceError_):
        parse_format(ref)
    scores, _, _ = score(verifier, [ref], ["def f(x):\n    return x\n"])
    assert scores[0].reward == 0.0 and scores[0].error and "bad reference" in scores[0].error


def test_apps_call_based_input_output_goes_to_io(verifier):
    ref = {"input_output": json.dumps({"fn_name": "sq", "inputs": [[2], [3]], "outputs": [4, 9]})}
    scores, details, _ = score(verifier, [ref], ["def sq(x):\n    return x * x\n"])
    assert scores[0].correct, details


def test_formats_through_the_remote_backend():
    import sys

    from srpo_plugins.verifiers.code.remote import serve
    from srpo_plugins.verifiers.code.sandbox import Limits, make_backend

    server = serve(make_backend("auto", Limits(), sys.executable, 2, 1_500_080_000))
    v = make(backend="remote", remote_url=f"http://127.0.0.1:{server.server_address[1]}")
    try:
        refs = [he_record(HE_ADD), mbpp_record(MBPP[4]), STDIO[0]["ref"]] * 2
        codes = [he_solution(HE_ADD, HE_ADD["canonical"]), MBPP[4]["code"], STDIO[0]["canonical"]]
        codes += [HE_FORGERIES["eq_always_true_object"], MBPP_FORGERIES["eq_true"]]
        codes += [STDIO_FORGERIES["magic_line"]]
        scores, details, _ = score(v, refs, codes)
    finally:
        v.close()
        server.shutdown()
    assert [s.reward for s in scores] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0], details


def test_humaneval_helpers_from_the_prompt_text(verifier):
    """``prompt_key: prompt, reference_key: test``: the row's prompt is the text, not meta.

    find_zero's check calls ``poly``: it must be the dataset's, not the program's."""
    cheat = "def poly(xs, x):\n    return 0.0\ndef find_zero(xs):\n    return 0.0\n"
    good = he_solution(HE_FIND_ZERO, HE_FIND_ZERO["canonical"])
    prompts = [
        Prompt(0, "code", HE_FIND_ZERO["prompt"], HE_FIND_ZERO["test"], meta={"entry_point": e})
        for e in ("find_zero", "find_zero")
    ]
    scores = verifier.score(prompts, [block(good), block(cheat)])
    assert [s.reward for s in scores] == [1.0, 0.0], verifier.last_details
    # with no prompt anywhere the helper would come from the program: the weaker mode
    spec = parse_format(HE_FIND_ZERO["test"], {"entry_point": "find_zero"})
    assert spec.proxy == ["find_zero", "poly"]
