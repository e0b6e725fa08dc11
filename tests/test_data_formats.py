"""Datasets beyond JSON lines: Parquet files and directories, ``datasets`` directories saved
with ``save_to_disk``, dotted keys into nested records (verl's Parquet layout), the same
prompt id for the same row in every format, and one located line for every bad file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from srpo.cli import main
from srpo.config import load_config
from srpo.data import detect_format, load_dataset, load_jsonl, lookup, row_to_prompt
from srpo.data.rows import MISSING, Keys
from srpo.errors import DataError
from srpo.kernel.build import load_datasets
from tests.support.data_files import (
    TEXT_ROWS,
    chat,
    verl_rows,
    write_hf,
    write_jsonl,
    write_parquet,
)

VERL_KEYS = {"reference_key": "reward_model.ground_truth", "id_key": "extra_info.index"}


def _all_formats(tmp_path: Path, rows: list[dict]) -> dict[str, Path]:
    half = len(rows) // 2
    parts = tmp_path / "parts"
    parts.mkdir()
    write_parquet(parts / "part-0.parquet", rows[:half])
    write_parquet(parts / "part-1.parquet", rows[half:])
    return {
        "jsonl": write_jsonl(tmp_path / "d.jsonl", rows),
        "parquet": write_parquet(tmp_path / "d.parquet", rows, row_group_size=2),
        "parquet_dir": parts,
        "hf": write_hf(tmp_path / "hf", rows),
    }


def _view(prompts):
    return [(p.id, p.text, p.reference, p.messages) for p in prompts]


def test_every_format_reads_the_same_prompts_with_the_same_ids(tmp_path):
    paths = _all_formats(tmp_path, TEXT_ROWS)
    loaded = {name: load_dataset(path, "math") for name, path in paths.items()}
    assert {name: _view(v) for name, v in loaded.items()} == {
        name: _view(loaded["jsonl"]) for name in loaded
    }
    first, second, _ = loaded["jsonl"]
    assert (first.text, first.reference) == ("What is 2+2?", "4")
    no_id = {"prompt": "What is 3+3?", "answer": "6"}  # a null id is no id (columnar formats)
    assert second.id == load_jsonl(write_jsonl(tmp_path / "x.jsonl", [no_id]), "math")[0].id
    assert load_dataset(paths["parquet"], "code")[0].id != first.id  # the domain counts


def test_verl_rows_get_the_same_ids_in_every_format(tmp_path):
    paths = _all_formats(tmp_path, verl_rows(6))
    for id_key in ("extra_info.index", None):  # by index, and by the chat messages
        keys = {**VERL_KEYS, "id_key": id_key}
        views = {n: _view(load_dataset(p, "math", **keys)) for n, p in paths.items()}
        assert all(v == views["jsonl"] for v in views.values()), views
    prompt = load_dataset(paths["parquet"], "math", **VERL_KEYS)[2]
    assert prompt.messages == tuple(chat("What is 2+2? Put the answer after ####."))
    assert prompt.reference == "4" and prompt.meta["data_source"] == "openai/gsm8k"


def test_ids_are_pinned_to_the_jsonl_ids_of_earlier_releases(tmp_path):
    """The history store keys on these numbers: they must never change."""
    rows = [
        {"prompt": "What is 2+2?", "answer": "4"},
        {"prompt": chat("3+3?", system="Be brief."), "answer": "6"},
        {"id": 17, "prompt": "x", "answer": "1"},
    ]
    ids = [16958338870290408556, 6045216204623236386, 6146366402316422368]
    assert [p.id for p in load_jsonl(write_jsonl(tmp_path / "d.jsonl", rows), "math")] == ids
    path = write_parquet(tmp_path / "d.parquet", rows[2:])
    assert [p.id for p in load_dataset(path, "math")] == ids[2:]


def test_numpy_rows_from_pandas_give_the_same_prompt(tmp_path):
    pytest.importorskip("pandas")  # rows from pandas hold numpy arrays, not lists
    import pyarrow.parquet as pq

    path = write_parquet(tmp_path / "d.parquet", verl_rows(3))
    row = pq.read_table(path).to_pandas().to_dict("records")[1]
    assert type(row["prompt"]).__name__ == "ndarray"
    keys = Keys("prompt", "reward_model.ground_truth", "extra_info.index")
    expected = load_dataset(path, "math", **VERL_KEYS)[1]
    got = row_to_prompt(row, "x:2", "math", keys)
    assert (got.id, got.text, got.reference, got.messages) == _view([expected])[0]


def test_dotted_keys_reach_into_nested_records_and_an_exact_key_wins():
    row = {"a.b": "flat", "a": {"b": "nested", "c": None}, "n": {"m": {"k": 3}}}
    assert lookup(row, "a.b") == "flat" and lookup(row, "n.m.k") == 3
    assert lookup(row, "a.c") is MISSING and lookup(row, "a.b.c") is MISSING
    assert lookup(row, "n.m.k.z") is MISSING and lookup(row, "zzz") is MISSING


def test_jsonl_with_nested_keys(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", verl_rows(3))
    prompts = load_dataset(path, "math", **VERL_KEYS)
    assert [p.reference for p in prompts] == ["0", "2", "4"]
    by_text = load_dataset(path, "math", reference_key="reward_model.ground_truth", id_key=None)
    assert [p.id for p in by_text] != [p.id for p in prompts]


def test_limit_stops_before_a_damaged_row_group(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", _many(2000), row_group_size=1000)
    _damage_row_group(path, 1)
    assert len(load_dataset(path, "math", limit=5)) == 5
    with pytest.raises(DataError, match=r"d\.parquet:1001: cannot read Parquet rows"):
        load_dataset(path, "math")


def test_format_is_told_by_the_path(tmp_path):
    paths = _all_formats(tmp_path, TEXT_ROWS)
    assert {n: detect_format(p) for n, p in paths.items()} == {
        "jsonl": "jsonl",
        "parquet": "parquet",
        "parquet_dir": "parquet",
        "hf": "hf",
    }
    (paths["parquet_dir"] / "dataset_info.json").write_text("{}")  # as downloaded from the Hub
    assert detect_format(paths["parquet_dir"]) == "parquet"
    assert detect_format(write_jsonl(tmp_path / "d.json", TEXT_ROWS)) == "jsonl"


def test_explicit_format_overrides_the_name(tmp_path):
    path = write_jsonl(tmp_path / "rows.txt", TEXT_ROWS)
    assert len(load_dataset(path, "math", format="jsonl")) == 3
    with pytest.raises(DataError, match=r"rows\.txt: cannot tell the dataset format .*\(\.txt\)"):
        load_dataset(path, "math")


def test_verl_parquet_through_srpo_validate(tmp_path, write_config, capsys):
    data = tmp_path / "gsm8k"
    data.mkdir()
    write_parquet(data / "train.parquet", verl_rows(40))
    write_parquet(data / "test.parquet", verl_rows(10, "test"))
    spec = {"prompt_key": "prompt", **VERL_KEYS}
    run = write_config(
        **{
            "datasets": {"math": {"path": "gsm8k/train.parquet", **spec}},
            "eval.datasets": {"math": {"path": "gsm8k/test.parquet", "format": "parquet", **spec}},
        }
    )
    assert main(["validate", str(run)]) == 0, capsys.readouterr().err
    assert "train prompts math: 40; held-out math: 10" in capsys.readouterr().out
    train = load_datasets(load_config(run))["math"]
    assert train[3].messages == tuple(chat("What is 3+3? Put the answer after ####."))
    assert train[3].reference == "6"


def _many(n: int) -> list[dict]:
    return [{"prompt": f"What is {i}+1?", "answer": str(i + 1)} for i in range(n)]


def _damage_row_group(path: Path, group: int) -> None:
    import pyarrow.parquet as pq

    column = pq.ParquetFile(path).metadata.row_group(group).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    for i in range(start + 16, start + column.total_compressed_size - 16, 5):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


# ---- bad inputs: one line, FILE:ROW and the key, exit 2 ------------------------------------


def _verl(tmp_path, changes: dict | None = None):
    """Three verl rows; ``changes`` maps (row index, column) to a replacement value."""
    rows = verl_rows(3)
    for (i, key), value in (changes or {}).items():
        rows[i][key] = value
    return write_parquet(tmp_path / "bad.parquet", rows)


def _dir_with_duplicate(tmp_path):
    (tmp_path / "parts").mkdir()
    write_parquet(tmp_path / "parts" / "a.parquet", _many(2))
    write_parquet(tmp_path / "parts" / "b.parquet", _many(1))
    return tmp_path / "parts"


def _damaged(path):
    _damage_row_group(path, 0)
    return path


def _truncated(tmp_path):
    path = write_parquet(tmp_path / "bad.parquet", _many(50))
    path.write_bytes(path.read_bytes()[:300])
    return path


def _empty(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": pa.array([], pa.string()), "answer": pa.array([], pa.string())})
    pq.write_table(table, tmp_path / "bad.parquet")
    return tmp_path / "bad.parquet"


def _empty_dir(tmp_path):
    (tmp_path / "nothing").mkdir()
    return tmp_path / "nothing"


def _hf_truncated(tmp_path):
    path = write_hf(tmp_path / "hf", _many(200))
    arrow = next(path.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:400])
    return path


BAD = {
    "parquet_missing_key": (
        lambda t: write_parquet(t / "bad.parquet", [*_many(1), {"prompt": "q", "answer": None}]),
        {},
        "bad.parquet:2: record field 'answer' is missing",
    ),
    "nested_key_typo": (
        _verl,
        {"reference_key": "reward_model.ground_truht"},
        "bad.parquet:1: record field 'reward_model.ground_truht' is missing "
        "('reward_model' has: style, ground_truth)",
    ),
    "nested_key_through_a_string": (
        _verl,
        {"reference_key": "data_source.answer"},
        "bad.parquet:1: record field 'data_source.answer' is missing ('data_source' is str",
    ),
    "verl_prompt_key_missing": (
        _verl,
        {"prompt_key": "question", **VERL_KEYS},
        "bad.parquet:1: record field 'question' must be a non-empty string or a list of chat "
        "messages (missing); the record has: data_source, prompt, ability",
    ),
    "prompt_wrong_type": (
        lambda t: write_parquet(t / "bad.parquet", [{"prompt": 5, "answer": "5"}]),
        {},
        "bad.parquet:1: record field 'prompt' must be a non-empty string or a list of chat "
        "messages (int 5)",
    ),
    "id_wrong_type": (
        lambda t: write_parquet(
            t / "bad.parquet",
            [{"id": 1.0, "prompt": "a", "answer": "1"}, {"id": 2.5, **_many(1)[0]}],
        ),
        {},
        "bad.parquet:1: record field 'id' must be a string or integer (got float 1.0)",
    ),
    "chat_bad_role": (
        lambda t: _verl(t, {(1, "prompt"): [{"role": "robot", "content": "hi"}]}),
        VERL_KEYS,
        "bad.parquet:2: record field 'prompt'[0]: role must be one of system, user, assistant",
    ),
    "chat_last_turn_not_user": (
        lambda t: _verl(t, {(2, "prompt"): [{"role": "assistant", "content": "hi"}]}),
        VERL_KEYS,
        "bad.parquet:3: record field 'prompt': the last message must be the user's",
    ),
    "duplicate_index": (
        lambda t: _verl(t, {(2, "extra_info"): {"split": "train", "index": 0, "answer": ""}}),
        VERL_KEYS,
        "bad.parquet:3: duplicate prompt id (same as row 1)",
    ),
    "duplicate_across_files": (
        _dir_with_duplicate,
        {},
        "parts/b.parquet:1: duplicate prompt id (same as ",
    ),
    "empty_parquet": (_empty, {}, "bad.parquet: dataset is empty (domain 'math')"),
    "truncated_parquet": (
        _truncated,
        {},
        "bad.parquet: not a readable Parquet file (Parquet magic bytes not found",
    ),
    "damaged_row_group": (
        lambda t: _damaged(write_parquet(t / "bad.parquet", _many(20))),
        {},
        "bad.parquet:1: cannot read Parquet rows from here on",
    ),
    "not_parquet_at_all": (
        lambda t: write_jsonl(t / "bad.parquet", _many(1)),
        {},
        "bad.parquet: not a readable Parquet file",
    ),
    "hf_missing_key": (
        lambda t: write_hf(t / "hf", [*_many(1), {"prompt": "q", "answer": None}]),
        {},
        "hf:2: record field 'answer' is missing",
    ),
    "hf_dataset_dict": (
        lambda t: write_hf(t / "hf", _many(2), splits=("train", "test")),
        {},
        "hf: is a DatasetDict saved with save_to_disk (splits: train, test); set path to one "
        "split, e.g. ",
    ),
    "hf_truncated": (_hf_truncated, {}, "hf: not a readable datasets directory"),
    "hf_format_on_a_file": (
        lambda t: write_jsonl(t / "d.jsonl", _many(1)),
        {"format": "hf"},
        "d.jsonl: expected a directory saved with save_to_disk, got a file",
    ),
    "unknown_suffix": (
        lambda t: write_jsonl(t / "d.csv", _many(1)),
        {},
        "d.csv: cannot tell the dataset format from the name (.csv); expected a .jsonl file",
    ),
    "directory_of_nothing": (_empty_dir, {}, "nothing: is a directory, expected a .jsonl file"),
}


def _validate(write_config, capsys, spec: dict) -> tuple[int, list[str], str]:
    run = write_config(datasets={"math": spec})
    capsys.readouterr()
    code = main(["validate", str(run)])
    err = capsys.readouterr().err
    return code, [x for x in err.splitlines() if x.strip()], err


@pytest.mark.parametrize("case", list(BAD))
def test_bad_dataset_is_one_located_line_exit_2(case, tmp_path, write_config, capsys):
    make, keys, expect = BAD[case]
    path = make(tmp_path)
    code, lines, err = _validate(write_config, capsys, {"path": str(path), **keys})
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"srpo: error: {tmp_path}/"), lines[0]
    assert expect in lines[0], lines[0]


@pytest.mark.parametrize(
    ("write", "module", "extra"),
    [
        (lambda t: write_hf(t / "hf", _many(2)), "datasets", "datasets"),
        (lambda t: write_parquet(t / "d.parquet", _many(2)), "pyarrow.parquet", "parquet"),
    ],
)
def test_missing_optional_library_is_one_line(
    tmp_path, write_config, capsys, monkeypatch, write, module, extra
):
    path = write(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # import → ImportError
    code, lines, err = _validate(write_config, capsys, {"path": str(path)})
    assert code == 2 and len(lines) == 1, err
    assert lines[0].endswith(f"pip install 'srpo[{extra}]'"), lines[0]


@pytest.mark.parametrize(
    ("spec", "expect"),
    [
        ({"reference_key": "reward_model..truth"}, "datasets.math.reference_key: "),
        ({"id_key": ".index"}, "datasets.math.id_key: "),
        ({"format": "csv"}, "datasets.math.format: "),
    ],
)
def test_bad_dataset_keys_are_run_file_errors(tmp_path, write_config, capsys, spec, expect):
    data = write_jsonl(tmp_path / "d.jsonl", _many(2))
    code, lines, err = _validate(write_config, capsys, {"path": str(data), **spec})
    assert code == 2 and len(lines) == 1, err
    assert "plugins.yaml:" in lines[0] and expect in lines[0], lines[0]
