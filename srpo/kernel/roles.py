"""The plugins of a run, by role, and the two things the kernel does with all of them at
once: deliver events to the loggers, and close everything at the end."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from srpo.api import (
    Curriculum,
    Event,
    Logger,
    Plugin,
    PluginError,
    PolicyHandle,
    Sampler,
    Verifier,
    warn,
)


@dataclass
class Roles:
    sampler: Sampler
    verifiers: dict[str, Verifier]
    curriculum: Curriculum
    loggers: list[Logger]
    fatal_loggers: set[int] = field(default_factory=set)  # indices whose failure ends the run

    def all(self) -> list[Plugin]:
        return [self.sampler, *self.verifiers.values(), self.curriculum, *self.loggers]


def sync_sampler(sampler: Sampler, policy: PolicyHandle) -> dict[str, float]:
    """Bring the sampler to the policy's current weights; the numbers it reports.

    A sampler that cannot sync (a timeout, a failed probe) stops the run: generating from
    stale weights would train on the wrong behaviour policy without a trace. Its own
    ``PluginError`` keeps its message; anything else is named after the sampler.
    """
    try:
        got: Mapping[str, float] | None = sampler.sync(policy)
    except PluginError:
        raise
    except Exception as e:
        name = type(sampler).__name__
        raise PluginError(f"sampler {name} failed to sync: {type(e).__name__}: {e}") from e
    return {k: float(v) for k, v in (got or {}).items()}


def takes_seeds(sampler: Any) -> bool:
    """Whether the sampler's ``generate`` accepts ``seeds=`` (third-party samplers written
    before it existed do not; they sample from their own RNG)."""
    try:
        params = inspect.signature(sampler.generate).parameters
    except (TypeError, ValueError):
        return False
    return "seeds" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class EventDispatch:
    """Delivers events to the loggers in order. A logger that raises is disabled; if it was
    fatal, the failure is kept (not raised: the step in flight finishes, so the run ends
    with a checkpoint of a complete step and can be resumed)."""

    def __init__(self, roles: Roles) -> None:
        self.roles = roles
        self.failure: PluginError | None = None

    def emit(self, event: Event) -> None:
        loggers = self.roles.loggers
        for i, logger in enumerate(list(loggers)):
            try:
                logger.on_event(event)
            except Exception as e:
                name = type(logger).__name__
                loggers[i] = _Disabled(logger)
                if i not in self.roles.fatal_loggers:
                    warn(f"logger {name} failed on {event.kind} and is disabled: {e}")
                elif self.failure is None:
                    self.failure = PluginError(
                        f"logger {name} failed on {event.kind}: {type(e).__name__}: {e}"
                    )
                    self.failure.__cause__ = e


class _Disabled(Logger):
    """Stands in for a logger after it failed once."""

    def __init__(self, inner: Logger) -> None:
        self.inner = inner

    def on_event(self, event: Event) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        try:  # keep what the logger had done (e.g. its file position) for a resume
            return self.inner.state_dict()
        except Exception:
            return {}

    def close(self) -> None:
        self.inner.close()


def close_plugins(plugins: Iterable[Plugin]) -> None:
    """Close every plugin, even if some fail to close (that must not hide the run's own
    outcome: it becomes a warning)."""
    for plugin in plugins:
        try:
            plugin.close()
        except Exception as e:
            warn(f"closing {type(plugin).__name__} failed: {e}")
