"""User-facing errors and warnings: one hierarchy, one exit-code table, one warnings channel.

Every error a user can cause or fix is an ``SrpoError`` and renders as one line that names
where the problem is; ``srpo`` prints it as ``srpo: error: ...`` and exits with the class's
``exit_code``:

====  ==========================================================================
code  meaning
====  ==========================================================================
0     the run completed (also when a signal arrived after it completed)
1     a plugin failed while the run was running (``PluginError``); checkpointed
      when the run had a consistent state to save
2     bad input, nothing written: run file, data, model directory, checkpoint,
      history store, report, a plugin that cannot be loaded or started
      (``ConfigError``, ``DataError``, ``CheckpointError``, ``HistoryError``,
      ``ReportError``, ``PluginStartError``, any other ``SrpoError``)
130   stopped by SIGINT (checkpointed; continue with ``--resume``)
143   stopped by SIGTERM (checkpointed; continue with ``--resume``)
====  ==========================================================================

Warnings — something the user should know that does not stop the run — all go through
``warn`` (Python's ``warnings`` machinery, category ``SrpoWarning``): filterable, testable
with ``pytest.warns``, and printed by ``srpo`` as ``srpo: warning: ...``. ``logging`` (the
``srpo.*``/``srpo_plugins.*`` loggers) carries debug diagnostics only, never a warning the
user must see.
"""

from __future__ import annotations

import warnings


class SrpoError(Exception):
    """An error the user can fix (bad run file, bad data, missing model). Exit code 2."""

    exit_code = 2


class ConfigError(SrpoError):
    """A run-file problem, located as ``FILE:LINE: key.path: message``."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        path: str | None = None,
    ) -> None:
        self.file, self.line, self.path, self.message = file, line, path, message
        where = file or "<config>"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {path + ': ' if path else ''}{message}")


class DataError(SrpoError):
    """A dataset problem, located as ``FILE:LINE: record ...: message`` (LINE: the JSONL line,
    or the 1-based row of a Parquet file or a ``datasets`` directory)."""


class OptionError(SrpoError):
    """Raised by a plugin's ``preflight`` about one of its options (``key``: a dotted path
    inside ``options``); the kernel re-raises it as a ``ConfigError`` at that key's line of the
    run file. Exit code 2."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class PluginError(SrpoError):
    """A plugin failed while the run was running; the message names the plugin. Exit 1."""

    exit_code = 1


class PluginStartError(PluginError):
    """A plugin could not be loaded or constructed — almost always its options, its
    package or its environment — before anything was written. Exit code 2.

    (A plugin that cannot be *found*, or whose options are invalid, is a ``ConfigError``.)
    """

    exit_code = 2


class SrpoWarning(UserWarning):
    """Category of every warning srpo and its plugins give (see ``warn``)."""


def warn(message: str, *, stacklevel: int = 2) -> None:
    """Tell the user something that does not stop the run: the one warnings channel."""
    warnings.warn(message, SrpoWarning, stacklevel=stacklevel + 1)


__all__ = [
    "ConfigError",
    "DataError",
    "PluginError",
    "PluginStartError",
    "SrpoError",
    "SrpoWarning",
    "warn",
]
