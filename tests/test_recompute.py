"""Activation checkpointing per pass (``policy.gradient_checkpointing``): which passes recompute
at which level, that recomputing changes no number, and that the selective level recomputes
only the elementwise work."""

from __future__ import annotations

import pytest
import torch

from srpo.policy.packing import token_slots
from srpo.policy.recompute import ActivationRecompute, activation_bytes_per_token
from tests.support.tiny_update import tiny_policy, tiny_rollouts

# every group mixed: no pass is skipped, so each row's pass runs
REWARDS = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _update(**options) -> tuple[dict, dict[str, torch.Tensor]]:
    policy = tiny_policy(max_tokens_per_micro_batch=1, **options)  # one row per pass
    batch, scores = tiny_rollouts(policy, REWARDS)
    metrics = policy.update(batch, scores)
    return metrics, {k: v.clone() for k, v in policy.model.state_dict().items()}


def _pass_slots() -> list[int]:
    policy = tiny_policy()
    batch, _ = tiny_rollouts(policy, REWARDS)
    return [token_slots(batch, torch.tensor([r])).padded for r in range(batch.num_rollouts)]


def test_auto_recomputes_exactly_the_passes_over_the_allowance_and_changes_no_number():
    slots = sorted(_pass_slots())
    assert slots[0] < slots[-1], "the rollouts should differ in length"
    threshold = (slots[len(slots) // 2 - 1] + slots[len(slots) // 2]) / 2
    policy = tiny_policy()
    per_token = activation_bytes_per_token(policy.model.config, torch.float32)
    selective = activation_bytes_per_token(policy.model.config, torch.float32, "selective")
    # an allowance where the short half fits selective and the long half only full
    tiers = selective * threshold / 1e9
    assert tiers * 1e9 / per_token < slots[0]
    runs = {
        "off": _update(gradient_checkpointing=False),
        "on": _update(gradient_checkpointing=True),
        "selective": _update(gradient_checkpointing="selective"),
        "auto, room for all": _update(gradient_checkpointing="auto", activation_memory_gb=100.0),
        "auto, half over": _update(
            gradient_checkpointing="auto", activation_memory_gb=per_token * threshold / 1e9
        ),
        "auto, two heavier levels": _update(
            gradient_checkpointing="auto", activation_memory_gb=tiers
        ),
    }
    long_half = sum(s > threshold for s in slots) / len(slots)
    expected = {  # (full, selective) shares of the passes
        "off": (0.0, 0.0),
        "on": (1.0, 0.0),
        "selective": (0.0, 1.0),
        "auto, room for all": (0.0, 0.0),
        "auto, half over": (0.0, long_half),
        "auto, two heavier levels": (long_half, 1.0 - long_half),
    }
    assert 0 < long_half < 1
    _, reference = runs["off"]
    for name, (metrics, weights) in runs.items():
        full, sel = expected[name]
        assert metrics["memory/recompute_frac"] == pytest.approx(full), name
        assert metrics["memory/selective_frac"] == pytest.approx(sel), name
        assert all(torch.equal(weights[k], reference[k]) for k in reference), name
        assert metrics["loss"] == runs["off"][0]["loss"], name


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the aten ops run while active, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def _backward_ops(setting) -> dict[str, int]:
    """The ops the backward of one forward pass runs (recomputation included)."""
    policy = tiny_policy(gradient_checkpointing=setting)
    model = policy.model
    model.train()
    policy.recompute.use_for(1)
    ids = torch.arange(1, 13).unsqueeze(0)
    loss = model(input_ids=ids, use_cache=False).logits.float().square().mean()
    with _OpCounter() as counter:
        loss.backward()
    return counter.counts


def test_selective_recomputes_the_elementwise_work_and_no_matrix_multiply():
    """The level's whole point: the expensive ops are not run again in backward (full
    recompute runs every forward multiply a second time), the cheap ones are."""
    none, selective, full = (_backward_ops(s) for s in (False, "selective", True))
    mm = lambda counts: counts.get("mm", 0) + counts.get("addmm", 0) + counts.get("bmm", 0)  # noqa: E731
    assert mm(selective) == mm(none) < mm(full)
    assert none.get("rsqrt", 0) == 0  # RMSNorm's forward op: only a recompute runs it
    assert 0 < selective.get("rsqrt", 0) == full.get("rsqrt", 0)


def test_the_switch_flips_every_decoder_layer_and_only_when_the_pass_changes_side():
    policy = tiny_policy(gradient_checkpointing="auto", activation_memory_gb=1.0)
    recompute = policy.recompute
    assert recompute.layers, "the tiny Llama's decoder layers are checkpointable"
    recompute.begin_update(policy.device)
    limit, heavier = recompute.limits["none"], recompute.limits["selective"]
    config = policy.model.config
    assert limit == pytest.approx(1e9 / activation_bytes_per_token(config, torch.float32))
    assert heavier == pytest.approx(
        1e9 / activation_bytes_per_token(config, torch.float32, "selective")
    )
    assert recompute.use_for(int(limit) + 1) == "selective"
    assert all(layer.gradient_checkpointing for layer in recompute.layers)
    assert recompute.use_for(int(heavier) + 1) == "full"
    assert all(layer.gradient_checkpointing for layer in recompute.layers)
    assert recompute.use_for(int(limit)) == "none"
    assert not any(layer.gradient_checkpointing for layer in recompute.layers)


def test_auto_without_an_allowance_takes_half_the_available_memory(monkeypatch):
    from srpo.policy import recompute as module

    policy = tiny_policy()
    assert policy.cfg.gradient_checkpointing == "auto"
    monkeypatch.setattr(module, "available_bytes", lambda device: 8_000_000_000)
    policy.recompute.begin_update(policy.device)
    per_token = activation_bytes_per_token(policy.model.config, torch.float32)
    assert policy.recompute.limits["none"] == pytest.approx(4e9 / per_token)


def test_the_estimate_counts_layers_widths_and_dtype():
    """SmolLM2-135M's shape: ~2.1 MB per token in float32 (measured: ~1.8, see RESULTS)."""
    from transformers import LlamaConfig

    smollm2 = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
    )
    f32 = activation_bytes_per_token(smollm2, torch.float32)
    assert f32 == (18 * 576 + 4 * 1536 + 4 * 192) * 30 * 4
    assert activation_bytes_per_token(smollm2, torch.bfloat16) == f32 // 2
    selective = activation_bytes_per_token(smollm2, torch.float32, "selective")
    assert selective == (8 * 576 + 3 * 1536 + 2 * 192) * 30 * 4  # 1.15 MB (measured ~0.93)
    full = activation_bytes_per_token(smollm2, torch.float32, "full")
    assert full == (576 * 30 + 18 * 576 + 4 * 1536 + 4 * 192) * 4  # measured ~0.15 MB
    assert full < selective < f32


def test_forcing_it_on_a_model_without_checkpointing_is_a_one_line_error():
    model = torch.nn.Linear(2, 2)
    for forced in (True, "selective"):
        with pytest.raises(ValueError, match="does not support gradient checkpointing"):
            ActivationRecompute(model, forced, None)
    assert ActivationRecompute(model, "auto", None).use_for(10**9) == "none"


def test_the_setting_takes_true_false_selective_or_auto_and_says_so():
    from pydantic import ValidationError

    from srpo.config import PolicySection

    for value in (True, False, "auto", "selective"):
        assert PolicySection(path="m", gradient_checkpointing=value).gradient_checkpointing == value
    with pytest.raises(ValidationError, match=r"true, false, selective or auto \(got 'maybe'\)"):
        PolicySection(path="m", gradient_checkpointing="maybe")
