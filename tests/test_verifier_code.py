"""CodeVerifier: schemas, extraction, judging, partial credit, errors, remote backend."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import srpo_plugins
from srpo_plugins.verifiers.code import CodeVerifier, sandbox
from srpo_plugins.verifiers.code.extract import extract_code
from srpo_plugins.verifiers.code.harness import decode, encode
from srpo_plugins.verifiers.code.judge import ReferenceError_, values_match
from srpo_plugins.verifiers.code.judge_reference import parse_reference
from srpo_plugins.verifiers.code.sandbox import Job, Limits, make_backend

from srpo.api import PluginContext, PluginError, SrpoWarning
from srpo.types import Prompt


def make(**opts) -> CodeVerifier:
    opts.setdefault("test_timeout_s", 2.0)
    opts.setdefault("total_timeout_s", 10.0)
    ctx = PluginContext(run_dir=Path("."), seed=0, num_workers=2)
    return CodeVerifier(CodeVerifier.Options(**opts), ctx)


@pytest.fixture(scope="module")
def verifier():
    v = make()
    yield v
    v.close()


def P(ref) -> Prompt:
    return Prompt(id=0, domain="code", text="q", reference=ref)


def block(code: str) -> str:
    return f"Here you go:\n```python\n{code}\n```\nDone."


SQUARE = block("def f(x):\n    return x * x")
ASSERTS = {
    "fn_name": "f",
    "tests": [
        "assert f(2) == 4",
        "assert f(-3) == 9",
        "import math\nassert math.isclose(f(0.5), 0.25)",
        "assert abs(f(1.5) - 2.25) < 1e-9",
        "xs = [1, 2, 3]\nassert [f(x) for x in xs] == [1, 4, 9]",
        "assert sorted(f(i) for i in range(3)) == [0, 1, 4]",
        "try:\n    f('a')\nexcept TypeError:\n    pass\nelse:\n    raise AssertionError",
    ],
}


def test_codec_roundtrip():
    vals = [None, True, 3, -(10**5000), 1.5, float("inf"), "s", b"\x00", 1j, [1, (2, 3)]]
    vals += [{1: {"a": frozenset({1})}, (1, 2): {3}}]
    for v in vals:
        assert decode(encode(v)) == v
    with pytest.raises(TypeError):
        encode(object())


def test_extract():
    assert extract_code("```python\na=1\n```\ntext\n```py\nb=2\n```") == "b=2\n"
    assert extract_code("```\nc=3\n```") == "c=3\n"
    assert extract_code("```cpp\nint x;\n```") is None
    assert extract_code("```python\nx = 1\n")  # truncated final block
    assert extract_code("x = 1", "fenced") is None
    assert extract_code("x = 1", "fenced_or_bare") == "x = 1"
    assert extract_code("not python (", "fenced_or_bare") is None
    assert extract_code("anything", "bare") == "anything"


def test_reference_validation():
    with pytest.raises(ReferenceError_):
        parse_reference({"fn_name": "f"})
    with pytest.raises(ReferenceError_):
        parse_reference({"fn_name": "f", "inputs": [[1]], "outputs": []})
    with pytest.raises(ReferenceError_):
        parse_reference({"tests": ["assert f(1) =="]})
    spec = parse_reference('{"stdin_tests": [{"input": "1", "output": "1"}]}')
    assert spec.kind == "stdin" and spec.num_tests == 1
    assert values_match((1, 2.0000000001), [1, 2]) and not values_match(True, 1)


def test_assert_tests_pass(verifier):
    (s,) = verifier.score([P(ASSERTS)], [SQUARE])
    assert s.correct and s.reward == 1.0, verifier.last_details


def test_io_pairs_and_solution_class(verifier):
    ref = {"fn_name": "f", "inputs": [[2], [3], 4], "outputs": [4, 9, [16]]}
    cls = block("class Solution:\n    def f(self, x):\n        return x * x")
    ref2 = {"fn_name": "pair", "inputs": [[1, 2]], "outputs": [[1, 2]]}
    tup = block("def pair(a, b):\n    return (a, b)")
    s = verifier.score([P(ref), P(ref), P(ref2)], [SQUARE, cls, tup])
    assert [x.reward for x in s] == [1.0, 1.0, 1.0], verifier.last_details


def test_stdin_tests(verifier):
    ref = {
        "stdin_tests": [
            {"input": "1 2\n", "output": "3\n"},
            {"input": "10 -4", "output": "  6  \n\n"},
        ]
    }
    good = block("a, b = map(int, input().split())\nprint(a + b)")
    bad = block("a, b = map(int, input().split())\nprint(a - b)")
    crash = block("print(3)\nraise SystemExit(1)")
    s = verifier.score([P(ref)] * 3, [good, bad, crash])
    assert [x.reward for x in s] == [1.0, 0.0, 0.0]


def test_slow_but_within_limits(verifier):
    prog = block(
        "import time\ndef f(x):\n    t = time.time()\n"
        "    while time.time() - t < 0.6:\n        pass\n    return x * x"
    )
    (s,) = verifier.score([P({"fn_name": "f", "tests": ["assert f(3) == 9"]})], [prog])
    assert s.correct, verifier.last_details


def test_partial_credit():
    ref = {"fn_name": "f", "inputs": [[1], [2], [3], [4]], "outputs": [1, 4, 9, 16]}
    half = block("def f(x):\n    return x * x if x < 3 else 0")
    loops = block("def f(x):\n    while x > 2:\n        pass\n    return x * x")
    v = make(partial_credit=True, test_timeout_s=0.5)
    try:
        s = v.score([P(ref), P(ref), P(ref)], [half, loops, SQUARE])
        assert [x.reward for x in s] == [0.5, 0.5, 1.0], v.last_details
        assert [x.correct for x in s] == [False, False, True]
        assert s[1].breakdown["timeout"] == 1.0
    finally:
        v.close()
    v = make()
    try:
        assert v.score([P(ref)], [half])[0].reward == 0.0
    finally:
        v.close()


def test_no_code_and_bad_reference(verifier):
    s = verifier.score([P(ASSERTS), P({"nope": 1})], ["no code here", SQUARE])
    assert s[0].reward == 0 and s[0].breakdown["no_code"] == 1.0 and s[0].error is None
    assert s[1].reward == 0 and "bad reference" in (s[1].error or "")


def test_verifier_crash_is_a_score(monkeypatch):
    v = make()
    try:
        monkeypatch.setattr(v, "_run_calls", lambda *a: 1 / 0)
        (s,) = v.score([P(ASSERTS)], [SQUARE])
        assert s.reward == 0 and "ZeroDivisionError" in (s.error or "")
    finally:
        v.close()
    v = make(fail_fast=True)
    try:
        monkeypatch.setattr(v, "_run_calls", lambda *a: 1 / 0)
        with pytest.raises(PluginError, match="ZeroDivisionError") as info:
            v.score([P(ASSERTS)], [SQUARE])
        assert isinstance(info.value.__cause__, ZeroDivisionError)
    finally:
        v.close()


def test_parallel_batch_is_faster_than_serial(verifier):
    ref = {"fn_name": "f", "tests": ["assert f(2) == 4"]}
    sleepy = block("import time\ntime.sleep(1.0)\ndef f(x):\n    return x * x")
    t = time.monotonic()
    s = verifier.score([P(ref)] * 4, [sleepy] * 4)
    assert all(x.correct for x in s)
    # two at a time take ~2 s; one at a time could not finish under 4 s. The 1.5 s between
    # is room for sandbox start-up on a loaded 2-core CI machine, not a speed target.
    assert time.monotonic() - t < 4 * 1.0 - 0.5


def test_remote_backend_against_local_server():
    from srpo_plugins.verifiers.code.remote import serve

    server = serve(make_backend("auto", Limits(), sys.executable, 2, 1_500_050_000))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    v = make(backend="remote", remote_url=url, test_timeout_s=1.0)
    try:
        stdin_ref = {"stdin_tests": [{"input": "1 2\n", "output": "3\n"}]}
        add = block("a, b = map(int, input().split())\nprint(a + b)")
        fake = block("print('PASSED')\nimport os\nos._exit(0)")
        s = v.score([P(ASSERTS), P(stdin_ref), P(ASSERTS), P(stdin_ref)], [SQUARE, add, fake, fake])
        assert [x.reward for x in s] == [1.0, 1.0, 0.0, 0.0], v.last_details
    finally:
        v.close()
        server.shutdown()


VIEW = """
import os, socket
def view():
    forks = 0
    try:
        for _ in range(64):
            if os.fork() == 0:
                import time
                time.sleep(3)
                os._exit(0)
            forks += 1
    except OSError:
        pass
    return {
        "uid": os.getuid(),
        "root": sorted(os.listdir("/")),
        "ifaces": [n for _, n in socket.if_nameindex()],
        "env": sorted(os.environ),
        "forks": forks,
        "usr_writable": os.access("/usr", os.W_OK),
        "repo_visible": os.path.exists(REPO_PROBE),
    }
