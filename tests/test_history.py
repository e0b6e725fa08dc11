"""History store: round trips, summaries against a naive oracle, commits, resume,
truncation, corruption handling."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srpo.errors import SrpoError, SrpoWarning
from srpo.history import HistoryCorruptError, HistoryError, HistoryReader, HistoryStore
from srpo.history.manifest import segment_files
from srpo.history.schema import BY_NAME, RECORD_COLUMNS
from srpo.history.synth import PromptPool, epoch_batches

warnings.filterwarnings("ignore", message="history store:")


def cat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def read_all(r: HistoryReader, columns=None) -> dict[str, np.ndarray]:
    parts = [b for e in r.epochs() for b in r.iter_epoch(e, columns)]
    return cat(parts) if parts else {}


def naive_summary(recs: dict[str, np.ndarray], epochs) -> dict[int, tuple]:
    out: dict[int, list] = {}
    for i in range(recs["prompt_id"].size):
        if int(recs["epoch"][i]) not in epochs:
            continue
        p = int(recs["prompt_id"][i])
        n, c, r, s = out.get(p, (0, 0, 0.0, -1))
        out[p] = (
            n + 1,
            c + int(recs["correct"][i]),
            r + float(recs["reward"][i]),
            max(s, int(recs["step"][i])),
        )
    return out


def assert_summary(summ, want: dict[int, tuple]) -> None:
    assert summ.prompt_id.dtype == np.uint64
    assert summ.prompt_id.tolist() == sorted(want)
    for j, p in enumerate(summ.prompt_id.tolist()):
        n, c, r, s = want[p]
        assert (summ.n[j], summ.n_correct[j], summ.last_step[j]) == (n, c, s)
        assert summ.reward_mean[j] == pytest.approx(r / n, rel=1e-6, abs=1e-9)


def write_synth(root: Path, epochs: int = 2, prompts: int = 3000, shard: int = 0, **kw):
    pool = PromptPool.make(prompts, seed=shard + 1)
    parts, step = [], 0
    with HistoryStore(root, shard=shard, **kw) as w:
        for ep in range(epochs):
            for b in epoch_batches(
                pool, group=8, epoch=ep, batch_records=1024, first_step=step, seed=shard
            ):
                w.append(**b)
                step = int(b["step"][0])
                w.commit(step)
                step += 1
                parts.append(b)
    return cat(parts)


def test_roundtrip_summary_counts_stats(tmp_path: Path) -> None:
    ref = write_synth(tmp_path, block_records=4096, segment_bytes=32 << 10)
    with HistoryReader(tmp_path) as r:
        got = read_all(r)
        for k in RECORD_COLUMNS:
            assert np.array_equal(got[k], ref[k]), k
            assert got[k].dtype == ref[k].dtype
        assert r.epochs() == [0, 1]
        for eps in ([0], [1], [0, 1], [5]):
            assert_summary(r.epoch_summary(eps), naive_summary(ref, eps))
        assert r.counts("epoch") == {0: 24000, 1: 24000}
        dom = np.unique(ref["domain"], return_counts=True)
        assert r.counts("domain") == dict(zip(dom[0].tolist(), dom[1].tolist(), strict=True))
        assert r.counts("stage") == {0: 48000}
        pid = int(ref["prompt_id"][100])
        h = r.prompt_history(pid)
        sel = ref["prompt_id"] == pid
        assert h["step"].size == sel.sum() == 16
        assert np.array_equal(np.sort(h["length"]), np.sort(ref["length"][sel]))
        assert (np.diff(h["epoch"].astype(int)) >= 0).all()
        assert r.prompt_history(12345)["step"].size == 0
        s = r.stats()
        assert s["records"] == 48000 and s["prompts"] == 3000 and s["epochs"] == [0, 1]
        assert s["segments"] > 1 and s["compression_ratio"] > 5
        pe = s["per_epoch"][0]
        assert sum(pe["pass_rate_hist"]) == 3000
        assert pe["all_correct"] + pe["all_wrong"] + pe["mixed"] == pytest.approx(1.0)
        assert r.verify() == []
        with pytest.raises(ValueError):
            r.counts("reward")


def test_shards_merge(tmp_path: Path) -> None:
    a = write_synth(tmp_path, epochs=1, prompts=500, shard=0)
    b = write_synth(tmp_path, epochs=1, prompts=500, shard=3)
    both = cat([a, b])
    with HistoryReader(tmp_path) as r:
        assert r.committed_steps() == {0: 3, 3: 3}
        assert_summary(r.epoch_summary([0]), naive_summary(both, {0}))
        assert r.stats()["shards"] == 2


records_st = st.lists(
    st.tuples(
        st.integers(0, 5),  # prompt (small pool: repeats)
        st.integers(0, 3),  # epoch
        st.integers(0, 2),  # step increment
        st.booleans(),  # correct
        st.sampled_from([0.0, 1.0, -0.5, 0.25, float(np.float32(0.1))]),
        st.integers(0, 2),  # rows in a run
    ),
    min_size=1,
    max_size=120,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    recs=records_st,
    block=st.integers(1, 50),
    commit_every=st.integers(1, 7),
    epochs=st.sets(st.integers(0, 4), max_size=3),
)
def test_summary_matches_naive_oracle(tmp_path_factory, recs, block, commit_every, epochs) -> None:
    root = tmp_path_factory.mktemp("h")
    ids = np.array([2**64 - 1, 0, 7, 2**63, 12, 99], np.uint64)
    rows = {k: [] for k in RECORD_COLUMNS}
    step = 0
    for p, e, dstep, c, rew, rep in recs:
        step += dstep
        for _ in range(rep + 1):
            for k, v in (
                ("prompt_id", ids[p]),
                ("epoch", e),
                ("step", step),
                ("sample", 0),
                ("domain", p % 2),
                ("reward", rew if c else 0.0),
                ("correct", int(c)),
                ("length", 10 * p),
                ("flags", 0),
                ("stage", e // 2),
            ):
                rows[k].append(v)
    ref = {
        k: np.array(v, dtype=np.dtype(d))
        for (k, v), d in zip(
            rows.items(), ["u8", "u4", "u4", "u2", "u1", "f4", "u1", "u4", "u1", "u1"], strict=True
        )
    }
    n = ref["step"].size
    with HistoryStore(root, block_records=block) as w:
        for s in range(0, n, commit_every):
            sl = slice(s, s + commit_every)
            w.append(**{k: v[sl] for k, v in ref.items()})
            w.commit(int(ref["step"][sl].max()))
    with HistoryReader(root, strict=True) as r:
        assert_summary(r.epoch_summary(sorted(epochs)), naive_summary(ref, epochs))
        got = {k: [] for k in RECORD_COLUMNS}
        for e in r.epochs():
            for b in r.iter_epoch(e):
                for k in got:
                    got[k].append(b[k])
        order = np.argsort(ref["epoch"], kind="stable")
        for k in RECORD_COLUMNS:
            assert np.array_equal(np.concatenate(got[k]), ref[k][order]), k
        assert r.counts("epoch") == {
            int(e): int(c)
            for e, c in zip(*np.unique(ref["epoch"], return_counts=True), strict=True)
        }
        p = int(ref["prompt_id"][0])
        assert r.prompt_history(p)["step"].size == int((ref["prompt_id"] == p).sum())


def test_tokens_roundtrip_and_torch_inputs(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    n = 50
    toks = [
        torch.randint(0, 150000, (int(k),), generator=g)
        for k in torch.randint(0, 30, (n,), generator=g)
    ]
    pid = torch.full((n,), -3, dtype=torch.int64)  # bitwise u64 2**64 - 3
    with HistoryStore(tmp_path, store_tokens=True, block_records=16) as w:
        w.append(
            prompt_id=pid,
            epoch=0,
            step=4,
            sample=torch.arange(n),
            domain=1,
            reward=torch.rand(n, generator=g),
            correct=torch.rand(n, generator=g) > 0.5,
            length=torch.tensor([t.numel() for t in toks]),
            flags=0,
            stage=0,
            tokens=toks,
        )
        w.commit(4)
    with HistoryReader(tmp_path) as r:
        got = read_all(r)
        assert got["prompt_id"].tolist() == [2**64 - 3] * n
        assert got["token_count"].tolist() == [t.numel() for t in toks]
        assert got["token_ids"].tolist() == torch.cat(toks).tolist()
        h = r.prompt_history(2**64 - 3)
        assert h["token_ids"].tolist() == torch.cat(toks).tolist()
        assert r.stats()["raw_bytes"] > n * 30
    with pytest.raises(ValueError, match="store_tokens"):
        HistoryStore(tmp_path, store_tokens=False)


def test_input_validation(tmp_path: Path) -> None:
    base = dict(
        prompt_id=np.arange(4),
        epoch=0,
        step=1,
        sample=np.arange(4),
        domain=0,
        reward=np.zeros(4),
        correct=np.ones(4, bool),
        length=np.ones(4, int),
    )
    with HistoryStore(tmp_path) as w:
        with pytest.raises(ValueError, match="different lengths"):
            w.append(**{**base, "sample": np.arange(3)})
        with pytest.raises(ValueError, match="length"):
            w.append(**{**base, "length": -np.ones(4, int)})
        with pytest.raises(ValueError, match="fit"):
            w.append(**{**base, "sample": np.full(4, 70000)})
        with pytest.raises(TypeError):
            w.append(**{**base, "step": np.ones(4) * 1.5})
        w.append(**base)
        with pytest.raises(ValueError, match="buffered records"):
            w.commit(0)
        w.commit(1)
        with pytest.raises(ValueError, match="forward"):
            w.commit(0)
        with pytest.raises(HistoryError, match="another writer"):
            HistoryStore(tmp_path)
        HistoryStore(tmp_path, shard=1).close()  # other shards are fine


def test_only_committed_is_visible_and_survives(tmp_path: Path) -> None:
    rec = dict(
        prompt_id=np.arange(8),
        epoch=0,
        step=0,
        sample=0,
        domain=0,
        reward=1.0,
        correct=1,
        length=np.arange(8),
    )
    w = HistoryStore(tmp_path, block_records=3)
    assert w.committed_step is None
    w.append(**rec)  # blocks already written: must stay invisible
    r = HistoryReader(tmp_path)
    assert r.epochs() == [] and r.committed_steps() == {0: None}
    w.commit(0)
    assert r.counts("epoch") == {0: 8}  # an open reader picks up new commits
    w.append(**{**rec, "step": 1})
    assert r.counts("epoch") == {0: 8}
    with pytest.warns(SrpoWarning, match="uncommitted"):
        w.close()
    w = HistoryStore(tmp_path, block_records=3)
    assert w.committed_step == 0 and w.committed_records == 8
    w.append(**{**rec, "step": 2, "epoch": 1})
    w.commit(2)
    w.close()
    with HistoryReader(tmp_path) as r2:
        assert r2.counts("step") == {0: 8, 2: 8}
        assert r2.verify() == []
    r.close()


def test_truncate_after_with_mixed_blocks(tmp_path: Path) -> None:
    recs = []
    with HistoryStore(tmp_path, block_records=10, segment_bytes=2000) as w:
        for step in range(30):
            b = dict(
                prompt_id=np.full(7, step % 5),
                epoch=step // 10,
                step=step,
                sample=np.arange(7),
                domain=0,
                reward=0.5,
                correct=step % 2,
                length=np.arange(7) + step,
            )
            w.append(**b)
            recs.append(step)
            if step % 3 == 2:  # several steps per commit: blocks mix steps
                w.commit(step)
        assert w.truncate_after(17) == 12 * 7
        assert w.committed_step == 17 and w.committed_records == 18 * 7
        assert w.truncate_after(25) == 0 and w.committed_step == 17
        for step in range(18, 21):
            w.append(
                prompt_id=np.full(7, 1),
                epoch=1,
                step=step,
                sample=np.arange(7),
                domain=0,
                reward=0.5,
                correct=0,
                length=1,
            )
        w.commit(20)
    with HistoryReader(tmp_path, strict=True) as r:
        steps = read_all(r)["step"]
        assert steps.tolist() == sorted(steps.tolist())
        assert np.bincount(steps).tolist() == [7] * 21
        assert r.committed_steps() == {0: 20}
        assert r.verify() == []
    with HistoryStore(tmp_path) as w:
        assert w.committed_step == 20
        assert w.truncate_after(0) == 20 * 7
    with HistoryReader(tmp_path) as r:
        assert r.counts("step") == {0: 7}
        # block 0 mixed steps 0 and 1: its step-0 rows moved to a new segment, the rest deleted
        assert len(list(tmp_path.glob("*.seg"))) == 1


def _active_segment(root: Path) -> Path:
    files = segment_files(root, 0)
    return files[max(files)]


def test_torn_tail_is_ignored_then_repaired(tmp_path: Path) -> None:
    ref = write_synth(tmp_path, epochs=1, prompts=200, block_records=256)
    seg = _active_segment(tmp_path)
    size = seg.stat().st_size
    good = seg.read_bytes()
    with open(seg, "ab") as f:  # half a block and garbage after the last commit
        f.write(good[32 : 32 + 300] + os.urandom(1000))
    with HistoryReader(tmp_path, strict=True) as r:
        assert np.array_equal(read_all(r)["length"], ref["length"])
        assert r.verify() == []
    with HistoryStore(tmp_path) as w:
        assert seg.stat().st_size == size
        w.append(
            prompt_id=[1], epoch=0, step=999, sample=0, domain=0, reward=0, correct=0, length=1
        )
        w.commit(999)
    with HistoryReader(tmp_path, strict=True) as r:
        assert r.counts("epoch") == {0: ref["epoch"].size + 1}


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


@pytest.mark.parametrize("where", ["payload", "header"])
def test_bit_flip_is_reported_and_rest_readable(tmp_path: Path, where: str) -> None:
    write_synth(tmp_path, epochs=1, prompts=2000, block_records=2048, segment_bytes=1 << 30)
    seg = _active_segment(tmp_path)
    with HistoryReader(tmp_path) as r:
        v = r._shards[0].views[-1]
        bh = v.header(3)
        total = int(v.index["n"].sum())
        target = bh.columns["prompt_id"][4] + 5 if where == "payload" else bh.offset + 10
    _flip(seg, target)
    with pytest.warns(SrpoWarning, match="history store"):
        r = HistoryReader(tmp_path)
        got = read_all(r)
        summ = r.epoch_summary([0])
    assert got["step"].size == total - bh.n  # only that block is lost
    assert summ.n.sum() == total - bh.n
    assert len(r.problems) == 1
    probs = r.verify()
    r.close()
    assert len(probs) >= 1 and probs[0].segment == seg.name
    if where == "payload":
        assert probs[0].block == 3 and "prompt_id" in probs[0].message
    else:
        assert probs[0].offset == bh.offset
    with (
        pytest.raises(HistoryCorruptError, match=seg.name),
        HistoryReader(tmp_path, strict=True) as r,
    ):
        read_all(r)


def test_truncated_sealed_segment(tmp_path: Path) -> None:
    write_synth(tmp_path, epochs=1, prompts=2000, block_records=1024, segment_bytes=20 << 10)
    files = segment_files(tmp_path, 0)
    assert len(files) >= 3
    victim = files[min(files) + 1]
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    with pytest.warns(SrpoWarning) as rec:
        r = HistoryReader(tmp_path)
    assert any("truncated" in str(w.message) for w in rec)
    probs = r.verify()
    assert any(p.segment == victim.name and "truncated" in p.message for p in probs)
    got = read_all(r)
    assert 0 < got["step"].size < 16000
    r.close()
    with pytest.raises(HistoryCorruptError):
        HistoryReader(tmp_path, strict=True)


def test_reader_errors(tmp_path: Path) -> None:
    from srpo.history import NotAStoreError

    with pytest.raises(NotAStoreError):
        HistoryReader(tmp_path / "nope")
    with pytest.raises(NotAStoreError):
        HistoryReader(tmp_path)


def test_errors_and_warnings_use_srpo_channels(tmp_path: Path) -> None:
    """Store errors are user errors (exit code 2); its warnings go through srpo.errors.warn."""
    from srpo.history import NotAStoreError

    for cls in (HistoryError, HistoryCorruptError, NotAStoreError):
        assert issubclass(cls, SrpoError) and cls.exit_code == 2
    w = HistoryStore(tmp_path)
    w.append(prompt_id=[1], epoch=0, step=0, sample=0, domain=0, reward=0, correct=0, length=1)
    with pytest.warns(SrpoWarning, match="uncommitted") as rec:
        w.close()
    assert rec[0].filename == __file__  # points at the caller of close()


def test_rollout_columns_are_what_append_takes(tmp_path: Path) -> None:
    from srpo.history import FLAG_TRUNCATED, FLAG_VERIFIER_ERROR, rollout_columns
    from srpo.types import Prompt, RolloutBatch, Scores

    prompts = [
        Prompt(2**64 - 1, "code", "q0", None),
        Prompt(7, "math", "q1", None),
        Prompt(2**63, "code", "q2", None),
    ]
    G, T = 3, 5
    group = torch.arange(3).repeat_interleave(G)
    mask = torch.arange(T)[None, :] < torch.tensor([1, 2, 3, 4, 5, 0, 5, 5, 2])[:, None]
    batch = RolloutBatch(
        prompts=prompts,
        group=group,
        sample=torch.arange(G).repeat(3),
        prompt_token_ids=[[1]] * 3,
        response_ids=torch.ones(9, T, dtype=torch.int64),
        response_mask=mask,
        behaviour_logp=torch.zeros(9, T),
        truncated=torch.tensor([0, 0, 0, 0, 1, 0, 1, 0, 0], dtype=torch.bool),
        response_text=[""] * 9,
        temperature=1.0,
    )
    error = [None, None, "boom", None, None, None, "timeout", None, None]
    scores = Scores(
        reward=torch.tensor([1.0, 0.0, 0.0, 0.5, -0.5, 1.0, 0.0, 1.0, 0.25]),
        correct=torch.tensor([1, 0, 0, 1, 0, 1, 0, 1, 0], dtype=torch.bool),
        error=error,
    )
    cols = rollout_columns(
        batch, scores, epoch=3, step=41, stage=1, domain_codes={"math": 0, "code": 1}
    )
    assert tuple(cols) == RECORD_COLUMNS
    for k, a in cols.items():
        assert a.dtype == BY_NAME[k].dtype and a.shape == (9,), k
    assert cols["prompt_id"].tolist() == [2**64 - 1] * 3 + [7] * 3 + [2**63] * 3
    assert cols["domain"].tolist() == [1, 1, 1, 0, 0, 0, 1, 1, 1]
    assert cols["sample"].tolist() == [0, 1, 2] * 3
    assert cols["length"].tolist() == [1, 2, 3, 4, 5, 0, 5, 5, 2]
    assert cols["correct"].tolist() == [1, 0, 0, 1, 0, 1, 0, 1, 0]
    assert cols["reward"].tolist() == [1.0, 0.0, 0.0, 0.5, -0.5, 1.0, 0.0, 1.0, 0.25]
    tr, ve = FLAG_TRUNCATED, FLAG_VERIFIER_ERROR
    assert (tr, ve) == (1, 2)  # on disk: bit 0 truncated, bit 1 verifier error (FORMAT.md)
    assert cols["flags"].tolist() == [0, 0, ve, 0, tr, 0, tr | ve, 0, 0]
    assert set(cols["epoch"].tolist()) == {3} and set(cols["step"].tolist()) == {41}
    assert set(cols["stage"].tolist()) == {1}
    with HistoryStore(tmp_path) as w:  # exactly the keywords append takes
        w.append(**cols)
        w.commit(41)
    with HistoryReader(tmp_path, strict=True) as r:
        got = read_all(r)
    for k in RECORD_COLUMNS:
        assert np.array_equal(got[k], cols[k]), k
