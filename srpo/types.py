"""Plain data that flows between roles: prompts, rollouts, scores.

Tensors are CPU torch tensors; everything per-rollout is indexed by the rollout index
``i in [0, N)``, and ``group[i]`` names the prompt (index into ``prompts``) it answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Prompt:
    """One dataset row as a training prompt.

    ``id`` is a stable u64 (same dataset row → same id across runs), so the history store
    and the curricula can talk about prompts without keeping their text.
    ``reference`` is what the domain's verifier checks against (a math answer, code tests).
    ``messages`` is set when the dataset gives the prompt as chat messages
    (``[{"role": ..., "content": ...}, ...]``); ``text`` is then the last user message, for
    verifiers and logs.
    """

    id: int
    domain: str
    text: str
    reference: Any
    meta: Mapping[str, Any] = field(default_factory=dict)
    messages: tuple[Mapping[str, str], ...] | None = None

    @property
    def chat(self) -> str | Sequence[Mapping[str, str]]:
        """What goes through the chat template: the messages if given, else the text."""
        return self.messages if self.messages is not None else self.text


@dataclass
class RolloutBatch:
    """G rollouts for each of P prompts, padded to the longest response ``T``."""

    prompts: list[Prompt]
    group: torch.Tensor  # [N] int64: index of the prompt in ``prompts``
    sample: torch.Tensor  # [N] int64: index of the rollout within its group
    prompt_token_ids: list[list[int]]  # [P] tokenized prompts (after any chat template)
    response_ids: torch.Tensor  # [N, T] int64, pad where mask is False
    response_mask: torch.Tensor  # [N, T] bool: real response tokens (EOS included)
    behaviour_logp: torch.Tensor  # [N, T] float32 log-probs of the sampling policy, 0 on pad
    truncated: torch.Tensor  # [N] bool: stopped by max_new_tokens, not by EOS
    response_text: list[str]  # [N] decoded responses (special tokens stripped)
    # The temperature the rollouts were sampled at (0 for greedy). The trainer computes its
    # log-probs at this same temperature, so importance ratios compare like with like; it is
    # part of what a sampler returns because only the sampler knows it.
    temperature: float
    # [N] int64: updates applied to the weights that sampled each rollout; set by the kernel
    # when generation runs ahead of training (run.max_staleness > 0), else None.
    policy_version: torch.Tensor | None = None

    @property
    def num_rollouts(self) -> int:
        return int(self.group.numel())

    @property
    def lengths(self) -> torch.Tensor:
        """[N] int64 response lengths in tokens."""
        return self.response_mask.sum(dim=1)

    def prompt_of(self, i: int) -> Prompt:
        return self.prompts[int(self.group[i])]

    def select_groups(self, keep: torch.Tensor) -> RolloutBatch:
        """Keep the groups (prompts) where ``keep[P]`` is True; renumbers groups densely."""
        keep = keep.to(torch.bool)
        new_index = torch.cumsum(keep.to(torch.int64), 0) - 1
        rows = keep[self.group]
        kept_prompts = [p for p, k in zip(self.prompts, keep.tolist(), strict=True) if k]
        kept_tokens = [t for t, k in zip(self.prompt_token_ids, keep.tolist(), strict=True) if k]
        return RolloutBatch(
            prompts=kept_prompts,
            group=new_index[self.group[rows]],
            sample=self.sample[rows],
            prompt_token_ids=kept_tokens,
            response_ids=self.response_ids[rows],
            response_mask=self.response_mask[rows],
            behaviour_logp=self.behaviour_logp[rows],
            truncated=self.truncated[rows],
            response_text=[t for t, r in zip(self.response_text, rows.tolist(), strict=True) if r],
            temperature=self.temperature,
            policy_version=None if self.policy_version is None else self.policy_version[rows],
        )

    @staticmethod
    def concat(batches: Sequence[RolloutBatch], pad_id: int) -> RolloutBatch:
        """Join batches (e.g. refill rounds of dynamic sampling) into one; repads to max T."""
        batches = [b for b in batches if b.num_rollouts > 0] or list(batches[:1])
        temperatures = {b.temperature for b in batches}
        if len(temperatures) > 1:
            raise ValueError(f"cannot join rollouts sampled at temperatures {sorted(temperatures)}")
        T = max(int(b.response_ids.shape[1]) for b in batches)

        def pad(x: torch.Tensor, value: Any) -> torch.Tensor:
            return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)

        versions = [b.policy_version for b in batches]
        if any(v is None for v in versions) and any(v is not None for v in versions):
            raise ValueError("cannot join rollouts with and without policy versions")
        offsets, prompts, tokens, total = [], [], [], 0
        for b in batches:
            offsets.append(total)
            total += len(b.prompts)
            prompts += b.prompts
            tokens += b.prompt_token_ids
        return RolloutBatch(
            prompts=prompts,
            group=torch.cat([b.group + o for b, o in zip(batches, offsets, strict=True)]),
            sample=torch.cat([b.sample for b in batches]),
            prompt_token_ids=tokens,
            response_ids=torch.cat([pad(b.response_ids, pad_id) for b in batches]),
            response_mask=torch.cat([pad(b.response_mask, False) for b in batches]),
            behaviour_logp=torch.cat([pad(b.behaviour_logp, 0.0) for b in batches]),
            truncated=torch.cat([b.truncated for b in batches]),
            response_text=[t for b in batches for t in b.response_text],
            temperature=batches[0].temperature,
            policy_version=None if versions[0] is None else torch.cat(versions),  # type: ignore[arg-type]
        )


@dataclass
class Score:
    """A verifier's verdict on one rollout. Verifiers return errors here instead of raising."""

    reward: float
    correct: bool
    breakdown: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Scores:
    """Verdicts for a whole RolloutBatch, as columns."""

    reward: torch.Tensor  # [N] float32
    correct: torch.Tensor  # [N] bool
    error: list[str | None]  # [N]
    breakdown: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N] float32

    @staticmethod
    def from_list(scores: Sequence[Score]) -> Scores:
        keys = sorted({k for s in scores for k in s.breakdown})
        return Scores(
            reward=torch.tensor([float(s.reward) for s in scores], dtype=torch.float32),
            correct=torch.tensor([bool(s.correct) for s in scores], dtype=torch.bool),
            error=[s.error for s in scores],
            breakdown={
                k: torch.tensor([float(s.breakdown.get(k, 0.0)) for s in scores]) for k in keys
            },
        )

    def select(self, rows: torch.Tensor) -> Scores:
        """Rows where ``rows[N]`` (bool) is True."""
        idx = rows.nonzero().flatten().tolist()
        return Scores(
            reward=self.reward[rows],
            correct=self.correct[rows],
            error=[self.error[i] for i in idx],
            breakdown={k: v[rows] for k, v in self.breakdown.items()},
        )

    @staticmethod
    def concat(parts: Sequence[Scores]) -> Scores:
        keys = sorted({k for p in parts for k in p.breakdown})
        return Scores(
            reward=torch.cat([p.reward for p in parts]),
            correct=torch.cat([p.correct for p in parts]),
            error=[e for p in parts for e in p.error],
            breakdown={
                k: torch.cat([p.breakdown.get(k, torch.zeros_like(p.reward)) for p in parts])
                for k in keys
            },
        )

    @property
    def num_errors(self) -> int:
        return sum(e is not None for e in self.error)


StateDict = dict[str, Any]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists → (ids [n, L], attention mask [n, L] int64), padded on the left.

    Left padding puts every sequence's last token in the same column, so generation and the
    response log-probs continue from one column for the whole batch.
    """
    n, width = len(seqs), max((len(s) for s in seqs), default=0)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask


@dataclass
class PromptSummary:
    """Per-prompt outcome over some epochs, as aligned numpy columns (one row per prompt).

    This is what history resampling decides from: ``n_correct == n`` is all-correct,
    ``n_correct == 0`` all-wrong, anything between mixed.
    """

    prompt_id: Any  # np.ndarray[uint64]
    n: Any  # np.ndarray[int64] rollouts seen
    n_correct: Any  # np.ndarray[int64]
    reward_mean: Any  # np.ndarray[float64]
    last_step: Any  # np.ndarray[int64] step of the most recent rollout
