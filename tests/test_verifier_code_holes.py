"""Minimal holes: of an assertion test only the steps on program objects reach the sandbox.

``assert f(2).startswith("abc")`` sends ``f(2)`` (its inputs) and nothing else: the
``startswith`` runs in the judge on the genuine ``str`` the program returned, so a ``str``
or ``list`` subclass with lying methods, or a program reading the requests it is sent,
scores 0. Steps on program objects (``Solution().twoSum(...)``, ``f(x).val``) still go to
the sandbox, with the chain that built the object.
"""

from __future__ import annotations

import json

import pytest
from srpo_plugins.verifiers.code import CodeVerifier
from srpo_plugins.verifiers.code.judge import (
    HoleResult,
    compile_assert_test,
    run_assert_test,
)

from srpo.types import Prompt
from tests.support.code_verifier import block
from tests.support.code_verifier import make_verifier as make


@pytest.fixture(scope="module")
def verifier():
    v = make()
    yield v
    v.close()


def scores(v: CodeVerifier, tests: list[str], code: str) -> list[float]:
    """Each test as its own prompt: one score per test."""
    prompts = [Prompt(i, "code", "q", {"fn_name": "f", "tests": [t]}) for i, t in enumerate(tests)]
    return [s.reward for s in v.score(prompts, [block(code)] * len(prompts))]


STR_TESTS = [
    'assert f(2).startswith("abc")',
    'assert f(2).endswith("xyz")',
    'assert f(2).count("q") == 2',
    'assert f(2) == "abcqqxyz"',
    'assert f(2).upper().lower() == "abcqqxyz"',
    'assert f(2)[0:3] == "abc"',
]
HONEST_STR = "def f(x):\n    return 'abcqqxyz'\n"
LYING_STR = (
    "class S(str):\n"
    "    def startswith(self, *a):\n        return True\n"
    "    def endswith(self, *a):\n        return True\n"
    "    def count(self, *a):\n        return 2\n"
    "    def upper(self):\n        return self\n"
    "    def lower(self):\n        return self\n"
    "    def __eq__(self, o):\n        return True\n"
    "    def __ne__(self, o):\n        return False\n"
    "    __hash__ = str.__hash__\n"
    "    def __getitem__(self, k):\n        return S('zzz')\n"
    "def f(x):\n    return S('nope')\n"
)
LIST_TESTS = [
    'assert f(2).index("b") == 1',
    "assert f(2).count(3) == 2",
    "assert f(2) == ['a', 'b', 3, 3]",
]
HONEST_LIST = "def f(x):\n    return ['a', 'b', 3, 3]\n"
LYING_LIST = (
    "class L(list):\n"
    "    def index(self, *a):\n        return 1\n"
    "    def count(self, *a):\n        return 2\n"
    "    def __eq__(self, o):\n        return True\n"
    "def f(x):\n    return L([9])\n"
)
# reads the requests it is sent (the harness's frames) and returns the longest string in
# them: where an expected value reaches the sandbox, it forges a pass with it
READER = r"""
import ast, sys

def _strings(x, out):
    if isinstance(x, str):
        if not x.startswith(('__srpo', '$')):
            out.append(x)
    elif isinstance(x, dict):
        for k, v in x.items():
            _strings(k, out)
            _strings(v, out)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _strings(v, out)

def _seen():
    out, fr = [], sys._getframe()
    while fr is not None:
        msg = fr.f_locals.get('msg')
        if isinstance(msg, dict) and isinstance(msg.get('requests'), list):
            for r in msg['requests']:
                print('request:', r)  # shows in the sandbox's stdout only
                _strings(r.get('env'), out)
                try:
                    out += [n.value for n in ast.walk(ast.parse(r.get('src', ''))) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                except SyntaxError:
                    pass
        fr = fr.f_back
    return out

def f(x):
    got = sorted(_seen(), key=len)
    return got[-1] if got else ''
"""


def test_reader_forges_when_the_expected_value_is_sent():
    """Positive control: the reader finds an expected value in a request that holds it."""
    g: dict = {}
    exec(READER, g)

    def serve(msg):
        return g["f"](2)

    old = {"requests": [{"src": "f(2).startswith('SECRETabc')", "env": {"$d": []}}]}
    assert serve(old) == "SECRETabc"


def test_lying_str_subclass_scores_zero(verifier):
    assert scores(verifier, STR_TESTS, HONEST_STR) == [1.0] * len(STR_TESTS)
    assert scores(verifier, STR_TESTS, LYING_STR) == [0.0] * len(STR_TESTS)


def test_lying_list_subclass_scores_zero(verifier):
    assert scores(verifier, LIST_TESTS, HONEST_LIST) == [1.0] * len(LIST_TESTS)
    assert scores(verifier, LIST_TESTS, LYING_LIST) == [0.0] * len(LIST_TESTS)


