"""The history store: every rollout's outcome, appended each step, queried at epoch ends.

``HistoryStore`` writes one shard (one per rank), ``HistoryReader`` merges all shards and
answers the curricula (``epoch_summary``) and the CLI. Format: ``FORMAT.md``.
"""

from srpo.history.format import (
    FLAG_TRUNCATED,
    FLAG_VERIFIER_ERROR,
    FORMAT_VERSION,
    HistoryCorruptError,
    HistoryError,
    NotAStoreError,
)
from srpo.history.segment import Problem
from srpo.history.writer import HistoryStore


def __getattr__(name: str):
    # the reader returns srpo.types.PromptSummary, which imports torch: load it lazily so
    # that writers (and crash-test children) start fast
    if name == "HistoryReader":
        from srpo.history.reader import HistoryReader

        return HistoryReader
    raise AttributeError(name)


__all__ = [
    "FLAG_TRUNCATED",
    "FLAG_VERIFIER_ERROR",
    "FORMAT_VERSION",
    "HistoryCorruptError",
    "HistoryError",
    "HistoryReader",
    "HistoryStore",
    "NotAStoreError",
    "Problem",
]
