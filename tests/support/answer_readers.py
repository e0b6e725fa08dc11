"""Programs that never solve their task: they look for the test and return its answers.

Each reader defines the function(s) under test as ``lookup(name, args)``: it searches what
its process can reach (stack frames and their locals, code objects, their constants and
bytecode, ``gc``, ``sys.modules``, the harness's own globals, files, ``/proc/self``) for a
call of ``name`` (or HumanEval's ``candidate``) with these arguments compared with an
expected value, and returns that value. Run where the test is reachable (``reachable``,
in-process) they pass; in the verifier's sandbox they must score 0.

``BYTECODE`` is a real symbolic executor of CPython bytecode: it follows constants,
list/tuple/set/dict builds, unary minus and binary arithmetic, the call of the function
under test and the ``==`` (or ``abs(... - v) < tol``) it is compared by, through every
code object reachable from the stack and from ``gc``.
"""

from __future__ import annotations

_COMMON = r'''
import ast as _ast, sys as _sys, gc as _gc, dis as _dis, types as _types, operator as _op

_ANSWERS = {}

def _learn(key, args, value):
    try:
        _ANSWERS.setdefault((key, repr(args)), value)
    except Exception:
        pass

def _from_source(src):
    try:
        tree = _ast.parse(src)
    except Exception:
        return
    for node in _ast.walk(tree):
        pairs = []
        if isinstance(node, _ast.Compare) and len(node.ops) == 1:
            left, right = node.left, node.comparators[0]
            if isinstance(node.ops[0], _ast.Eq):
                pairs += [(left, right), (right, left)]
            elif isinstance(node.ops[0], _ast.Lt) and isinstance(left, _ast.Call):
                # abs(f(x) - v) < tol
                if getattr(left.func, "id", "") == "abs" and left.args:
                    inner = left.args[0]
                    if isinstance(inner, _ast.BinOp) and isinstance(inner.op, _ast.Sub):
                        pairs.append((inner.left, inner.right))
        elif isinstance(node, _ast.Assert) and isinstance(node.test, _ast.Call):
            pairs.append((node.test, _ast.Constant(True)))
        elif isinstance(node, _ast.Assert) and isinstance(node.test, _ast.UnaryOp):
            if isinstance(node.test.op, _ast.Not):
                pairs.append((node.test.operand, _ast.Constant(False)))
        for call, want in pairs:
            if isinstance(call, _ast.Call) and isinstance(call.func, _ast.Name):
                try:
                    args = tuple(_ast.literal_eval(a) for a in call.args)
                    value = _ast.literal_eval(want)
                except Exception:
                    continue
                _learn(call.func.id, args, value)

_BIN = {"+": _op.add, "-": _op.sub, "*": _op.mul, "/": _op.truediv, "//": _op.floordiv,
        "%": _op.mod, "**": _op.pow}

class _Call:
    def __init__(self, key, args):
        self.key, self.args = key, args

class _Fn:
    def __init__(self, key):
        self.key = key

_UNKNOWN = object()

def _from_code(code, seen):
    """Symbolically execute ``code`` straight through, learning f(args) == value."""
    if id(code) in seen:
        return
    seen.add(id(code))
    for c in code.co_consts:
        if isinstance(c, _types.CodeType):
            _from_code(c, seen)
    stack = []
    def pop(n=1):
        out = []
        for _ in range(n):
            out.append(stack.pop() if stack else _UNKNOWN)
        return out[::-1]
    try:
        instrs = list(_dis.get_instructions(code))
    except Exception:
        return
    for ins in instrs:
        op, arg = ins.opname, ins.arg
        try:
            if op == "LOAD_CONST":
                stack.append(ins.argval)
            elif op in ("LOAD_FAST", "LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF"):
                name = ins.argval
                stack.append(_Fn(name))
            elif op == "PUSH_NULL":
                pass
            elif op in ("BUILD_LIST", "BUILD_TUPLE", "BUILD_SET"):
                items = pop(arg)
                kind = {"BUILD_LIST": list, "BUILD_TUPLE": tuple, "BUILD_SET": set}[op]
                stack.append(kind(items) if _UNKNOWN not in items else _UNKNOWN)
            elif op in ("LIST_EXTEND", "SET_UPDATE"):
                (x,) = pop()
                if stack and isinstance(stack[-1], (list, set)) and x is not _UNKNOWN:
                    stack[-1] = type(stack[-1])(list(stack[-1]) + list(x))
            elif op == "LIST_TO_TUPLE":
                (x,) = pop()
                stack.append(tuple(x) if x is not _UNKNOWN else _UNKNOWN)
            elif op == "BUILD_MAP":
                items = pop(2 * arg)
                stack.append(dict(zip(items[::2], items[1::2])))
            elif op == "BUILD_CONST_KEY_MAP":
                (keys,) = pop()
                vals = pop(arg)
                stack.append(dict(zip(keys, vals)) if keys is not _UNKNOWN else _UNKNOWN)
            elif op == "UNARY_NEGATIVE":
                (x,) = pop()
                stack.append(-x if isinstance(x, (int, float)) else _UNKNOWN)
            elif op == "BINARY_OP":
                a, b = pop(2)
                fn = _BIN.get(ins.argrepr.rstrip("="))
                if isinstance(a, _Call) and ins.argrepr == "-":
                    stack.append(("sub", a, b))
                elif fn and _UNKNOWN not in (a, b) and not isinstance(a, (_Fn, _Call, tuple)) or (
                    fn and isinstance(a, tuple) and not isinstance(b, (_Fn, _Call))):
                    stack.append(fn(a, b))
                else:
                    stack.append(_UNKNOWN)
            elif op in ("PRECALL", "KW_NAMES", "NOP", "RESUME", "CACHE", "EXTENDED_ARG"):
                pass
            elif op in ("CALL", "CALL_FUNCTION"):
                args = pop(arg)
                (fn,) = pop()
                if isinstance(fn, _Fn) and fn.key == "abs" and len(args) == 1:
                    stack.append(("abs", args[0]))
                elif isinstance(fn, _Fn) and _UNKNOWN not in args and not any(
                        isinstance(a, (_Fn, _Call)) for a in args):
                    stack.append(_Call(fn.key, tuple(args)))
                else:
                    stack.append(_UNKNOWN)
            elif op == "COMPARE_OP":
                a, b = pop(2)
                if ins.argval == "==":
                    for call, want in ((a, b), (b, a)):
                        if isinstance(call, _Call) and not isinstance(want, (_Call, _Fn)):
                            if want is not _UNKNOWN:
                                _learn(call.key, call.args, want)
                elif ins.argval == "<" and isinstance(a, tuple) and a[0] == "abs":
                    inner = a[1]
                    if isinstance(inner, tuple) and inner[0] == "sub":
                        _learn(inner[1].key, inner[1].args, inner[2])
                stack.append(_UNKNOWN)
            elif op.startswith("POP_JUMP") or op == "POP_TOP":
                (x,) = pop()
                if isinstance(x, _Call) and op.startswith("POP_JUMP"):
                    _learn(x.key, x.args, "TRUE" in op or "FALSE" not in op)
            elif op == "UNARY_NOT":
                (x,) = pop()
                if isinstance(x, _Call):
                    _learn(x.key, x.args, False)
                stack.append(_UNKNOWN)
            elif op in ("RETURN_VALUE", "RAISE_VARARGS", "LOAD_ASSERTION_ERROR"):
                stack.clear()
            else:
                stack.clear()
        except Exception:
            stack.clear()

def lookup(name, args):
    for key in (name, "candidate"):
        try:
            k = (key, repr(tuple(args)))
        except Exception:
            return None
        if k in _ANSWERS:
            return _ANSWERS[k]
    return None

def _walk_values(v, depth, visit):
    if depth > 6:
        return
    if isinstance(v, str):
        if "assert" in v or "==" in v:
            visit(v)
    elif isinstance(v, _types.CodeType):
        _from_code(v, set())
    elif isinstance(v, _types.FunctionType):
        _from_code(v.__code__, set())
    elif isinstance(v, dict):
        for x in list(v.values())[:5000]:
            _walk_values(x, depth + 1, visit)
    elif isinstance(v, (list, tuple)):
        for x in list(v)[:5000]:
            _walk_values(x, depth + 1, visit)
'''

