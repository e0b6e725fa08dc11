"""The same dataset rows written as JSON lines, Parquet and a ``datasets`` directory, and a
verl-format dataset (the layout of verl's examples/data_preprocess scripts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TEXT_ROWS: list[dict[str, Any]] = [
    {"id": 7, "prompt": "What is 2+2?", "answer": "4"},
    {"id": None, "prompt": "What is 3+3?", "answer": "6"},  # no id: the prompt is the key
    {"id": 9, "prompt": "What is 4+4?", "answer": "8"},
]


def chat(question: str, system: str | None = None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": question}]


def verl_rows(n: int, split: str = "train") -> list[dict[str, Any]]:
    """Rows as verl's gsm8k preprocessing writes them: chat prompt, rule-based reward model
    with the ground truth, and extra_info with the row's index in its split."""
    return [
        {
            "data_source": "openai/gsm8k",
            "prompt": chat(f"What is {i}+{i}? Put the answer after ####."),
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(2 * i)},
            "extra_info": {"split": split, "index": i, "answer": f"#### {2 * i}"},
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]], **options: Any) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, **options)
    return path


def write_hf(path: Path, rows: list[dict[str, Any]], splits: tuple[str, ...] = ()) -> Path:
    """``Dataset.save_to_disk`` (a ``DatasetDict`` with these splits when given)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        ds = datasets.Dataset.from_list(rows)
        out = datasets.DatasetDict({s: ds for s in splits}) if splits else ds
        out.save_to_disk(str(path))
    finally:
        datasets.enable_progress_bars()
    return path
