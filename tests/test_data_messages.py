"""Prompts given as chat messages in a JSONL dataset: parsed, id'd stably, and refused with
``FILE:LINE`` errors when malformed."""

from __future__ import annotations

import json

import pytest

from srpo.data import load_jsonl
from srpo.errors import DataError


def _write(tmp_path, rows):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_messages_prompt(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    rows = [{"prompt": msgs, "answer": "4"}, {"prompt": "3+3?", "answer": "6"}]
    first, second = load_jsonl(_write(tmp_path, rows), "math")
    assert first.messages == tuple(msgs) and first.text == "2+2?" and first.chat == first.messages
    assert second.messages is None and second.chat == "3+3?"
    again = load_jsonl(_write(tmp_path, rows), "math")
    assert [p.id for p in again] == [first.id, second.id]  # stable across loads
    other = [{"prompt": [msgs[1]], "answer": "4"}]
    assert load_jsonl(_write(tmp_path, other), "math")[0].id != first.id  # the system counts


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([], "the last message must be the user's"),
        ([{"role": "assistant", "content": "hi"}], "the last message must be the user's"),
        ([{"role": "robot", "content": "hi"}], r"\[0\]: role must be one of"),
        ([{"role": "user", "content": ""}], r"\[0\]: content must be a non-empty string"),
        ([{"role": "user", "content": "x", "name": "y"}], "with 'role' and 'content' only"),
        (["hello"], "with 'role' and 'content' only"),
        (7, "must be a non-empty string or a list of chat messages"),
    ],
)
def test_bad_messages_name_file_line_and_field(tmp_path, prompt, message):
    path = _write(tmp_path, [{"prompt": "ok", "answer": "1"}, {"prompt": prompt, "answer": "1"}])
    with pytest.raises(DataError, match=rf"d\.jsonl:2: record field 'prompt'.*{message}"):
        load_jsonl(path, "math")
