"""The documentation cannot drift from the code: every run-file key and every plugin option
has a description, the generated reference lists every one of them, the site builds with
warnings as errors, and the README's links resolve."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hook():
    """docs/hooks/srpo_docs.py, the generator MkDocs runs (it is not a package module)."""
    spec = importlib.util.spec_from_file_location("srpo_docs", ROOT / "docs/hooks/srpo_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fields(model: type[BaseModel], prefix: str = ""):
    """Dotted keys of every field, nested models included — written here independently of
    the generator so that a field it skips is caught. ``dict[str, M]`` nests as ``DOMAIN.``,
    ``list[M]`` as ``[N].``."""
    for name, info in model.model_fields.items():
        key = prefix + name
        yield key, info
        todo = [("", info.annotation)]
        while todo:
            suffix, ann = todo.pop()
            origin, args = typing.get_origin(ann), typing.get_args(ann)
            if isinstance(ann, type) and issubclass(ann, BaseModel) and ann is not model:
                yield from _fields(ann, f"{key}.{suffix}")
            elif origin in (typing.Union, types.UnionType):
                todo += [(suffix, a) for a in args]
            elif origin is dict:
                todo.append((f"{suffix}DOMAIN.", args[1]))
            elif origin is list:
                todo.append((f"{suffix}[N].", args[0]))


def _first_party_plugins():
    from srpo import registry

    found = [p for p in registry.discover() if p.target.startswith("srpo_plugins.")]
    broken = [f"{p.role} {p.name}: {p.error}" for p in found if p.cls is None]
    assert not broken, broken
    return found


def test_every_entry_point_of_pyproject_is_documented():
    groups = re.findall(
        r'\[project\.entry-points\."(srpo\.\w+)"\]\n((?:\w+ = "[^"]+"\n)+)',
        (ROOT / "pyproject.toml").read_text(),
    )
    declared = {(g, line.split(" = ")[0]) for g, body in groups for line in body.splitlines()}
    from srpo.api import ENTRY_POINT_GROUPS

    found = {(ENTRY_POINT_GROUPS[p.role], p.name) for p in _first_party_plugins()}
    assert declared and declared <= found, sorted(declared - found)


def test_every_config_field_and_plugin_option_has_a_description():
    from srpo.config import RunConfig

    missing = [f"run file: {k}" for k, i in _fields(RunConfig) if not (i.description or "").strip()]
    for p in _first_party_plugins():
        missing += [
            f"{p.role} {p.name} ({p.target}): options.{k}"
            for k, i in _fields(p.cls.Options)
            if not (i.description or "").strip()
        ]
    assert not missing, "no Field(description=...):\n  " + "\n  ".join(missing)


def test_the_generated_reference_lists_every_field(hook):
    from srpo.config import RunConfig

    page = hook.reference_markdown()
    sections = re.split(r"^### ", page, flags=re.M)
    chunk = {s.split("\n", 1)[0].strip(): s for s in sections[1:]}
    absent = []
    for name in RunConfig.model_fields:
        text = chunk.get(f"`{name}`", "")
        keys = [k for k, _ in _fields(RunConfig) if k.split(".")[0] == name]
        absent += [k for k in keys if f"| `{k}` |" not in text]
    for p in _first_party_plugins():
        text = chunk.get(f"{p.role} `{p.name}`")
        assert text is not None, f"no section for {p.role} {p.name}"
        keys = [k for k, _ in _fields(p.cls.Options)]
        absent += [f"{p.role} {p.name}: {k}" for k in keys if f"| `{k}` |" not in text]
    assert not absent, absent


def test_readme_links_resolve_and_keep_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for cmd in (
        "./dev srpo run examples/tiny/plugins.yaml",
        "./dev python -m pytest",
        "./dev python -m pytest -m slow",
    ):
        assert cmd in readme, cmd
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        if not (ROOT / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert not broken, broken


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not re.search(r"^WARNING", proc.stderr, flags=re.M), proc.stderr[-4000:]
    site = tmp_path / "site"
    assert (site / "reference/index.html").exists()
    assert (site / "benchmarks/results/round2/tiny/efficiency.png").exists()