"""


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_sandbox_view():
    """What a program sees under bwrap: no host dirs, loopback only, clean env, NPROC."""
    backend = make_backend("bwrap", Limits(processes=8), sys.executable, 1, 1_500_060_000)
    try:
        view = f"REPO_PROBE = {str(Path(__file__).resolve().parents[1] / 'pyproject.toml')!r}\n"
        res = backend.run(Job("calls", view + VIEW, [{"src": "view()", "env": encode({})}]))
        frame = next(f for f in res.frames if f.get("i") == 0)
        got = decode(frame["value"])
    finally:
        backend.close()
    assert got["ifaces"] == ["lo"]
    # the interpreter's prefix is bound in (under the checkout when its venv lives there),
    # nothing else of the host: not the project's files, not /home
    assert not got["repo_visible"] and "home" not in got["root"]
    if not Path(sys.prefix).resolve().is_relative_to("/work"):
        assert "work" not in got["root"]
    assert not [k for k in got["env"] if "SECRET" in k or k.startswith("SRPO")]
    assert not got["usr_writable"]
    if os.geteuid() == 0:
        assert got["uid"] != 0
        assert got["forks"] < 8  # RLIMIT_NPROC holds for the slot uid


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_interpreter_under_host_tmp_stays_visible(tmp_path):
    """A venv under the host's /tmp (as CI makes) is bound over the sandbox's own /tmp."""
    import subprocess
    import tempfile
    import venv

    env_dir = Path(tempfile.mkdtemp(dir="/tmp", prefix="srpo-venv-"))
    try:
        venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
        probe = (
            "import sys; from srpo_plugins.verifiers.code.sandbox import make_backend, Limits;"
            "make_backend('bwrap', Limits(processes=8), sys.executable, 1, 1_500_060_000);"
            "print('bwrap ok')"
        )
        shim = tmp_path / "shim"
        shim.mkdir()
        (shim / "srpo_plugins").symlink_to(Path(srpo_plugins.__file__).parent)
        paths = [str(shim), *[p for p in sys.path if p]]
        res = subprocess.run(
            [str(env_dir / "bin" / "python"), "-c", probe],
            env={"PYTHONPATH": os.pathsep.join(paths), "PATH": os.environ.get("PATH", "")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "bwrap ok" in res.stdout, res.stderr[-1500:]
    finally:
        shutil.rmtree(env_dir, ignore_errors=True)


def test_rlimit_fallback_warns_what_it_lacks():
    with pytest.warns(SrpoWarning, match="bubblewrap unavailable") as rec:
        backend = make_backend("rlimit", Limits(), sys.executable, 1, 1_500_070_000)
    backend.close()
    assert backend.name == "rlimit"
    assert "NO network isolation" in str(rec[0].message)


def test_auto_falls_back_to_rlimit_with_a_warning(monkeypatch):
    monkeypatch.setattr(sandbox, "probe_bwrap", lambda *a: "bwrap not found on PATH")
    with pytest.warns(SrpoWarning) as rec:
        backend = make_backend("auto", Limits(), sys.executable, 1, 1_500_070_000)
    backend.close()
    assert backend.name == "rlimit"
    assert [w for w in rec if "bwrap not found on PATH" in str(w.message)]
    with pytest.raises(RuntimeError, match="bwrap not found on PATH"):
        make_backend("bwrap", Limits(), sys.executable, 1, 1_500_070_000)
