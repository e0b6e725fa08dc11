"""Plugins that fail on purpose, steered by environment variables (so a resumed run, with
the same run file, does not fail again). Registered through a fake distribution."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field
from srpo_plugins.samplers.hf import HFSampler
from srpo_plugins.verifiers.math import MathVerifier

from srpo.api import Logger, OptionError, PluginOptions


def _at(name: str) -> int:
    return int(os.environ.get(name, "-1"))


class FlakySampler(HFSampler):
    """The hf sampler, raising at training generation number ``FLAKY_SAMPLER_FAIL_AT`` (in a
    data-parallel job only on rank ``FLAKY_SAMPLER_RANK``, when that is set)."""

    def __init__(self, options: Any, context: Any) -> None:
        super().__init__(options, context)
        self.calls = 0

    def generate(self, prompts, n, *, greedy=False, seeds=None):  # type: ignore[no-untyped-def]
        if not greedy:
            self.calls += 1
            rank = os.environ.get("FLAKY_SAMPLER_RANK")
            mine = rank is None or rank == os.environ.get("RANK", "0")
            if self.calls == _at("FLAKY_SAMPLER_FAIL_AT") and mine:
                raise RuntimeError("inference server went away")
        return super().generate(prompts, n, greedy=greedy, seeds=seeds)


class FlakyLogger(Logger):
    """Raises on the StepEnd of step ``FLAKY_LOGGER_FAIL_AT``."""

    def on_event(self, event: Any) -> None:
        if type(event).__name__ == "StepEnd" and event.step == _at("FLAKY_LOGGER_FAIL_AT"):
            raise OSError("disk full")


class FlakyVerifier(MathVerifier):
    """The math verifier, raising on its scoring call number ``FLAKY_VERIFIER_FAIL_AT``."""

    def __init__(self, options: Any, context: Any) -> None:
        super().__init__(options, context)
        self.calls = 0

    def score(self, prompts, responses):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == _at("FLAKY_VERIFIER_FAIL_AT"):
            raise ValueError("cannot parse")
        return super().score(prompts, responses)


class BrokenInit(Logger):
    """Raises in its constructor (a bad-input case: exit 2, nothing written)."""

    def __init__(self, options: Any, context: Any) -> None:
        raise RuntimeError("cannot reach the tracking server")

    def on_event(self, event: Any) -> None:  # pragma: no cover
        pass


class PickyLogger(Logger):
    """Its preflight wants ``options.needs.file`` to exist (relative to the run file)."""

    class Options(PluginOptions):
        needs: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def preflight(cls, options: Any, base_dir: Path) -> None:
        name = options.needs.get("file", "")
        if not (base_dir / name).is_file():
            raise OptionError("needs.file", f"{name!r}: no such file beside the run file")

    def on_event(self, event: Any) -> None:
        pass


class BuggyPreflight(Logger):
    """A plugin bug in preflight (not a user error): reported with the plugin's name."""

    @classmethod
    def preflight(cls, options: Any, base_dir: Path) -> None:
        raise KeyError("oops")

    def on_event(self, event: Any) -> None:  # pragma: no cover
        pass


ENTRY_POINTS = """\
[srpo.samplers]
flaky = flaky_plugins:FlakySampler
[srpo.verifiers]
flaky = flaky_plugins:FlakyVerifier
[srpo.loggers]
flaky = flaky_plugins:FlakyLogger
broken_init = flaky_plugins:BrokenInit
picky = flaky_plugins:PickyLogger
buggy_preflight = flaky_plugins:BuggyPreflight
broken_import = broken_import_mod:Whatever
"""

BROKEN_IMPORT = "import not_an_installed_module_xyz  # noqa: F401\n"


def make_distribution(root: Path) -> Path:
    """A dist-info directory (entry_points.txt) + the modules, importable from ``root``."""
    import shutil

    dist = root / "flaky_srpo_plugins-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: flaky-srpo-plugins\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    shutil.copy(__file__, root / "flaky_plugins.py")
    (root / "broken_import_mod.py").write_text(BROKEN_IMPORT)
    return root
