"""The policy update on the real tiny model: skipping micro-batches that cannot change the
weights is exact, and prompts given as chat messages or with a system prompt encode right."""

from __future__ import annotations

import pytest
import torch

from srpo.config import AlgorithmSection, PolicySection
from tests.support.tiny import TINY
from tests.support.tiny_update import tiny_policy, tiny_rollouts


def _policy(micro_batch_size: int = 4, **policy_options):
    return tiny_policy(micro_batch_size=micro_batch_size, **policy_options)


_rollouts = tiny_rollouts


# groups 0 and 2 are flat (all right / all wrong): with micro_batch_size 4, two of the four
# micro-batches have zero advantage everywhere
REWARDS = [1, 1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0]


@pytest.mark.parametrize(("mini_batches", "micro_batch_size"), [(1, 4), (2, 4), (1, 8)])
def test_skipping_flat_micro_batches_is_bit_identical(mini_batches, micro_batch_size):
    """Flat groups go to micro-batches of their own (also with 2 groups per micro-batch,
    where groups 0 and 2 are flat but not neighbours), which are then not run."""
    results = []
    for skip in (True, False):
        policy = _policy(
            micro_batch_size,
            skip_zero_advantage=skip,
            mini_batches=mini_batches,
            ppo_epochs=2,
        )
        batch, scores = _rollouts(policy, [float(r) for r in REWARDS])
        metrics = policy.update(batch, scores)
        weights = {k: v.clone() for k, v in policy.model.state_dict().items()}
        results.append((metrics, weights))
    (m_skip, w_skip), (m_full, w_full) = results
    assert all(torch.equal(w_skip[k], w_full[k]) for k in w_full)
    assert m_skip["skipped_token_frac"] > 0.3 and m_full["skipped_token_frac"] == 0.0
    for key in ("loss", "grad_norm", "clip_frac_low", "tokens", "zero_adv_group_frac"):
        assert m_skip[key] == pytest.approx(m_full[key], rel=1e-6, abs=1e-12), key


def test_a_mini_batch_of_only_flat_groups_still_steps_like_zero_gradients():
    """AdamW moves weights with zero gradients too (momentum): a fully skipped step must
    still be taken, exactly as running it would."""
    results = []
    for skip in (True, False):
        policy = _policy(skip_zero_advantage=skip)
        batch, scores = _rollouts(policy, [float(r) for r in REWARDS[::-1]])
        policy.update(batch, scores)  # a real step first, so AdamW has momentum
        flat = [1.0] * 8 + [0.0] * 8
        _, flat_scores = _rollouts(policy, flat)
        metrics = policy.update(batch, flat_scores)
        results.append((metrics, {k: v.clone() for k, v in policy.model.state_dict().items()}))
    (m_skip, w_skip), (_, w_full) = results
    assert m_skip["skipped_token_frac"] == 1.0
    assert all(torch.equal(w_skip[k], w_full[k]) for k in w_full)


def test_no_skip_with_a_kl_term():
    from srpo.algo import LossConfig

    assert LossConfig().zero_advantage_means_zero_gradient
    assert not LossConfig(kl_coef=0.1).zero_advantage_means_zero_gradient


TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_chat_messages_and_system_prompt_go_through_the_template(tmp_path):
    """A string prompt is one user message; a configured system prompt is added only where
    the prompt has none; ids are plain ints (transformers 5 returns a BatchEncoding)."""
    import shutil

    from transformers import AutoTokenizer

    from srpo.policy import Policy

    model = tmp_path / "model"
    shutil.copytree(TINY / "model", model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(model)

    def policy(**options):
        cfg = PolicySection(path=model, **options)
        return Policy(model, cfg, AlgorithmSection(), total_steps=1)

    plain, with_system = policy(), policy(system_prompt="Answer in boxed.")
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    ids = plain.encode_prompt("What is 2+2?")
    assert ids == plain.encode_prompt(msgs) and all(type(t) is int for t in ids)
    want = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert ids == tok(want, add_special_tokens=False)["input_ids"]
    text = tok.decode(with_system.encode_prompt("What is 2+2?"))
    assert text.startswith("<|system|>Answer in boxed.") and text.endswith("<|assistant|>")
    own = [{"role": "system", "content": "Be brief."}, *msgs]
    assert "Answer in" not in tok.decode(with_system.encode_prompt(own))
    assert (
        policy(chat_template=False).encode_prompt("What is 2+2?")
        == tok("What is 2+2?", add_special_tokens=False)["input_ids"]
    )


def test_fused_logprobs_match_the_full_logits_and_their_gradients():
    """The policy's log-probs through the fused linear op (no [N, T, V] logits) equal the
    eager log_softmax of the model's logits, and their gradients are as close to float64
    truth as eager float32's are (tied LM head here)."""
    out = {}
    for name, fused, dtype in (
        ("fused", True, None),
        ("eager", False, None),
        ("truth", False, torch.float64),
    ):
        policy = _policy(fused_logprobs=fused)
        batch, _ = _rollouts(policy, [float(r) for r in REWARDS])
        if dtype is not None:
            policy.model.to(dtype)
        batch.temperature = 0.7
        rows = torch.arange(batch.num_rollouts)
        policy.model.zero_grad()
        logp, entropy = policy.response_logprobs(policy.model, batch, rows, with_entropy=True)
        (logp * batch.response_mask).sum().backward()
        grads = {n: p.grad.double() for n, p in policy.model.named_parameters()}
        out[name] = (logp.detach().double(), entropy.double(), grads, batch.response_mask)
    (lf, ef, gf, m), (le, ee, ge, _), (_, _, gt, _) = out["fused"], out["eager"], out["truth"]
    torch.testing.assert_close(lf[m], le[m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ef[m], ee[m], rtol=1e-5, atol=1e-5)

    # float32 gradients through 4 layers: compare their global error against float64
    # truth (per-tensor maxima of tiny q/k gradients are noise, either way)
    def error(grads):
        diff = sum(float(((grads[n] - t) ** 2).sum()) for n, t in gt.items()) ** 0.5
        return diff / sum(float((t**2).sum()) for t in gt.values()) ** 0.5

    assert error(gf) <= 1.5 * error(ge) + 1e-6, (error(gf), error(ge))
