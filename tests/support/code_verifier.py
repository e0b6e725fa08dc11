"""The code verifier as the tests build it: real sandboxes, two workers, short deadlines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from srpo_plugins.verifiers.code import CodeVerifier

from srpo.api import PluginContext


def make_verifier(**opts: Any) -> CodeVerifier:
    """A ``CodeVerifier`` with these options (deadlines default to 5 s per test, 20 s in all)."""
    opts.setdefault("test_timeout_s", 5.0)
    opts.setdefault("total_timeout_s", 20.0)
    ctx = PluginContext(run_dir=Path("."), seed=0, num_workers=2)
    return CodeVerifier(CodeVerifier.Options(**opts), ctx)


def block(code: str) -> str:
    """A response holding ``code`` in a fenced Python block, as a model writes it."""
    return f"```python\n{code}\n```\n"
