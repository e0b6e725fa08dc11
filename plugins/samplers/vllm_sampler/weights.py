"""Weight sync into the engine, bounded in time, and the probe that proves it arrived.

The failures users meet with engine samplers are a sync that silently leaves the engine on
stale or base weights, and one that hangs. So the push runs in a watchdog thread with a
deadline (a hang becomes a one-line error), and a probe compares the engine's log-probs of
a fixed sequence with the policy's own: a stale engine fails it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from srpo.api import PluginError, PolicyHandle

#: Mean |engine − policy| log-prob over the probe's tokens that a complete sync stays under,
#: by the engine's dtype. float32: measured ~5e-6 mean (4e-5 max) on SmolLM2-135M; one
#: optimizer step at lr 1e-5 moves it by >1e-3, so the bound separates the two. Half
#: precision rounds every matmul to 8 (bf16) or 11 (fp16) mantissa bits in each engine's own
#: kernels, so their outputs differ by rounding alone: a looser, stated bound.
PROBE_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}

#: The probe: a fixed chat turn and answer, rendered with the policy's own template.
PROBE_QUESTION = "What is 12 times 13? Answer with the number."
PROBE_ANSWER = "12 times 13 is 156. Check: 12 times 10 is 120 and 12 times 3 is 36."


def run_with_deadline(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """``fn()`` in a daemon thread; ``PluginError`` if it has not returned after
    ``timeout_s`` (the thread is abandoned: a daemon never holds the process open)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    worker = threading.Thread(target=target, name=f"srpo-{what}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise PluginError(
            f"sampler vllm: {what} did not finish within {timeout_s:g} s (sync_timeout_s); "
            "the run stops with its last checkpoint kept"
        )
    if "error" in box:
        raise box["error"]
    return box.get("value")


def push_weights(llm: Any, policy: PolicyHandle) -> None:
    """The policy's weights into the engine's worker, in place: vLLM's ``reload_weights``
    runs the model's own ``load_weights`` (fusing q/k/v, gate/up as it does at load), so the
    names are the checkpoint's. The tied LM head is included (the state dict has it);
    the model skips what it ties. In a sharded (FSDP) run the full weights are gathered one
    parameter at a time as the engine consumes them, never the whole model at once. The
    prefix cache holds KV of the old weights: reset."""
    load_weights(llm, full_weights(policy))


def load_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """(name, tensor) pairs into an in-process engine's worker, then the prefix cache reset:
    the colocated sampler's push and the engine server's."""
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
    llm.reset_prefix_cache()


def full_weights(policy: PolicyHandle) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of every weight: the policy's own iterator when it has one (a
    sharded policy gathers each as it is read), else its model's state dict."""
    gather = getattr(policy, "full_weights", None)
    if gather is not None:
        return iter(gather())
    return ((name, t.detach()) for name, t in policy.model.state_dict().items())


def probe_tokens(policy: PolicyHandle) -> list[int]:
    """The probe sequence as token ids: the chat prompt, then the answer and EOS."""
    tok = policy.tokenizer
    answer = tok(PROBE_ANSWER, add_special_tokens=False)["input_ids"]
    return [*policy.encode_prompt(PROBE_QUESTION), *answer, int(tok.eos_token_id)]


@torch.no_grad()
def policy_logprobs(policy: PolicyHandle, ids: list[int]) -> torch.Tensor:
    """[len(ids) - 1] float64 log-probs of tokens 1.. under the policy at temperature 1."""
    x = torch.tensor([ids], device=policy.device)
    logits = policy.model(input_ids=x, use_cache=False).logits[0, :-1].double()
    target = torch.tensor(ids[1:], device=policy.device)[:, None]
    return torch.log_softmax(logits, dim=-1).gather(1, target).squeeze(1).cpu()


def engine_logprobs(llm: Any, ids: list[int]) -> torch.Tensor:
    """The same log-probs from the engine: its prompt log-probs of the whole sequence."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
    out = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
    got = out.prompt_logprobs  # [None, {token: Logprob}, ...], position 0 has no log-prob
    return torch.tensor(
        [got[i][t].logprob for i, t in enumerate(ids) if i > 0], dtype=torch.float64
    )


def probe_gap(
    logprobs_of: Callable[[list[int]], torch.Tensor], policy: PolicyHandle, ids: list[int]
) -> tuple[float, float]:
    """(mean, max) |engine − policy| log-prob over the probe's tokens; ``logprobs_of`` asks
    the engine (``engine_logprobs`` on an in-process one, an RPC to a server)."""
    was_training = policy.model.training
    policy.model.eval()
    try:
        mine = policy_logprobs(policy, ids)
    finally:
        policy.model.train(was_training)
    diff = (logprobs_of(ids) - mine).abs()
    return float(diff.mean()), float(diff.max())
