"""The history store: every rollout's outcome, appended each step, queried at epoch ends.

``HistoryStore`` writes one shard (one per rank), ``HistoryReader`` merges all shards and
answers the curricula (``epoch_summary``) and the CLI; ``rollout_columns`` turns a step's
rollouts into the records ``HistoryStore.append`` takes. Format: ``FORMAT.md``.

Modules: ``schema`` (record columns, flag bits), ``codecs`` (column encodings), ``frames``
(segment-file frames, checksums), ``manifest`` (file names, the shard manifest),
``segment`` (reading one segment file), ``repair`` (torn-tail and orphan cleanup),
``inputs`` (caller columns to on-disk dtypes), ``writer``, ``reader``, ``summary`` (the
per-prompt epoch summary), ``records``, ``errors``, ``synth`` (test data), ``cli``.
"""

from srpo.history.errors import HistoryCorruptError, HistoryError, NotAStoreError, Problem
from srpo.history.records import rollout_columns
from srpo.history.schema import FLAG_TRUNCATED, FLAG_VERIFIER_ERROR, FORMAT_VERSION
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
    "rollout_columns",
]
