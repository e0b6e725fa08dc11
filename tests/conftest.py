"""Shared fixtures: the shipped tiny example and run files built from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

from tests.support.tiny import tiny_config

# Property tests draw the same examples on every run by default, so CI is reproducible and a
# red run means a change broke something, not that the search got lucky this time;
# SRPO_HYPOTHESIS_PROFILE=explore searches fresh examples (run it when touching the kernels).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("SRPO_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a tiny run file (dict → YAML) into tmp_path and return its path."""

    def write(cfg: dict | None = None, name: str = "plugins.yaml", **overrides: object) -> Path:
        data = cfg if cfg is not None else tiny_config(tmp_path, **overrides)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
