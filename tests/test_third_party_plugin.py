"""The example third-party package, installed for real, is discovered and trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.tiny import ROOT, tiny_config


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """pip-install examples/plugin-package into a private target dir (real dist-info)."""
    target = tmp_path_factory.mktemp("site")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(target),
        str(ROOT / "examples" / "plugin-package"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:  # no setuptools in this environment: let pip fetch it
        cmd.remove("--no-build-isolation")
        res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert list(target.glob("srpo_example_plugins-*.dist-info"))
    return target


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return env


def test_listed_with_distribution(installed_example):
    out = subprocess.run(
        [sys.executable, "-m", "srpo.cli", "plugins", "list"],
        env=_env(installed_example),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "last_number" in out.stdout and "srpo-example-plugins" in out.stdout
    assert "csv" in out.stdout


def test_trains_with_third_party_verifier_and_logger(installed_example, tmp_path):
    cfg = tiny_config(tmp_path)
    cfg["run"]["max_steps"] = 2
    cfg["verifiers"]["math"] = {"name": "last_number"}
    cfg["loggers"] = [{"name": "jsonl"}, {"name": "csv", "options": {"filename": "m.csv"}}]
    cfg["eval"]["max_prompts"] = 8
    path = tmp_path / "plugins.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run(
        [sys.executable, "-m", "srpo.cli", "run", str(path)],
        env=_env(installed_example),
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    run = Path(cfg["run"]["output_dir"])
    rows = (run / "m.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 3
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "step" for r in steps) == 2
