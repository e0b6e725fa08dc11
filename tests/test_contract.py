"""The plugin contract and what the kernel may assume of roles (issue: one contract, a
kernel that only sequences)."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import torch

from srpo.api import (
    PluginContext,
    PluginError,
    PluginOptions,
    Prompt,
    RolloutBatch,
    Sampler,
    SrpoWarning,
    warn,
)
from tests.support.batches import make_batch

ROOT = Path(__file__).resolve().parents[1]


def _srpo_imports(path: Path) -> list[str]:
    mods = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.append(node.module)
        elif isinstance(node, ast.Import):
            mods += [a.name for a in node.names]
    return [m for m in mods if m == "srpo" or m.startswith("srpo.")]


@pytest.mark.parametrize("tree", ["plugins", "examples/plugin-package"])
def test_plugins_import_only_the_contract(tree):
    """Everything a plugin may touch is in srpo.api: first-party plugins and the
    third-party example import nothing else of srpo (least of all srpo.kernel)."""
    offenders = {
        str(p.relative_to(ROOT)): bad
        for p in sorted((ROOT / tree).rglob("*.py"))
        if (bad := [m for m in _srpo_imports(p) if m != "srpo.api"])
    }
    assert offenders == {}


def test_warn_is_one_channel_rendered_as_one_line(capsys):
    from srpo.cli import _warnings_as_lines

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with _warnings_as_lines():
            warn("the data looks too easy")
    assert capsys.readouterr().err == "srpo: warning: the data looks too easy\n"
    with pytest.warns(SrpoWarning, match="too easy"):
        warn("too easy")


def test_error_hierarchy_and_exit_codes():
    from srpo.errors import ConfigError, DataError, PluginStartError, SrpoError
    from srpo.history import HistoryError
    from srpo.kernel.checkpoint import CheckpointError
    from srpo.report import ReportError

    for cls in (ConfigError, DataError, CheckpointError, HistoryError, ReportError):
        assert issubclass(cls, SrpoError) and cls.exit_code == 2
    assert PluginError.exit_code == 1 and PluginStartError.exit_code == 2
    assert issubclass(PluginStartError, PluginError)


class _Opts(PluginOptions):
    temperature: float = 1.0
    max_new_tokens: int = 8


class _Recorder(Sampler):
    Options = _Opts

    def generate(self, prompts, n, *, greedy=False, seeds=None):  # pragma: no cover - not called
        raise NotImplementedError


def test_plugin_override_is_validated_against_the_run_file_options(tmp_path):
    s = _Recorder(_Opts(max_new_tokens=16), PluginContext(run_dir=tmp_path, seed=0))
    s.override({"temperature": 0.5})
    assert (s.options.temperature, s.options.max_new_tokens) == (0.5, 16)
    s.override({})  # back to the run file's values
    assert (s.options.temperature, s.options.max_new_tokens) == (1.0, 16)
    with pytest.raises(PluginError, match=r"^sampler\.options\.nope: Extra inputs"):
        s.override({"nope": 1})
    with pytest.raises(PluginError, match=r"sampler\.options\.max_new_tokens: Input should"):
        s.override({"max_new_tokens": "many"})
    assert s.options.max_new_tokens == 16  # a refused override changes nothing


def test_rollout_batch_carries_its_temperature():
    p = [Prompt(1, "math", "q", "1"), Prompt(2, "math", "r", "2")]
    b = make_batch(p, [0, 0, 1, 1], ["a", "b", "c", "d"], temperature=0.6)
    assert b.select_groups(torch.tensor([False, True])).temperature == 0.6
    assert RolloutBatch.concat([b, b], 0).temperature == 0.6
    other = RolloutBatch(**{**vars(b), "temperature": 1.0})
    with pytest.raises(ValueError, match="temperatures"):
        RolloutBatch.concat([b, other], 0)


def test_left_pad():
    from srpo.api import left_pad

    ids, mask = left_pad([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
