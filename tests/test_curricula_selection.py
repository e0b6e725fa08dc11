"""Step-level selection: the zero-variance closed form, draw rates, state, two_stage and kernel.

Prompts come from ``tests.support.kernel.dataset``: prompt i has ``ks[i]`` correct rollouts
out of G, so each step's groups (fed back through ``accept_groups``) are exact.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pydantic
import pytest
from srpo_plugins.curricula._selection import zero_variance_prob
from srpo_plugins.curricula.history_resampling import HistoryResamplingCurriculum as HR
from srpo_plugins.curricula.two_stage import TwoStageCurriculum as TS

from srpo import events as ev
from srpo.api import Curriculum, PluginContext, Prompt
from tests.support.kernel import G, dataset, fake_batch, fake_scores, run_kernel

CONFIG = {"algorithm": {"group_size": G}}


def make_hr(tmp_path: Path, ks: list[int], seed: int = 0, **step: object) -> HR:
    ctx = PluginContext(tmp_path, seed, {"math": dataset(ks)}, config=CONFIG)
    return HR(HR.Options(selection="step", step=step), ctx)


def serve(cur: Curriculum, n: int) -> list[Prompt]:
    """One step: draw ``n`` prompts and feed their exact groups back."""
    got = cur.next_prompts(n)
    if got:
        batch = fake_batch(got)
        assert cur.accept_groups(batch, fake_scores(batch)) is None  # trains every group
    return got


def run_epochs(cur: Curriculum, epochs: range, n: int) -> list[list[int]]:
    steps: list[list[int]] = []
    for e in epochs:
        cur.begin_epoch(e)
        while got := serve(cur, n):
            steps.append([p.id for p in got])
        cur.end_epoch(e, None)
    return steps


def informative(k: int) -> bool:
    return 0 < k < G


@pytest.mark.parametrize(("a", "b", "g"), [(1, 1, 4), (2.5, 0.7, 8), (9, 1, 8), (0.5, 3, 16)])
def test_closed_form_matches_monte_carlo(a, b, g):
    p = np.random.default_rng(0).beta(a, b, size=400_000)
    mc = np.mean(p**g + (1 - p) ** g)
    assert zero_variance_prob(np.array([a]), np.array([b]), g)[0] == pytest.approx(mc, abs=4e-3)
    # uniform prior: P(all agree) = 2 / (G + 1)
    assert zero_variance_prob(np.ones(1), np.ones(1), g)[0] == pytest.approx(2 / (g + 1))


def test_draws_are_without_replacement_within_a_step_and_epochs_keep_their_length(tmp_path):
    cur = make_hr(tmp_path, [2] * 10)
    steps = run_epochs(cur, range(3), 4)
    assert all(len(s) == len(set(s)) for s in steps)
    assert [len(s) for s in steps] == [4, 4, 2] * 3  # 10 prompts per epoch
    assert cur.epoch_size() == 10


def test_solved_prompts_come_back_rarely_but_not_never(tmp_path):
    ks = [G] + [2] * 9  # prompt 0 is solved, the rest are mixed
    cur = make_hr(tmp_path, ks, min_weight=0.05)
    drawn = Counter(i for s in run_epochs(cur, range(60), 2) for i in s)
    assert 0 < drawn[0] < drawn.most_common()[-2][1] / 4  # far below any mixed prompt
    rep = cur.end_epoch(60, None)
    assert 0.0 < rep["expected_informative"] < 1.0 and rep["dataset_size"] == 10


def test_unseen_prompts_are_drawn(tmp_path):
    cur = make_hr(tmp_path, [G] * 6 + [2] * 4)
    cur.begin_epoch(0)
    for _ in range(20):  # teach it prompts 0-5 are solved
        batch = fake_batch(cur.pool.prompts[:6])
        cur.accept_groups(batch, fake_scores(batch))
    drawn = Counter(i for s in run_epochs(cur, range(2), 2) for i in s)
    assert {6, 7, 8, 9} <= set(drawn)  # the prior makes them likely
    assert sum(drawn[i] for i in range(6, 10)) > 3 * sum(drawn[i] for i in range(6))


def test_chosen_prompts_are_more_informative_than_uniform(tmp_path):
    rng = np.random.default_rng(1)
    ks = rng.choice([0, G, 1, 2, 3], p=[0.3, 0.4, 0.1, 0.1, 0.1], size=60).tolist()
    uniform = np.mean([informative(k) for k in ks])
    cur = make_hr(tmp_path, ks, seed=3, min_weight=0.02)
    steps = run_epochs(cur, range(8), 6)
    late = [informative(ks[i]) for s in steps[len(steps) // 2 :] for i in s]
    assert uniform < 0.45 and np.mean(late) > uniform + 0.3


def test_decay_forgets_old_outcomes(tmp_path):
    cur = make_hr(tmp_path, [G, 2], half_life=2.0)
    batch = fake_batch(cur.pool.prompts[:1])
    for _ in range(10):
        cur.accept_groups(batch, fake_scores(batch))
    w_now = cur.posterior.weights([0])[0]
    other = fake_batch(cur.pool.prompts[1:])
    for _ in range(20):  # 20 half-lives later, prompt 0 is back near the prior
        cur.accept_groups(other, fake_scores(other))
    prior = 1 - 2 / (G + 1)
    assert w_now < 0.25 and cur.posterior.weights([0])[0] == pytest.approx(prior, abs=1e-2)


def test_state_round_trip_gives_the_same_choices(tmp_path):
    ks = [0, G, 1, 2, 3, G, G, 0, 2, 1, 3, G]
    cur = make_hr(tmp_path, ks, seed=7, half_life=5.0)
    run_epochs(cur, range(2), 5)
    cur.begin_epoch(2)
    serve(cur, 5)
    state = json.loads(json.dumps(cur.state_dict()))
    rest = [p.id for p in iter(lambda: serve(cur, 5), []) for p in p]
    rest += [i for s in run_epochs(cur, range(3, 5), 5) for i in s]

    again = make_hr(tmp_path, ks, seed=7, half_life=5.0)
    again.load_state_dict(state)
    again.begin_epoch(2)  # the kernel calls it again on resume: keeps the position
    redo = [p.id for p in iter(lambda: serve(again, 5), []) for p in p]
    redo += [i for s in run_epochs(again, range(3, 5), 5) for i in s]
    assert redo == rest and len(rest) > 10


def test_epoch_rule_stays_the_default(tmp_path):
    ctx = PluginContext(tmp_path, 0, {"math": dataset([G, 2])})
    cur = HR(HR.Options(), ctx)
    assert cur.options.selection == "epoch" and "posterior" not in cur.state_dict()


def make_ts(tmp_path: Path, **opts: object) -> TS:
    data = {"math": dataset([G] * 4 + [2] * 4), "code": dataset([0] * 3 + [1] * 3, "code", 1000)}
    ctx = PluginContext(tmp_path, 0, data, config=CONFIG)
    return TS(TS.Options(resampling="selection", switch={"after_epochs": 2}, **opts), ctx)


def test_composes_with_two_stage(tmp_path):
    cur = make_ts(tmp_path, selection={"min_weight": 0.05})
    steps = run_epochs(cur, range(2), 4)  # stage 0: math only, nothing dropped
    assert all(i < 1000 for s in steps for i in s) and len(steps) == 4
    assert cur.stage == 1 and cur.pools["math"].size() == 8
    cur.begin_epoch(2)
    first = serve(cur, 4)
    assert Counter(p.domain for p in first) == {"math": 2, "code": 2}
    state = json.loads(json.dumps(cur.state_dict()))
    rest = [p.id for p in iter(lambda: serve(cur, 4), []) for p in p]

    again = make_ts(tmp_path, selection={"min_weight": 0.05})
    again.load_state_dict(state)
    again.begin_epoch(2)
    assert [p.id for p in iter(lambda: serve(again, 4), []) for p in p] == rest

    later = Counter(i for s in run_epochs(cur, range(3, 40), 4) for i in s)
    solved, mixed = sum(later[i] for i in range(4)), sum(later[i] for i in range(4, 8))
    assert 0 < solved < mixed / 3


def test_through_the_kernel_loop(tmp_path):
    ks = [G] * 8 + [2] * 8
    cur = make_hr(tmp_path, ks, seed=1)
    _, log = run_kernel(tmp_path, cur, per_step=4, epochs=10)
    ratios = [s.metrics["effective_ratio"] for s in log.of(ev.StepEnd)]
    assert len(ratios) == 40 and cur.posterior.t == 40
    assert np.mean(ratios[20:]) > 0.7  # uniform would give 0.5


def test_epoch_rules_are_refused_with_step_selection():
    with pytest.raises(pydantic.ValidationError, match="min_dataset_size applies to selection"):
        HR.Options(selection="step", min_dataset_size=4)


def late_informative_share(tmp_path: Path, ks: list[int], **step: object) -> float:
    cur = make_hr(tmp_path, ks, seed=5, **step)
    steps = run_epochs(cur, range(12), 8)
    return float(np.mean([informative(ks[i]) for s in steps[len(steps) // 2 :] for i in s]))


def test_empirical_prior_and_power_keep_the_informative_share_above_ninety_percent(tmp_path):
    """A solved majority (the late phase of a run): proportional draws under the flat prior
    keep many solved prompts; the fitted U-shaped prior plus power 2 keeps them out."""
    rng = np.random.default_rng(2)
    ks = rng.choice([G, 0, 1, 2, 3], p=[0.6, 0.15, 0.1, 0.1, 0.05], size=80).tolist()
    flat = late_informative_share(tmp_path, ks, min_weight=0.01)
    sharp = late_informative_share(tmp_path, ks, prior="empirical", power=2.0, min_weight=0.01)
    assert np.mean([informative(k) for k in ks]) < 0.35
    assert flat < 0.8 and sharp > 0.9, (flat, sharp)


def test_empirical_prior_is_fitted_per_domain(tmp_path):
    """Two domains, one mostly solved, one mostly mixed: each gets its own Beta, the solved
    one U-shaped (mass near p = 1), and an unseen prompt inherits its domain's odds."""
    easy = dataset([G] * 18 + [2, 2], "math")
    mixed = dataset([1, 2, 3, 2] * 5, "code", start=100)
    ctx = PluginContext(tmp_path, 0, {"math": easy, "code": mixed}, config=CONFIG)
    cur = HR(HR.Options(selection="step", step={"prior": "empirical"}), ctx)
    batch = fake_batch(easy[:16] + mixed[:16])
    cur.accept_groups(batch, fake_scores(batch))
    priors = cur.posterior.priors()
    a, b = priors["math"]
    assert a / (a + b) > 0.8 and b < 0.5  # mean near 1, U-shaped toward 1
    a, b = priors["code"]
    assert 0.4 < a / (a + b) < 0.6 and a + b <= G  # mixed: mean ~0.5, capped concentration
    w_easy, w_mixed = cur.posterior.weights([easy[17].id, mixed[17].id])  # both unseen
    assert w_easy < 0.5 < w_mixed
    # one all-correct group says "solved" far more firmly than under the flat prior
    flat = HR(HR.Options(selection="step"), ctx)
    flat.accept_groups(batch, fake_scores(batch))
    assert cur.posterior.weights([easy[0].id])[0] < 0.2 < flat.posterior.weights([easy[0].id])[0]


