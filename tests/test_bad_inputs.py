"""A corpus of broken run files and datasets (tests/bad_inputs/): each one fails with a
single clear line naming file/line/key or record, exit code 2, and writes nothing: an
existing run directory is left byte-for-byte untouched."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from srpo.cli import main
from tests.support import faults as harness
from tests.support.flaky_plugins import make_distribution

BAD = Path(__file__).parent / "bad_inputs"
CASES = sorted((BAD / "runs").glob("*.yaml"))


def header(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(": ")
        out[key] = value
    return out


def prepare(case: Path, tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    text = case.read_text(encoding="utf-8")
    out = tmp_path / "out"
    for k, v in {
        "@MODEL@": harness.MODEL,
        "@TRAIN@": harness.TINY / "data" / "math_train.jsonl",
        "@TEST@": harness.TINY / "data" / "math_test.jsonl",
        "@BAD@": BAD,
        "@OUT@": out,
    }.items():
        text = text.replace(k, str(v))
    path = tmp_path / case.name
    path.write_text(text, encoding="utf-8")
    meta = header(text)
    setup = meta.get("setup")
    if setup == "other_run":
        out.mkdir()
        (out / "srpo-run.json").write_text(json.dumps({"srpo": 1, "domains": ["math"]}) + "\n")
        (out / "metrics.jsonl").write_text('{"kind": "step", "step": 0}\n')
        (out / "history").mkdir()
        (out / "history" / "shard-00000.manifest.json").write_text("{}")
    elif setup == "foreign_dir":
        out.mkdir()
        (out / "thesis.tex").write_text("do not delete")
    elif setup == "file":
        out.write_text("a file, not a directory")
    return path, meta, out


def test_corpus_is_large_enough():
    data = list((BAD / "data").glob("*.jsonl"))
    assert len(CASES) >= 30 and len(data) >= 10, (len(CASES), len(data))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_bad_input_is_one_located_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    path, meta, out = prepare(case, tmp_path)
    if "constructor" in case.stem and not (harness.MODEL / "config.json").exists():
        pytest.skip("tiny model not built")
    before = harness.tree_hash(tmp_path)
    args = shlex.split(meta.get("args", ""))
    capsys.readouterr()
    code = main(["run", str(path), *args])
    err = capsys.readouterr().err.strip()
    lines = [x for x in err.splitlines() if x.startswith("srpo:")]
    assert code == 2, err
    assert len(lines) == 1 and err.endswith(lines[0]), err
    assert "Traceback" not in err
    assert meta["expect"] in lines[0], lines[0]
    if meta.get("line", "-") != "-":
        assert f"{path.name}:{meta['line']}: " in lines[0], lines[0]
    assert harness.tree_hash(tmp_path) == before  # nothing written, nothing changed
    if "setup" not in meta:
        assert not out.exists()


def test_broken_entry_point_plugins_in_a_subprocess(tmp_path):
    """An installed plugin that fails to import, or raises in its constructor: exit 2, one
    line naming the plugin and its distribution, nothing written."""
    if not (harness.MODEL / "config.json").exists():
        pytest.skip("tiny model not built")
    dist = make_distribution(tmp_path / "dist")
    env = harness.env(PYTHONPATH=f"{dist}")
    for name, expect in [
        (
            "broken_import",
            "loggers.0.name: logger plugin 'broken_import' (broken_import_mod:Whatever, from "
            "flaky-srpo-plugins) is broken: import failed: ModuleNotFoundError",
        ),
        (
            "broken_init",
            "logger plugin flaky_plugins.BrokenInit failed to start: RuntimeError: cannot "
            "reach the tracking server",
        ),
    ]:
        out = tmp_path / f"out-{name}"
        cfg = harness.small_config(out, loggers=[{"name": name}])
        path = harness.write(cfg, tmp_path / f"{name}.yaml")
        r = subprocess.run(harness.cli(path), env=env, capture_output=True, text=True, timeout=120)
        lines = [x for x in r.stderr.splitlines() if x.startswith("srpo:")]
        assert r.returncode == 2, r.stderr
        assert len(lines) == 1 and expect in lines[0], r.stderr
        assert not out.exists()
