"""Fakes for driving the real kernel loop without a model: a sampler whose rollouts' correctness
is set per prompt (``meta["k"]`` of the G samples are correct), a verifier that reads it
back, a policy that does not train, and a logger that keeps every event."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from srpo import events as ev
from srpo.api import Logger, PluginContext, Sampler, Verifier
from srpo.config import AlgorithmSection
from srpo.kernel.loop import Kernel, KernelSettings
from srpo.kernel.roles import Roles
from srpo.types import Prompt, RolloutBatch, Score, Scores

G = 4


def dataset(ks: list[int], domain: str = "math", start: int = 0) -> list[Prompt]:
    """Prompt i has ``ks[i]`` correct rollouts out of G (G: too easy, 0: too hard)."""
    return [Prompt(start + i, domain, f"q{i}", "x", {"k": k}) for i, k in enumerate(ks)]


def fake_batch(prompts: list[Prompt], n: int = G) -> RolloutBatch:
    P = len(prompts)
    group = torch.arange(P).repeat_interleave(n)
    sample = torch.arange(n).repeat(P)
    right = [int(s) < prompts[int(g)].meta["k"] for g, s in zip(group, sample, strict=True)]
    return RolloutBatch(
        prompts=list(prompts),
        group=group,
        sample=sample,
        prompt_token_ids=[[1, 2] for _ in prompts],
        response_ids=torch.ones(P * n, 3, dtype=torch.int64),
        response_mask=torch.ones(P * n, 3, dtype=torch.bool),
        behaviour_logp=torch.zeros(P * n, 3),
        truncated=torch.zeros(P * n, dtype=torch.bool),
        response_text=["right" if r else "wrong" for r in right],
        temperature=1.0,
    )


def fake_scores(batch: RolloutBatch) -> Scores:
    return Scores.from_list([FakeVerifier.judge(t) for t in batch.response_text])


class FakeSampler(Sampler):
    def generate(self, prompts, n, *, greedy=False, seeds=None):
        return fake_batch(list(prompts), n)


class FakeVerifier(Verifier):
    @staticmethod
    def judge(text: str) -> Score:
        return Score(float(text == "right"), text == "right")

    def score(self, prompts, responses):
        return [self.judge(t) for t in responses]


class Collect(Logger):
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def on_event(self, event: ev.Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class FakePolicy:
    """Stands in for the trainer: the kernel reads its tokenizer's pad id and its algorithm
    section (group size, DAPO shaping), and calls ``update``."""

    tokenizer = SimpleNamespace(pad_token_id=0)
    algo = AlgorithmSection(group_size=G)

    def update(
        self, batch: RolloutBatch, scores: Scores, loss_mask: torch.Tensor | None = None
    ) -> dict[str, float]:
        return {}


def run_kernel(
    tmp_path: Path,
    curriculum: Any,
    *,
    per_step: int,
    epochs: int = 1,
    max_steps: int | None = None,
    history: bool = False,
) -> tuple[Kernel, Collect]:
    """Train with the real kernel loop over fake roles (and a real history store)."""
    ctx = PluginContext(run_dir=tmp_path, seed=0)
    log = Collect()
    domains = sorted(curriculum.context.datasets)
    roles = Roles(
        sampler=FakeSampler(None, ctx),
        verifiers={d: FakeVerifier(None, ctx) for d in domains},
        curriculum=curriculum,
        loggers=[log],
        fatal_loggers={0},
    )
    store = reader = None
    if history:
        from srpo.kernel.history_hook import open_history

        cfg = SimpleNamespace(history=SimpleNamespace(store_tokens=False))
        store, reader = open_history(tmp_path, cfg)
    settings = KernelSettings(G, per_step, epochs, max_steps, 0, 0, domains)
    kernel = Kernel(roles, FakePolicy(), settings, tmp_path, {}, {}, store, reader)
    try:
        kernel.run()
    finally:
        if store is not None:
            store.close()
    return kernel, log
