"""Plugin discovery through ``importlib.metadata`` entry points.

First-party plugins are found exactly like third-party ones. A plugin that fails to import
or does not implement its role is recorded with its error instead of raising, so one broken
package never breaks ``srpo`` for the plugins that are fine; the error surfaces when that
plugin is asked for by name, or in ``srpo plugins list``.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
from dataclasses import dataclass
from functools import cache

from srpo.api import ENTRY_POINT_GROUPS, PLUGIN_API_VERSION, ROLE_BASES, Plugin
from srpo.errors import PluginStartError


@dataclass(frozen=True)
class PluginInfo:
    role: str
    name: str
    target: str  # "module:attr"
    distribution: str | None
    version: str | None
    cls: type[Plugin] | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.cls is not None


def _check_class(obj: object, role: str) -> str | None:
    """Why ``obj`` cannot serve as a ``role`` plugin, or None if it can."""
    base = ROLE_BASES[role]
    if not isinstance(obj, type) or not issubclass(obj, base):
        return f"{obj!r} is not a subclass of srpo.api.{base.__name__}"
    if getattr(obj, "__abstractmethods__", None):
        return f"does not implement {', '.join(sorted(obj.__abstractmethods__))}"
    if obj.api_version != PLUGIN_API_VERSION:
        return f"written for plugin API {obj.api_version}, this srpo provides {PLUGIN_API_VERSION}"
    return None


def _load(ep: md.EntryPoint, role: str) -> PluginInfo:
    dist = getattr(ep, "dist", None)
    name = dist.metadata["Name"] if dist is not None else None
    version = dist.version if dist is not None else None
    try:
        obj = ep.load()
    except Exception as e:  # a broken plugin must not break discovery of the others
        return PluginInfo(
            role, ep.name, ep.value, name, version, None, f"import failed: {type(e).__name__}: {e}"
        )
    problem = _check_class(obj, role)
    return PluginInfo(role, ep.name, ep.value, name, version, None if problem else obj, problem)


@cache
def discover() -> tuple[PluginInfo, ...]:
    """Every registered plugin of every role (loaded once per process)."""
    found: list[PluginInfo] = []
    for role, group in ENTRY_POINT_GROUPS.items():
        seen: set[str] = set()
        for ep in sorted(md.entry_points(group=group), key=lambda e: e.name):
            if ep.name in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add(ep.name)
            found.append(_load(ep, role))
    return tuple(found)


def refresh() -> None:
    """Forget cached discovery (after installing a plugin package in-process)."""
    discover.cache_clear()


def names(role: str) -> list[str]:
    return [p.name for p in discover() if p.role == role]


def get(role: str, name: str) -> type[Plugin]:
    """The plugin class, or a PluginStartError that says why not (and what was meant)."""
    for info in discover():
        if info.role == role and info.name == name:
            if info.cls is None:
                raise PluginStartError(
                    f"{role} plugin {name!r} ({info.target}, from "
                    f"{info.distribution}) is broken: {info.error}"
                )
            return info.cls
    available = names(role)
    close = difflib.get_close_matches(name, available, n=1)
    hint = (
        f"did you mean {close[0]!r}?" if close else f"available: {', '.join(available) or 'none'}"
    )
    raise PluginStartError(f"unknown {role} plugin {name!r} ({hint})")