def test_request_reader_scores_zero(verifier):
    tests = [
        "assert f(2).startswith('SECRETabc')",
        "assert f(2).count('SECRETabc') == 1",
        "assert f(2).endswith('SECRETabc')",
    ]
    assert scores(verifier, tests, READER) == [0.0] * len(tests)


def test_program_objects_still_step_in_the_sandbox(verifier):
    two_sum = (
        "class Solution:\n    def twoSum(self, nums, target):\n"
        "        seen = {}\n        for i, x in enumerate(nums):\n"
        "            if target - x in seen:\n                return [seen[target - x], i]\n"
        "            seen[x] = i\n"
    )
    tests = [
        "assert Solution().twoSum([2, 7], 9) == [0, 1]",
        "assert Solution().twoSum([3, 2, 4], 6) == [1, 2]",
    ]
    prompts = [Prompt(i, "code", "q", {"tests": [t]}) for i, t in enumerate(tests)]
    got = verifier.score(prompts, [block(two_sum)] * 2)
    assert [s.reward for s in got] == [1.0, 1.0], verifier.last_details
    wrong = two_sum.replace("[seen[target - x], i]", "[i, i]")
    got = verifier.score(prompts, [block(wrong)] * 2)
    assert [s.reward for s in got] == [0.0, 0.0]

    node = (
        "class Node:\n    def __init__(self, v):\n        self.val = v\n        self.next = None\n"
    )
    honest = node + "def f(x):\n    n = Node(x + 1)\n    n.next = Node(x)\n    return n\n"
    tests = [
        "x = 2\nassert f(x).val == 3",
        "assert f(2).next.val == 2",
        "assert f(2).next.next is None",
        "assert [f(i).val for i in range(2)] == [1, 2]",
        "assert list(map(f, [5]))[0].val == 6",
        "assert isinstance(f(1).val, int)",
    ]
    assert scores(verifier, tests, honest) == [1.0] * len(tests), verifier.last_details
    liar = node + "def f(x):\n    return Node(-1)\n"
    assert scores(verifier, tests[:2], liar) == [0.0, 0.0]


def test_lambda_and_keyword_arguments(verifier):
    code = "def f(g, x, k=0):\n    return g(x) + k\n"
    tests = ["assert f(lambda v: v * 2, 3) == 6", "assert f(lambda v: v, 1, k=2) == 3"]
    assert scores(verifier, tests, code) == [1.0, 1.0], verifier.last_details


def _requests(test: str, names: frozenset[str], answers: dict[str, object]) -> list[dict]:
    """Every request the judge makes for ``test``, answering each by its source."""
    t = compile_assert_test(test, names)
    results: dict[str, HoleResult] = {}
    sent: list[dict] = list(t.static)
    for _ in range(5):
        pending: dict[str, dict] = {}
        passed, _why = run_assert_test(t, results, pending)
        if passed is not None:
            return sent
        for key, req in pending.items():
            sent.append(req)
            value = answers.get(req["src"])
            results[key] = HoleResult(True, obj=True) if value is None else HoleResult(True, value)
    raise AssertionError("unresolved")


def test_expected_values_never_reach_the_sandbox():
    call = "(f)(*__srpo_0, **__srpo_1)"
    for test in [
        'assert f(2).startswith("EXPECTED")',
        'assert f(2).index("EXPECTED") == 0',
        'assert f(2)["EXPECTED"] == 1',
        'assert f(2).count("EXPECTED") == 1',
        'assert "EXPECTED" in f(2).split()',
    ]:
        value = {"EXPECTED": 1} if "[" in test and "==" in test else "EXPECTED"
        if ".index" in test or ".split" in test:
            value = "EXPECTED"
        sent = _requests(test, frozenset({"f"}), {call: value})
        assert sent and "EXPECTED" not in json.dumps(sent), (test, sent)


def test_program_values_and_objects_in_containers(verifier):
    code = (
        "LIMIT = 3\nTABLE = {'a': [1, 2]}\n"
        "class Node:\n    def __init__(self, v):\n        self.val = v\n"
        "def f(x):\n    return [Node(x), Node(x + 1)]\n"
    )
    tests = [
        "assert LIMIT == 3",
        "assert TABLE['a'][1] == 2",
        "assert f(1)[1].val == 2",
        "assert [n.val for n in [f(4)[0]]] == [4]",
        "try:\n    f(1)[5]\nexcept IndexError:\n    pass\nelse:\n    raise AssertionError",
    ]
    prompts = [Prompt(i, "code", "q", {"fn_name": "f", "tests": [t]}) for i, t in enumerate(tests)]
    got = verifier.score(prompts, [block(code)] * len(tests))
    assert [s.reward for s in got] == [1.0] * len(tests), verifier.last_details
    # a subscript of plain program data by an expected-looking key runs in the judge
    sent = _requests("assert TABLE['EXPECTED'] == 1", frozenset(), {"TABLE": {"EXPECTED": 1}})
    assert sent == [{"src": "TABLE", "env": {"$d": []}}]
