"""Opens the run's history store for the kernel: the writer, and readers for the curricula."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from srpo.history import HistoryReader, HistoryStore


def open_history(run_dir: Path, cfg: Any) -> tuple[HistoryStore, Callable[[], HistoryReader]]:
    """``(store, open_reader)`` for ``RUN_DIR/history``.

    ``open_reader()`` opens a fresh ``HistoryReader`` on what the store has committed; the
    reader is its own context manager and closes its files on exit, so at an epoch end::

        with open_reader() as reader:
            curriculum.end_epoch(epoch, reader)
    """
    from srpo.history import HistoryStore

    root = Path(run_dir) / "history"
    store = HistoryStore(root, store_tokens=cfg.history.store_tokens)

    def open_reader() -> HistoryReader:
        from srpo.history import HistoryReader

        return HistoryReader(root)

    return store, open_reader
