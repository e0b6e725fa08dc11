"""Opens the run's history store for the kernel (writer) and the curricula (reader)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def open_history(run_dir: Path, cfg: Any) -> tuple[Any, Any]:
    from srpo.history import HistoryStore

    root = run_dir / "history"
    store = HistoryStore(root, store_tokens=cfg.history.store_tokens)
    return store, _LazyReader(root)


class _LazyReader:
    """A reader opened when asked (at an epoch end), so it sees everything committed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __getattr__(self, name: str) -> Any:
        from srpo.history import HistoryReader

        return getattr(HistoryReader(self.root), name)