_DEFINE = """
def {name}(*args, **kwargs):
    _search()
    return lookup({name!r}, args)
"""

READERS: dict[str, str] = {
    # symbolic execution of every code object on the stack above the call
    "bytecode_stack": r"""
def _search():
    f = _sys._getframe(1)
    seen = set()
    while f is not None:
        _from_code(f.f_code, seen)
        f = f.f_back
""",
    # the same on every code object and function the garbage collector knows
    "bytecode_gc": r"""
def _search():
    seen = set()
    for o in _gc.get_objects():
        if isinstance(o, _types.FunctionType):
            _from_code(o.__code__, seen)
        elif isinstance(o, _types.CodeType):
            _from_code(o, seen)
""",
    # sources and data in every frame's locals and globals (the harness's message too)
    "frame_locals": r"""
def _search():
    f = _sys._getframe(1)
    while f is not None:
        for ns in (f.f_locals, f.f_globals):
            _walk_values(dict(ns), 0, _from_source)
        f = f.f_back
""",
    # strings and code in every container the garbage collector tracks
    "gc_containers": r"""
def _search():
    for o in _gc.get_objects():
        if isinstance(o, (dict, list, tuple)):
            _walk_values(o, 5, _from_source)
""",
    # every module's namespace, the harness (``__main__``) included
    "sys_modules": r"""
def _search():
    for m in list(_sys.modules.values()):
        _walk_values(dict(getattr(m, "__dict__", {})), 0, _from_source)
""",
    # files the sandbox can see, and its own /proc entries
    "files_and_proc": r"""
import os as _os
def _search():
    paths = ["/proc/self/cmdline", "/proc/self/environ"]
    for d in (".", "/sandbox", "/tmp", "/", _os.path.expanduser("~")):
        try:
            paths += [_os.path.join(d, n) for n in _os.listdir(d)]
        except OSError:
            pass
    try:
        paths += ["/proc/self/fd/" + n for n in _os.listdir("/proc/self/fd")]
    except OSError:
        pass
    for p in paths:
        try:
            if _os.path.isfile(p) or p.startswith("/proc/self/"):
                with open(p, "rb") as fh:
                    data = fh.read(1 << 20)
                text = data.replace(b"\0", b"\n").decode("utf-8", "replace")
                for part in [text] + text.split("\n"):
                    _from_source(part)
        except Exception:
            pass
""",
    # the process's own memory: whatever bytes of a test any buffer ever held
    "proc_self_mem": r"""
import re as _re
def _search():
    try:
        maps = open("/proc/self/maps").read().splitlines()
        mem = open("/proc/self/mem", "rb", 0)
    except OSError:
        return
    pat = _re.compile(rb"assert [^\n\x00]{1,400}")
    for line in maps:
        parts = line.split()
        if len(parts) < 2 or "r" not in parts[1]:
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if hi - lo > (64 << 20):
            continue
        try:
            mem.seek(lo)
            chunk = mem.read(hi - lo)
        except (OSError, OverflowError, ValueError):
            continue
        for m in pat.finditer(chunk):
            _from_source(m.group().decode("utf-8", "replace").replace("\\n", "\n").strip())
""",
}

_ONCE = """
_searched = []
_real_search = _search
def _search():
    if not _searched:
        _searched.append(1)
        _real_search()
"""


def reader(kind: str, names: list[str], once: bool = False) -> str:
    """The program of reader ``kind`` defining each of ``names``; ``once``: search at the
    first call only (fast enough for a whole dataset)."""
    src = _COMMON + READERS[kind] + (_ONCE if once else "")
    return src + "".join(_DEFINE.format(name=n) for n in names)


def reachable(program: str, test: str, entry: str) -> bool:
    """Run a HumanEval-style ``check(entry)`` in this process, the test in reach of the
    program as it was in the sandbox before: True when the reader passes it (positive
    control: a reader that cannot read a reachable test would prove nothing)."""
    g: dict[str, object] = {"__name__": "solution"}
    exec(compile(program, "solution.py", "exec"), g)
    ns: dict[str, object] = {"__name__": "__test__"}
    exec(compile(test, "<test>", "exec"), ns)
    try:
        ns["check"](g[entry])  # type: ignore[operator]
    except AssertionError:
        return False
    return True