def test_empirical_prior_waits_for_enough_prompts_and_resumes_exactly(tmp_path):
    ks = [G, G, 4, 0, G, 2, G, G, 5, G, 0, G]
    cur = make_hr(tmp_path, ks, prior="empirical", empirical_min_prompts=8)
    batch = fake_batch(cur.pool.prompts[:4])
    cur.accept_groups(batch, fake_scores(batch))
    assert cur.posterior.priors()["math"] == (1.0, 1.0)  # 4 observed: still the fixed prior
    run_epochs(cur, range(2), 5)
    state = json.loads(json.dumps(cur.state_dict()))
    again = make_hr(tmp_path, ks, prior="empirical", empirical_min_prompts=8)
    again.load_state_dict(state)
    ids = [p.id for p in cur.pool.prompts]
    assert cur.posterior.priors() == again.posterior.priors() != {"math": (1.0, 1.0)}
    assert np.array_equal(cur.posterior.weights(ids), again.posterior.weights(ids))


def test_informative_shares_give_a_solved_domain_less_of_the_stage1_batch(tmp_path):
    data = {"math": dataset([G] * 10 + [2] * 2), "code": dataset([1, 2, 3] * 4, "code", 1000)}
    ctx = PluginContext(tmp_path, 0, data, config=CONFIG)

    def stage1_domains(shares: str) -> Counter:
        cur = TS(
            TS.Options(
                resampling="selection",
                switch={"after_epochs": 1},
                stage2_shares=shares,
                selection={"prior": "empirical", "power": 2.0, "min_weight": 0.01},
            ),
            ctx,
        )
        run_epochs(cur, range(3), 4)  # stage 0 learns that math is mostly solved
        assert cur.stage == 1
        return Counter(p.domain for e in range(3, 8) for p in _epoch(cur, e, 4))

    fixed, informative = stage1_domains("fixed"), stage1_domains("informative")
    assert fixed["math"] == fixed["code"]  # the paper's 50/50
    assert informative["code"] > 2 * informative["math"] > 0  # math still comes now and then
    with pytest.raises(pydantic.ValidationError, match="informative needs resampling"):
        TS.Options(stage2_shares="informative")


def _epoch(cur: Curriculum, epoch: int, n: int) -> list[Prompt]:
    cur.begin_epoch(epoch)
    got = [p for step in iter(lambda: serve(cur, n), []) for p in step]
    cur.end_epoch(epoch, None)
    return got


def test_a_domain_not_yet_observed_keeps_the_fixed_prior(tmp_path):
    """Stage 1's code prompts must not inherit stage 0's (solved) math prior."""
    math_prompts = dataset([G] * 16, "math")
    code = dataset([2] * 4, "code", start=100)
    ctx = PluginContext(tmp_path, 0, {"math": math_prompts, "code": code}, config=CONFIG)
    cur = HR(HR.Options(selection="step", step={"prior": "empirical"}), ctx)
    batch = fake_batch(math_prompts)
    cur.accept_groups(batch, fake_scores(batch))
    assert cur.posterior.priors()["math"][1] < 0.5  # math: solved, U-shaped toward 1
    a, b = cur.posterior.beta([code[0].id])
    assert (a[0], b[0]) == (1.0, 1.0)
