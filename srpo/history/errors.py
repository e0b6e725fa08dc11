"""What can go wrong with a store, and where: the error classes and located problems."""

from __future__ import annotations

from dataclasses import dataclass

from srpo.errors import SrpoError


class HistoryError(SrpoError):
    """Base of the store's errors (bad input: exit code 2)."""


class HistoryCorruptError(HistoryError):
    """A checksum or structure check failed (raised in strict mode and by the writer)."""


class NotAStoreError(HistoryError):
    """The directory holds no history store."""


@dataclass(frozen=True)
class Problem:
    """One detected corruption, located as precisely as the format allows."""

    shard: int
    segment: str
    block: int | None
    offset: int | None
    message: str

    def __str__(self) -> str:
        where = self.segment
        if self.block is not None:
            where += f" block {self.block}"
        if self.offset is not None:
            where += f" @{self.offset}"
        return f"shard {self.shard}: {where}: {self.message}"


class BlockCorruptError(HistoryCorruptError):
    """A block failed a check; carries where, for reporting."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem
