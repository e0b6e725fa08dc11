"""``srpo history`` subcommands, called through ``srpo.history.cli.main``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from srpo.history import HistoryStore
from srpo.history.cli import main
from srpo.history.synth import PromptPool, epoch_batches


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    pool = PromptPool.make(300, seed=3)
    with HistoryStore(run / "history", store_tokens=True, block_records=512) as w:
        step = 0
        for ep in range(2):
            for b in epoch_batches(pool, group=4, epoch=ep, batch_records=256, first_step=step):
                toks = [np.arange(k % 5, dtype=np.int32) for k in range(b["step"].size)]
                w.append(**b, tokens=toks)
                step = int(b["step"][0])
                w.commit(step)
                step += 1
    return run


def test_stats(run_dir: Path, capsys) -> None:
    assert main(["history", "stats", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "2,400" in out and "compression ratio" in out and "all correct" in out
    assert main(["stats", str(run_dir / "history"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["records"] == 2400 and s["prompts"] == 300


def test_verify_ok_and_corrupt(tmp_path: Path, run_dir: Path, capsys) -> None:
    assert main(["history", "verify", str(run_dir)]) == 0
    assert "ok: 2,400" in capsys.readouterr().out
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    seg = sorted((bad / "history").glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    assert main(["history", "verify", str(bad)]) == 1
    assert "CORRUPT" in capsys.readouterr().out


def test_export_jsonl_and_parquet(tmp_path: Path, run_dir: Path, capsys) -> None:
    out = tmp_path / "h.jsonl"
    assert main(["history", "export", str(run_dir), "--format", "jsonl", "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 2400
    rec = json.loads(lines[1])
    assert set(rec) >= {"prompt_id", "epoch", "step", "reward", "correct", "tokens"}
    assert rec["tokens"] == [0]
    assert main(["history", "export", str(run_dir), "--epoch", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1200
    pq = pytest.importorskip("pyarrow.parquet")
    pout = tmp_path / "h.parquet"
    assert main(["history", "export", str(run_dir), "--format", "parquet", "-o", str(pout)]) == 0
    t = pq.read_table(pout)
    assert t.num_rows == 2400 and t.column("tokens")[4].as_py() == [0, 1, 2, 3]


def test_export_parquet_without_pyarrow(tmp_path: Path, run_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    code = main(
        ["history", "export", str(run_dir), "--format", "parquet", "-o", str(tmp_path / "x")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pyarrow" in err


def test_show(run_dir: Path, capsys) -> None:
    pid = int(PromptPool.make(300, seed=3).ids[7])
    assert main(["history", "show", str(run_dir), "--prompt", str(pid)]) == 0
    out = capsys.readouterr().out
    assert "8 rollouts" in out
    assert main(["history", "show", str(run_dir), "--prompt", "5"]) == 0
    assert "no committed rollouts" in capsys.readouterr().out


@pytest.mark.parametrize("cmd", ["stats", "verify", "export", "show"])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, cmd: str, capsys) -> None:
    extra = ["--prompt", "1"] if cmd == "show" else []
    for target in (tmp_path / "missing", tmp_path):
        assert main(["history", cmd, str(target), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and "error" in err


def test_bad_prompt_id(run_dir: Path, capsys) -> None:
    assert main(["history", "show", str(run_dir), "--prompt", "abc"]) == 2
    assert "not an integer" in capsys.readouterr().err


def test_module_entry_point(run_dir: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "srpo.history.cli", "history", "verify", "/nonexistent"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and p.stderr.count("\n") == 1


def test_store_error_is_one_line_exit_2(run_dir: Path, monkeypatch, capsys) -> None:
    """A HistoryError (an SrpoError) raised inside a command: one stderr line, exit 2."""
    import srpo.history.reader as reader
    from srpo.history import HistoryCorruptError

    def broken(*a, **kw):
        raise HistoryCorruptError("shard 0: shard-00000-00000000.seg: bad block header")

    monkeypatch.setattr(reader.HistoryReader, "stats", broken)
    assert main(["history", "stats", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err == "srpo history stats: error: shard 0: shard-00000-00000000.seg: bad block header\n"
