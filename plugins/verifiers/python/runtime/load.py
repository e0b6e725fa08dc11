"""Import the reward file and find its function; every failure becomes one located line."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

_MISSING = object()

#: Longest error message handed on (tracebacks can carry whole data dumps).
MAX_MESSAGE = 300


class LoadError(Exception):
    """The reward function cannot be used. ``option`` names the run-file option to fix
    (``"function"``), or is None when the message carries its own ``FILE:LINE``."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class UserFunction:
    """The reward function, the file it came from (for error locations), and whether it
    takes the ``meta`` keyword."""

    fn: Callable[..., Any]
    file: str
    wants_meta: bool


def one_line(text: str) -> str:
    """A message squeezed onto one bounded line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_MESSAGE else flat[: MAX_MESSAGE - 3] + "..."


def raised_at(tb: TracebackType | None, file: str) -> int | None:
    """The line of ``file`` nearest to where an exception was raised: the user wants to
    see their own line, not one deep inside a library they called."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == file:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def describe(exc: BaseException, file: str) -> str:
    """``rewards.py:12: KeyError: 'x'`` — where in the reward file, what was raised."""
    line = raised_at(exc.__traceback__, file)
    name = Path(file).name
    where = f"{name}:{line}" if line is not None else name
    return one_line(f"{where}: {type(exc).__name__}: {exc}")


def import_file(path: str) -> ModuleType:
    """Execute the reward file as a fresh module. Its directory is appended to
    ``sys.path`` (after the installed packages) so it can import helper files beside it."""
    digest = hashlib.sha1(path.encode()).hexdigest()[:8]
    name = f"srpo_reward_{Path(path).stem.replace('-', '_')}_{digest}"
    loader = importlib.machinery.SourceFileLoader(name, path)  # any file name, not just .py
    spec = importlib.util.spec_from_loader(name, loader, origin=path)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    folder = str(Path(path).parent)
    if folder not in sys.path:
        sys.path.append(folder)
    sys.modules[name] = module  # dataclasses and pickle look modules up here
    try:
        loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(name, None)
        where = f"{e.filename or path}:{e.lineno}" if e.lineno else (e.filename or path)
        raise LoadError(one_line(f"{where}: {type(e).__name__}: {e.msg}")) from None
    except (Exception, SystemExit) as e:
        sys.modules.pop(name, None)
        line = raised_at(e.__traceback__, path)
        where = f"{path}:{line}" if line is not None else path
        raise LoadError(one_line(f"{where}: importing it raised {type(e).__name__}: {e}")) from None
    return module


def defined_at(fn: Callable[..., Any], fallback: str) -> str:
    """``FILE:LINE`` of a function's ``def`` (or of a callable object's ``__call__``)."""
    call = type(fn).__call__ if not inspect.isroutine(fn) else fn
    code = getattr(fn, "__code__", None) or getattr(call, "__code__", None)
    if code is None:
        return fallback
    return f"{code.co_filename}:{code.co_firstlineno}"


def takes_meta(sig: inspect.Signature) -> bool:
    """Whether the function asks for ``meta``: a parameter of that name, or ``**kwargs``."""
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return True
        if p.name == "meta" and p.kind is not inspect.Parameter.POSITIONAL_ONLY:
            return True
    return False


def check_signature(fn: Callable[..., Any], name: str, file: str, batched: bool) -> bool:
    """Raise a ``LoadError`` at the ``def`` line unless ``fn(a, b, c)`` binds (plus
    ``meta=`` when it asks for it); return whether it asks for ``meta``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return False
    meta = takes_meta(sig)
    try:
        sig.bind(None, None, None, **({"meta": None} if meta else {}))
    except TypeError as e:
        args = "prompts, responses, references" if batched else "prompt, response, reference"
        if meta:
            args += ", meta=..."
        raise LoadError(
            one_line(f"{defined_at(fn, file)}: {name}{sig} cannot be called as {name}({args}): {e}")
        ) from None
    return meta


def find_function(module: ModuleType, name: str, file: str, batched: bool) -> UserFunction:
    """The module's ``name``, checked to be callable with the contract's arguments."""
    fn = getattr(module, name, _MISSING)
    if fn is _MISSING:
        own = sorted(
            k
            for k, v in vars(module).items()
            if inspect.isfunction(v) and v.__module__ == module.__name__ and not k.startswith("_")
        )
        hint = f" (its functions: {', '.join(own)})" if own else ""
        raise LoadError(one_line(f"{file} defines no {name!r}{hint}"), option="function")
    if not callable(fn):
        raise LoadError(
            f"{name!r} in {file} is {type(fn).__name__}, not a function", option="function"
        )
    return UserFunction(fn, file, check_signature(fn, name, file, batched))


def load_function(path: str, name: str, batched: bool) -> UserFunction:
    """Import ``path`` and return its checked reward function (``LoadError`` otherwise)."""
    return find_function(import_file(path), name, path, batched)
