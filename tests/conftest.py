"""Shared fixtures: the shipped tiny example and run files built from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support.tiny import tiny_config


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a tiny run file (dict → YAML) into tmp_path and return its path."""

    def write(cfg: dict | None = None, name: str = "plugins.yaml", **overrides: object) -> Path:
        data = cfg if cfg is not None else tiny_config(tmp_path, **overrides)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write
