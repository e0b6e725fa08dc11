"""What the kernel assumes of roles, on the real tiny model: the sampler says its
temperature, roles take overrides themselves, and a failed start closes what was built."""

from __future__ import annotations

import pytest

from srpo.api import PluginError, Sampler


class ThirdPartySampler(Sampler):
    """A sampler from elsewhere: no ``temperature`` attribute for the kernel to read; it
    delegates generation to an hf sampler at its own temperature."""

    def __init__(self, inner: Sampler, claim: float | None = None) -> None:
        self.inner, self.claim = inner, claim
        self.options = inner.options

    def generate(self, prompts, n, *, greedy=False):
        batch = self.inner.generate(prompts, n, greedy=greedy)
        if self.claim is not None and not greedy:
            batch.temperature = self.claim  # lie about it, to show the check can fail
        return batch


def _kernel(write_config, **overrides):
    from srpo.config import load_config
    from srpo.kernel.build import build

    path = write_config(**{"run.max_steps": 1, "eval.datasets": {}, **overrides})
    return build(load_config(path))


@pytest.mark.parametrize(("claim", "matches"), [(None, True), (1.0, False)])
def test_a_third_party_sampler_trains_at_the_temperature_it_sampled_at(
    write_config, claim, matches
):
    """Sampled at 0.5: the trainer's log-probs of the sampled tokens equal the behaviour
    log-probs only when computed at 0.5, which the batch, not the sampler object, says."""
    from srpo.kernel.build import close_roles

    kernel = _kernel(write_config, **{"sampler.options.temperature": 0.5})
    inner = kernel.roles.sampler
    assert not hasattr(inner, "temperature")
    kernel.roles.sampler = ThirdPartySampler(inner, claim)
    metrics = {}
    kernel.policy_update = kernel.policy.update

    def update(batch, scores, loss_mask=None):
        out = kernel.policy_update(batch, scores, loss_mask=loss_mask)
        metrics.update(out)
        return out

    kernel.policy.update = update
    try:
        kernel.run()
    finally:
        close_roles(kernel)
    gap = metrics["behaviour_logp_gap"]
    assert (gap < 1e-3) if matches else (gap > 1e-2), gap


def test_setup_failure_after_plugins_are_built_closes_them(write_config, monkeypatch):
    """The history store cannot be opened: every plugin built so far is closed before the
    error reaches the user (no worker pools or sandboxes left behind)."""
    from srpo.api import Plugin
    from srpo.config import load_config
    from srpo.errors import SrpoError
    from srpo.kernel import build as build_mod

    closed: list[str] = []
    built: list[Plugin] = []
    real_construct = build_mod._construct

    def construct(kind, cls, options, ctx):
        plugin = real_construct(kind, cls, options, ctx)
        real_close = plugin.close
        plugin.close = lambda: (closed.append(type(plugin).__name__), real_close())[1]
        built.append(plugin)
        return plugin

    monkeypatch.setattr(build_mod, "_construct", construct)

    def broken_history(run_dir, cfg):
        raise SrpoError(f"{run_dir}/history: cannot open the history store")

    path = write_config(**{"run.max_steps": 1})
    with pytest.raises(SrpoError, match="cannot open the history store"):
        build_mod.build(load_config(path), history_factory=broken_history)
    assert len(built) >= 4 and sorted(closed) == sorted(type(p).__name__ for p in built)


def test_an_invalid_stage_override_names_stage_role_and_key(write_config):
    kernel = _kernel(write_config)
    kernel.roles.curriculum.overrides = lambda: {"sampler": {"temperature": -1.0}}
    kernel._applied_stage = None
    try:
        with pytest.raises(
            PluginError,
            match=r"^curriculum stage 0 override "
            r"sampler\.options\.temperature: Input should be greater than 0",
        ):
            kernel._apply_stage_overrides()
        kernel.roles.curriculum.overrides = lambda: {"algorithm": {"kl_coef": 0.1}}
        kernel._applied_stage = None
        with pytest.raises(PluginError, match=r"algorithm\.kl_coef: a stage can turn the KL"):
            kernel._apply_stage_overrides()
    finally:
        from srpo.kernel.build import close_roles

        close_roles(kernel)


def test_verifier_errors_cost_samples_but_a_plugin_error_stops_the_run(tmp_path):
    """A verifier that raises costs its samples their reward (counted as errors); one that
    raises PluginError (e.g. with ``fail_fast``) means the run must stop."""
    from srpo.api import PluginContext, Prompt, Verifier
    from srpo.kernel.verify import verify_batch
    from tests.support.batches import make_batch

    class Raises(Verifier):
        def __init__(self, error: Exception) -> None:
            super().__init__(Verifier.Options(), PluginContext(run_dir=tmp_path, seed=0))
            self.error = error

        def score(self, prompts, responses):
            raise self.error

    batch = make_batch([Prompt(1, "math", "q", "1")], [0, 0], ["a", "b"])
    scores = verify_batch({"math": Raises(ValueError("oops"))}, batch)
    assert scores.reward.tolist() == [0.0, 0.0] and scores.num_errors == 2
    assert scores.error[0] == "verifier raised ValueError: oops"
    with pytest.raises(PluginError, match="stop"):
        verify_batch({"math": Raises(PluginError("stop"))}, batch)
