"""A real history store filled with hand-made outcomes, and prompts to serve, for curriculum
tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from srpo.history import HistoryReader, HistoryStore
from srpo.types import Prompt

G = 4


def prompts(n: int, domain: str = "math", start: int = 0) -> list[Prompt]:
    return [Prompt(start + i, domain, f"q{start + i}", "1") for i in range(n)]


class Store:
    """A real history store in tmp; ``write(epoch, {id: n_correct_of_G})``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = HistoryStore(root, durable=False)
        self.step = 0

    def write(self, epoch: int, outcomes: dict[int, int]) -> None:
        for pid, nc in outcomes.items():
            correct = np.arange(G) < nc
            self.store.append(
                prompt_id=np.full(G, pid, dtype=np.uint64),
                epoch=epoch,
                step=self.step,
                sample=np.arange(G),
                domain=0,
                reward=correct.astype(np.float32),
                correct=correct.astype(np.uint8),
                length=5,
            )
            self.step += 1
        if outcomes:
            self.store.commit(self.step - 1)

    def reader(self) -> HistoryReader:
        return HistoryReader(self.root)


def drain(cur, n: int = 3) -> list[int]:
    out: list[int] = []
    while got := cur.next_prompts(n):
        out += [p.id for p in got]
    return out
