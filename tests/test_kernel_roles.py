"""What the kernel assumes of roles, on the real tiny model: the sampler says its
temperature, roles take overrides themselves, and a failed start closes what was built."""

from __future__ import annotations

import pytest
import torch

from srpo.api import PluginError, Sampler


class ThirdPartySampler(Sampler):
    """A sampler from elsewhere: no ``temperature`` attribute for the kernel to read; it
    delegates generation to an hf sampler at its own temperature."""

    def __init__(self, inner: Sampler, claim: float | None = None) -> None:
        self.inner, self.claim = inner, claim
        self.options = inner.options

    def generate(self, prompts, n, *, greedy=False, seeds=None):
        batch = self.inner.generate(prompts, n, greedy=greedy)
        if self.claim is not None and not greedy:
            batch.temperature = self.claim  # lie about it, to show the check can fail
        return batch


def _kernel(write_config, overwrite=False, **overrides):
    from srpo.config import load_config
    from srpo.kernel.build import build

    path = write_config(**{"run.max_steps": 1, "eval.datasets": {}, **overrides})
    return build(load_config(path), overwrite=overwrite)


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


class SyncReporting(Sampler):
    """Delegates generation; its ``sync`` reports numbers, or fails, as an engine's might."""

    def __init__(self, inner: Sampler, error: Exception | None = None) -> None:
        self.inner, self.error, self.synced_weights = inner, error, []
        self.options = inner.options

    def generate(self, prompts, n, *, greedy=False, seeds=None):
        return self.inner.generate(prompts, n, greedy=greedy)

    def sync(self, policy):
        if self.error is not None:
            raise self.error
        w = next(policy.model.parameters()).detach().clone()
        self.synced_weights.append(w)
        return {"sync/probe_gap": 1e-6 * len(self.synced_weights)}


def test_sync_metrics_reach_the_step_and_a_failed_sync_stops_the_run(write_config):
    from srpo.events import StepEnd
    from srpo.kernel.build import close_roles
    from tests.support.kernel import Collect

    kernel = _kernel(write_config)
    log = Collect()
    kernel.roles.loggers.append(log)
    kernel.roles.sampler = sampler = SyncReporting(kernel.roles.sampler)
    try:
        kernel.run()
    finally:
        close_roles(kernel)
    (step,) = log.of(StepEnd)
    assert step.metrics["sync/probe_gap"] == 1e-6 and step.metrics["time/sync"] >= 0
    # the weights the sampler saw are the updated ones (sync runs after the update)
    assert torch.equal(sampler.synced_weights[0], next(kernel.policy.model.parameters()))

    kernel = _kernel(write_config, overwrite=True)
    kernel.roles.sampler = SyncReporting(kernel.roles.sampler, RuntimeError("engine gone"))
    try:
        with pytest.raises(PluginError, match=r"^sampler SyncReporting failed to sync: "):
            kernel.run()
        kernel.roles.sampler.error = PluginError("sampler vllm: sync probe failed")
        with pytest.raises(PluginError, match=r"^sampler vllm: sync probe failed$"):
            kernel.run()
    finally:
        close_roles(kernel)


def test_resume_syncs_the_sampler_to_the_checkpoint_weights(write_config, monkeypatch):
    """An engine with its own copy of the weights must get the checkpoint's after a resume,
    before the first step: the kernel syncs right after loading them."""
    from srpo.config import load_config
    from srpo.kernel import build as build_mod
    from srpo.kernel.build import build, close_roles

    path = write_config(**{"run.max_steps": 1, "eval.datasets": {}})
    kernel = build(load_config(path))
    try:
        kernel.run()
        trained = next(kernel.policy.model.parameters()).detach().clone()
    finally:
        close_roles(kernel)
    synced = []
    real = build_mod.sync_sampler

    def spy(sampler, policy):
        synced.append(next(policy.model.parameters()).detach().clone())
        return real(sampler, policy)

    monkeypatch.setattr(build_mod, "sync_sampler", spy)
    resumed = build(load_config(path), resume="auto")
    close_roles(resumed)
    assert len(synced) == 1 and torch.equal(synced[0], trained)
