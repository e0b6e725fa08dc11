"""User-facing errors: each renders as one line that names where the problem is."""

from __future__ import annotations


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
    """A dataset problem, located as ``FILE:LINE: record ...: message``."""


class PluginError(SrpoError):
    """A plugin failed to load, construct or run; the message names the plugin."""
