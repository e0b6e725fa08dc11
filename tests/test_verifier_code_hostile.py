"""Hostile programs cannot stall the code verifier's trusted side (issue #14, points 1, 7).

One program per class of attack on the judge: deep nesting, huge collections, equal-hash
sets and dicts, huge integers, huge strings, many frames, forged frames. Each must score 0,
cost at most its budget (+ slack) of wall time in ``score()``, and never be a verifier
error (``fail_fast`` on, so a verifier error would raise). Then: after a fork bomb,
``score()`` returns only once no process of the sample is left.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
from srpo_plugins.verifiers.code import CodeVerifier
from srpo_plugins.verifiers.code.values import BadValue, decode_value

from srpo.api import PluginContext
from srpo.types import Prompt

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing")

BUDGET_S = 5.0
GRACE_S = 1.0
SLACK_S = 4.0  # sandbox start-up, reaping, a loaded CI machine

# writes a forged result frame for request 0 on every descriptor the harness might use
_FORGE = (
    "import os, struct\n"
    "def forge(body):\n"
    "    data = struct.pack('>I', len(body)) + body\n"
    "    for fd in range(3, 64):\n"
    "        try:\n"
    "            os.write(fd, data)\n"
    "        except OSError:\n"
    "            pass\n"
)
_COLLIDE = "P = (1 << 61) - 1  # ints k * P all hash to 0\n"

HOSTILE = {
    "deep_frame": _FORGE + "def f(x):\n"
    "    forge(b'{\"i\": 0, \"ok\": true, \"value\": ' + b'[' * 100000 + b']' * 100000 + b'}')\n"
    "    return 4\n",
    "deep_value_frame": _FORGE + "def f(x):\n"
    "    forge(b'{\"i\": 0, \"ok\": true, \"value\": ' + b'[' * 900 + b']' * 900 + b'}')\n"
    "    return 4\n",
    "many_frames": _FORGE + "def f(x):\n"
    "    for _ in range(200000):\n"
    "        forge(b'{\"i\": 5}')\n"
    "    return 4\n",
    "long_int_literal": _FORGE + "def f(x):\n"
    "    forge(b'{\"i\": 0, \"ok\": true, \"value\": ' + b'7' * 4_000_000 + b'}')\n"
    "    return 4\n",
    "huge_list": "def f(x):\n    return list(range(4_000_000))\n",
    "many_elements": "def f(x):\n    return [0] * 2_500_000\n",
    "huge_string": "def f(x):\n    return 'a' * 15_000_000\n",
    "huge_int": "def f(x):\n    return 1 << 60_000_000\n",
    "set_equal_hash": _COLLIDE + "class S(set):\n"
    "    def __iter__(self):\n"
    "        return iter([k * P for k in range(100000)])\n"
    "def f(x):\n    return S()\n",
    "dict_equal_hash": _COLLIDE + "def f(x):\n    return {k * P: 0 for k in range(1, 3000)}\n",
    "list_equal_hash": _COLLIDE + "def f(x):\n    return [k * P for k in range(100000)]\n",
    "tuple_equal_hash": _COLLIDE
    + "def f(x):\n    return frozenset((k * P, 0) for k in range(1, 3000))\n",
    # caps cannot foresee every test: this one is cut by the judge's time budget
    "huge_power": "def f(x):\n    return 10**9 if x == 3 else 3\n",
}
TESTS = [
    "assert f(2) == 4",
    "assert f(2) ** 2 == 16",
    "assert set(f(2)) == {4} or True and f(2) == 4",
    "assert f(2) ** f(3) == 16",
]


def make(**opts) -> CodeVerifier:
    opts = {
        "test_timeout_s": 3.0,
        "total_timeout_s": BUDGET_S,
        "judge_grace_s": GRACE_S,
        "fail_fast": True,
        "max_workers": 1,
        **opts,
    }
    ctx = PluginContext(run_dir=Path("."), seed=0, num_workers=1)
    return CodeVerifier(CodeVerifier.Options(**opts), ctx)


@pytest.fixture(scope="module")
def verifier():
    v = make()
    yield v
    v.close()


def P(tests: list[str]) -> Prompt:
    return Prompt(id=0, domain="code", text="q", reference={"fn_name": "f", "tests": tests})


def block(code: str) -> str:
    return f"```python\n{code}\n```"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_value_costs_its_budget_and_scores_zero(verifier, name):
    t0 = time.monotonic()
    (s,) = verifier.score([P(TESTS)], [block(HOSTILE[name])])
    wall = time.monotonic() - t0
    print(f"{name}: {wall:.2f} s (budget {BUDGET_S} + grace {GRACE_S})")
    assert s.reward == 0.0 and not s.correct, verifier.last_details
    assert s.error is None, s.error
    assert wall <= BUDGET_S + GRACE_S + SLACK_S, (wall, verifier.last_details)


def test_verifier_still_passes_correct_programs(verifier):
    ok = "def f(x):\n    return 3 if x == 3 else x * x\n"
    tests = ["assert f(2) == 4", "assert set([f(2)]) == {4}", "assert f(2) ** f(3) == 64"]
    (s,) = verifier.score([P(tests)], [block(ok)])
    assert s.correct, verifier.last_details
    big = "def f(x):\n    return [{i: (i, frozenset({i}))} for i in range(1000)], 3 ** 5000\n"
    (s,) = verifier.score([P(["assert f(0)[1] == 3 ** 5000"])], [block(big)])
    assert s.correct, verifier.last_details


def test_io_judge_is_bounded_too(verifier):
    ref = {"fn_name": "f", "inputs": [[2]], "outputs": [4]}
    prompt = Prompt(id=1, domain="code", text="q", reference=ref)
    for name in ("set_equal_hash", "huge_int", "deep_frame"):
        t0 = time.monotonic()
        (s,) = verifier.score([prompt], [block(HOSTILE[name])])
        assert s.reward == 0 and s.error is None, (name, verifier.last_details)
        assert time.monotonic() - t0 <= BUDGET_S + GRACE_S + SLACK_S


def test_decoder_caps():
    for enc in (
        [[[]]] * 3,
        {"$s": [1, 2, 3]},
        {"$d": [[{"$t": [1, 2]}, "x"]]},
        {"$i": hex(1 << 5000)},
    ):
        decode_value(enc)
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    p = (1 << 61) - 1
    for bad in (
        deep,
        {"$s": [k * p for k in range(100)]},
        {"$i": "f" * 400_000},
        {"$q": 1},
        {"$f": "1" * 1000},
    ):
        with pytest.raises(BadValue):
            decode_value(bad)


def _procs_with(marker: str) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(d))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("when", ["import", "call"])
def test_no_process_outlives_score(verifier, when):
    marker = f"srpo-bomb-{uuid.uuid4().hex}"
    bomb = (
        "import os, sys, time\n"
        "def bomb():\n"
        "    for _ in range(12):\n"
        "        try:\n"
        "            if os.fork() == 0:\n"
        f"                os.execv(sys.executable, [sys.executable, '-c',"
        f" 'import os, time\\nwhile True:\\n    os.fork() if os.getpid() % 2 else time.sleep(1)',"
        f" {marker!r}])\n"
        "        except OSError:\n"
        "            pass\n"
        "    time.sleep(60)\n"
    )
    bomb += "bomb()\n" if when == "import" else "def f(x):\n    bomb()\n"
    (s,) = verifier.score([P(["assert f(2) == 4"])], [block(bomb)])
    left = _procs_with(marker)
    assert s.reward == 0 and s.error is None
    assert not left, f"{len(left)} sandbox processes outlived score()"
