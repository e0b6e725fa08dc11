"""History resampling: rebuild rules decided from a real history store (hand-made outcomes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from srpo_plugins.curricula.history_resampling import HistoryResamplingCurriculum as HR

from srpo.api import PluginContext
from tests.support.curricula import G, Store, drain, prompts


def make(tmp_path: Path, n: int = 10, seed: int = 0, **opts: object) -> HR:
    ctx = PluginContext(run_dir=tmp_path, seed=seed, datasets={"math": prompts(n)})
    return HR(HR.Options(**opts), ctx)


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "history")
    yield s
    s.store.close()


def epoch(cur, e: int, store: Store, outcomes: dict[int, int]) -> tuple[list[int], dict]:
    """Run epoch ``e``: serve it, record ``outcomes``, rebuild. Returns (served, report)."""
    cur.begin_epoch(e)
    served = drain(cur)
    store.write(e, {k: v for k, v in outcomes.items() if k in served})
    return served, dict(cur.end_epoch(e, store.reader()))


def test_drops_all_correct_keeps_mixed_all_wrong_and_unseen(tmp_path, store):
    cur = make(tmp_path)
    served, rep = epoch(cur, 0, store, {0: G, 1: G, 2: 1, 3: 3, 4: 0, 5: 0})
    assert sorted(served) == list(range(10))
    assert rep["all_correct"] == 2 and rep["mixed"] == 2 and rep["all_wrong"] == 2
    assert rep["unseen"] == 4 and rep["readmitted"] == 0
    assert rep["dataset_size"] == 8 and rep["dropped"] == 2
    cur.begin_epoch(1)
    assert cur.epoch_size() == 8
    assert sorted(drain(cur)) == list(range(2, 10))


def test_dropped_stay_out_and_later_epochs_drop_more(tmp_path, store):
    cur = make(tmp_path)
    epoch(cur, 0, store, {0: G})
    served, rep = epoch(cur, 1, store, {1: G, 2: 2})
    assert 0 not in served and rep["all_correct"] == 1 and rep["dropped"] == 2
    cur.begin_epoch(2)
    assert sorted(drain(cur)) == list(range(2, 10))


def test_window_of_k_epochs(tmp_path, store):
    # prompt 0: one wrong in epoch 0, all correct in epoch 1 -> mixed over 2 epochs
    for window, kept in ((1, False), (2, True)):
        s = Store(tmp_path / f"h{window}")
        cur = make(tmp_path, window=window)
        epoch(cur, 0, s, {0: G - 1})
        _, rep = epoch(cur, 1, s, {0: G})
        cur.begin_epoch(2)
        assert (0 in drain(cur)) is kept, window
        assert rep["mixed" if kept else "all_correct"] == 1
        s.store.close()


def test_floor_readmits_oldest_dropped_first(tmp_path, store):
    cur = make(tmp_path, n=6, min_dataset_size=4)
    _, rep = epoch(cur, 0, store, {0: G, 1: 2})  # 0 dropped at epoch 0 -> 5 left
    assert rep["dataset_size"] == 5 and rep["readmitted"] == 0
    _, rep = epoch(cur, 1, store, {1: G, 2: G, 3: 1})  # 1, 2 dropped -> 3 < floor 4
    assert rep["all_correct"] == 2 and rep["readmitted/floor"] == 1
    assert rep["dataset_size"] == 4
    cur.begin_epoch(2)
    assert sorted(drain(cur)) == [0, 3, 4, 5]  # prompt 0 was dropped longest ago


def test_floor_as_fraction_and_random_order_is_seeded(tmp_path, store):
    picks = []
    for seed in (0, 0, 1, 2, 3):
        s = Store(tmp_path / f"h{len(picks)}")
        cur = make(tmp_path, n=20, seed=seed, min_dataset_frac=0.5, floor_order="random")
        _, rep = epoch(cur, 0, s, dict.fromkeys(range(16), G))
        assert rep["all_correct"] == 16 and rep["dataset_size"] == 10
        cur.begin_epoch(1)
        picks.append(frozenset(drain(cur)))
        s.store.close()
    assert picks[0] == picks[1]  # same seed, same re-admissions
    assert len(set(picks)) > 1  # the seed matters


def test_readmit_after_n_epochs(tmp_path, store):
    cur = make(tmp_path, n=4, readmit_after=1, window=3)
    epoch(cur, 0, store, {0: G})  # dropped at the end of epoch 0
    served, rep = epoch(cur, 1, store, {})  # sits out epoch 1, returns for epoch 2
    assert 0 not in served and rep["readmitted"] == 1
    # not reached in epoch 2: its old all-correct records (inside the window) must not
    # drop it again before it was retried
    served, rep = epoch(cur, 2, store, {})
    assert 0 in served and rep["unseen"] == 4 and rep["all_correct"] == 0
    served, rep = epoch(cur, 3, store, {0: G})  # retried and solved again: out again
    assert rep["all_correct"] == 1 and rep["dataset_size"] == 3


def test_readmit_prob(tmp_path, store):
    cur = make(tmp_path, n=4, readmit_prob=1.0)
    epoch(cur, 0, store, {0: G, 1: G})
    served, rep = epoch(cur, 1, store, {})
    assert sorted(served) == [2, 3] and rep["readmitted"] == 2
    cur.begin_epoch(2)
    assert sorted(drain(cur)) == [0, 1, 2, 3]

    def back(seed: int, tag: str) -> float:
        s = Store(tmp_path / f"p{tag}")
        c = make(tmp_path, n=400, seed=seed, readmit_prob=0.25)
        epoch(c, 0, s, dict.fromkeys(range(400), G))
        _, r = epoch(c, 1, s, {})
        s.store.close()
        return r["readmitted"]

    a, b = back(7, "a"), back(7, "b")
    assert a == b and 60 <= a <= 140


def test_no_history_keeps_everything(tmp_path):
    cur = make(tmp_path, n=5)
    cur.begin_epoch(0)
    drain(cur)
    with pytest.warns(UserWarning, match="no history store"):
        rep = cur.end_epoch(0, None)
    assert rep["dataset_size"] == 5


def test_state_round_trip_mid_epoch_and_determinism(tmp_path, store):
    cur = make(tmp_path, n=30, seed=3, readmit_after=2)
    epoch(cur, 0, store, {0: G, 1: G, 2: 1})
    cur.begin_epoch(1)
    first = [p.id for p in cur.next_prompts(7)]
    state = json.loads(json.dumps(cur.state_dict()))  # checkpoints may be JSON
    rest = drain(cur)

    again = make(tmp_path, n=30, seed=3, readmit_after=2)
    again.load_state_dict(state)
    again.begin_epoch(1)  # the kernel calls it again on resume: must keep the position
    assert drain(again) == rest
    assert sorted(first + rest) == list(range(2, 30))

    twin = make(tmp_path, n=30, seed=3)
    twin.begin_epoch(0)
    other = make(tmp_path, n=30, seed=4)
    other.begin_epoch(0)
    cur2 = make(tmp_path, n=30, seed=3)
    cur2.begin_epoch(0)
    assert drain(twin) == drain(cur2) != drain(other)


def test_unknown_domain_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown domain 'code'"):
        make(tmp_path, domains=["code"])


# -- the default floor: one step's prompts (a deviation from the paper) ---------------------


def make_run(tmp_path: Path, n: int, pps: int | None, **opts: object) -> HR:
    """As the kernel builds it: the context carries the resolved run file."""
    config = {} if pps is None else {"run": {"prompts_per_step": pps}}
    ctx = PluginContext(run_dir=tmp_path, seed=0, datasets={"math": prompts(n)}, config=config)
    return HR(HR.Options(**opts), ctx)


def run_epochs(tmp_path: Path, tag: str, cur: HR, epochs: int) -> list[tuple]:
    """Every served prompt is solved but the hard ones (id % 8 == 0, all wrong)."""
    s = Store(tmp_path / tag)
    out = []
    for e in range(epochs):
        served, rep = epoch(cur, e, s, {i: 0 if i % 8 == 0 else G for i in range(24)})
        out.append((served, rep))
    s.store.close()
    return out


def test_default_floor_keeps_one_step_where_the_paper_rule_collapses(tmp_path):
    paper = run_epochs(tmp_path, "p", make_run(tmp_path, 24, 4, min_dataset_steps=0), 5)
    # the paper's rule: 21 of 24 solved in epoch 0, then the 3 hard ones for good
    assert [len(s) for s, _ in paper] == [24, 3, 3, 3, 3]
    floored = run_epochs(tmp_path, "f", make_run(tmp_path, 24, 4), 5)
    sizes = [len(s) for s, _ in floored]
    assert sizes == [24, 4, 4, 4, 4]  # never below one step (4 prompts)
    assert all(r["dataset_size"] >= 4 for _, r in floored)
    assert [r["readmitted/floor"] for _, r in floored] == [1, 1, 1, 1, 1]
    # the floor re-admits the oldest dropped, so the easy prompts rotate back in turn
    extra = [sorted(set(s) - {0, 8, 16}) for s, _ in floored[1:]]
    assert all(len(x) == 1 for x in extra) and len({x[0] for x in extra}) == 4


def test_floor_zero_is_the_old_rule(tmp_path):
    old = run_epochs(tmp_path, "o", make_run(tmp_path, 24, None), 4)  # no step size known
    zero = run_epochs(tmp_path, "z", make_run(tmp_path, 24, 4, min_dataset_steps=0), 4)
    assert zero == old
    assert all(r["readmitted"] == 0 for _, r in zero)


def test_step_floor_scales_and_takes_the_max_with_the_others(tmp_path):
    for opts, size in (
        ({"min_dataset_steps": 1.5}, 6),
        ({"min_dataset_steps": 2}, 8),
        ({"min_dataset_size": 10}, 10),  # max with the step floor (4)
        ({"min_dataset_frac": 0.25}, 6),  # ceil(0.25 * 24) > 4
        ({"min_dataset_steps": 100}, 24),  # capped at the whole pool
    ):
        cur = make_run(tmp_path, 24, 4, **opts)
        (_, rep), *_ = run_epochs(tmp_path, f"s{len(opts)}{size}", cur, 1)
        assert rep["dataset_size"] == size, opts


def test_step_floor_is_an_epoch_rule(tmp_path):
    with pytest.raises(ValueError, match="min_dataset_steps applies to selection: epoch"):
        HR.Options(selection="step", min_dataset_steps=0)
    cur = make_run(tmp_path, 24, 4, selection="step")  # the default floor does not refuse it
    assert cur.pool.rules is None
