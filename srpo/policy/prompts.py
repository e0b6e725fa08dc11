"""Prompt text or chat messages to the token ids the policy and its samplers generate from.

Its own module because every sampler goes through it (``PolicyHandle.encode_prompt``) and it
depends only on the tokenizer and two run-file options, not on the model or the update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from transformers import PreTrainedTokenizerBase

from srpo.errors import SrpoError


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str | Sequence[Mapping[str, str]],
    use_chat_template: bool,
    system_prompt: str | None,
) -> list[int]:
    """Prompt token ids: a string, or chat messages (``[{"role", "content"}, ...]``),
    through the tokenizer's chat template when it has one (and the run uses it)."""
    if use_chat_template:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if system_prompt is not None and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": system_prompt}, *messages]
        ids = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=True
        )
        # transformers 5 returns a BatchEncoding (a Mapping, not a dict); older: a list
        if isinstance(ids, Mapping) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    if not isinstance(prompt, str):
        raise SrpoError(
            "prompt given as chat messages, but the policy uses no chat template "
            "(policy.chat_template is false, or the tokenizer has none)"
        )
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
