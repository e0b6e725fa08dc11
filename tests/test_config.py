"""Run-file validation: every mistake is one located line, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from srpo.cli import main
from srpo.config import load_config

GOOD = """\
run:
  output_dir: {out}
  max_steps: 2
policy:
  path: {model}
datasets:
  math: {{path: {data}}}
sampler:
  name: hf
  options: {{temperature: 1.0}}
verifiers:
  math: {{name: math}}
"""


@pytest.fixture
def good(tmp_path: Path) -> str:
    from tests.support.tiny import TINY

    return GOOD.format(
        out=tmp_path / "out", model=TINY / "model", data=TINY / "data" / "math_train.jsonl"
    )


def run_validate(tmp_path: Path, text: str | bytes, capsys, *extra: str) -> tuple[int, str]:
    path = tmp_path / "plugins.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    code = main(["validate", str(path), *extra])
    err = capsys.readouterr().err.strip()
    return code, err


def test_good_file_validates(tmp_path, good, capsys):
    code, err = run_validate(tmp_path, good, capsys)
    assert code == 0, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("edit", "line", "expected"),
    [
        (
            lambda s: s.replace("policy:", "polcy:"),
            4,
            "polcy: unknown key (did you mean 'policy'?)",
        ),
        (
            lambda s: s.replace("max_steps: 2", "max_steps: two"),
            3,
            "run.max_steps: Input should be a valid integer",
        ),
        (
            lambda s: s.replace("name: hf", "name: hff"),
            9,
            "sampler.name: unknown sampler plugin 'hff' (did you mean 'hf'?)",
        ),
        (
            lambda s: s.replace("temperature: 1.0", "temprature: 1.0"),
            10,
            "sampler.options.temprature: unknown key (did you mean 'temperature'?)",
        ),
        (
            lambda s: s.replace("temperature: 1.0", "temperature: -1"),
            10,
            "sampler.options.temperature: Input should be greater than 0",
        ),
        (
            lambda s: s.replace("math: {name: math}", "math: {name: mth}"),
            12,
            "verifiers.math.name: unknown verifier plugin 'mth' (did you mean 'math'?)",
        ),
        (
            lambda s: s.replace("  math: {name: math}", "  code: {name: math}"),
            11,
            "verifiers: no verifier for domain 'math'",
        ),
        (
            lambda s: s.replace("max_steps: 2", "max_steps: 0"),
            3,
            "run.max_steps: Input should be greater than or equal to 1",
        ),
        (
            lambda s: s + "algorithm:\n  group_sise: 4\n",
            14,
            "algorithm.group_sise: unknown key (did you mean 'group_size'?)",
        ),
        (
            lambda s: s + "algorithm:\n  aggregation: [mean]\n",
            14,
            "algorithm.aggregation: Input should be a valid string",
        ),
        (
            lambda s: s.replace("policy:\n  path: ", "policy:\n  pth: "),
            5,
            "policy.pth: unknown key (did you mean 'path'?)",
        ),
        (
            lambda s: s + "loggers:\n  - name: consol\n",
            14,
            "loggers.0.name: unknown logger plugin 'consol' (did you mean 'console'?)",
        ),
        (
            lambda s: s.replace("sampler:\n  name: hf\n", "sampler:\n"),
            8,
            "sampler.name: required key is missing",
        ),
        (lambda s: s + "run:\n  seed: 1\n", 13, "run: duplicate key"),
        (lambda s: s.replace("  max_steps: 2\n", "  max_steps: [2\n"), None, "invalid YAML"),
    ],
)
def test_broken_files_give_one_located_line(tmp_path, good, capsys, edit, line, expected):
    code, err = run_validate(tmp_path, edit(good), capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert expected in err, err
    if line is not None:
        assert f"plugins.yaml:{line}: " in err, err
    assert not (tmp_path / "out").exists()


def test_non_utf8_file(tmp_path, good, capsys):
    code, err = run_validate(tmp_path, good.encode() + b"# caf\xe9\n", capsys)
    assert code == 2 and "plugins.yaml:13: not valid UTF-8" in err


def test_missing_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "run file not found" in capsys.readouterr().err


def test_set_overrides_apply_and_are_checked(tmp_path, good, capsys):
    path = tmp_path / "plugins.yaml"
    path.write_text(good)
    loaded = load_config(
        path, ["algorithm.group_size=4", "sampler.options.top_p=0.9", "run.name=x"]
    )
    assert loaded.config.algorithm.group_size == 4
    assert loaded.config.sampler.options["top_p"] == 0.9
    code, err = run_validate(tmp_path, good, capsys, "--set", "algorithm.group_size=zero")
    assert code == 2 and "algorithm.group_size: Input should be a valid integer" in err
    code, err = run_validate(tmp_path, good, capsys, "--set", "nokey")
    assert code == 2 and "--set expects key.path=value" in err


def test_bad_dataset_record_is_located(tmp_path, good, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "1+1", "answer": "2"}\n{"answer": "3"}\n')
    code, err = run_validate(
        tmp_path, good.replace(str(Path(good.split("path: ")[2].split("}")[0])), str(data)), capsys
    )
    assert code == 2
    assert (
        f"{data}:2: record field 'prompt' must be a non-empty string or a list of chat messages (missing)"
        in err
    )


def test_run_refuses_missing_model_and_writes_nothing(tmp_path, good, capsys):
    path = tmp_path / "plugins.yaml"
    path.write_text(good.replace("/model", "/no-such-model"))
    assert main(["run", str(path)]) == 2
    assert "model directory not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
