"""Registries where GRPO-family algorithms vary, looked up by name (as verl's
``register_adv_est`` / ``register_policy_loss``).

A new variant is one function and one registration::

    from srpo.algo import register_advantage

    @register_advantage("my_estimator")
    def my_estimator(rewards, group_ids, cfg):  # -> GroupAdvantages
        ...

and a run file selects it (``algorithm.advantage: my_estimator``). The compiled fused op
(``srpo.ops``) implements the built-in GRPO family — ``grpo`` advantages, the ``ppo_clip``
surrogate, KL ``k1``/``k2``/``k3`` and the three built-in aggregations; any other combination
runs in torch through these registries (``srpo.algo.grpo_loss_reference``). Registering at
import time of a plugin module makes a name available to run files that use that plugin.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class Registry(Generic[F]):
    """Name → function for one kind of algorithm piece; names are unique."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def add(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = fn
            return fn

        return add

    def get(self, name: str) -> F:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        """One-line message for a name that is not registered, with a suggestion."""
        close = difflib.get_close_matches(name, self._items, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; registered: {', '.join(self.names())}"

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


ADVANTAGES: Registry = Registry("advantage estimator")
POLICY_LOSSES: Registry = Registry("policy loss")
KL_PENALTIES: Registry = Registry("KL estimator")
LOSS_AGGREGATIONS: Registry = Registry("aggregation")

register_advantage = ADVANTAGES.register
register_policy_loss = POLICY_LOSSES.register
register_kl = KL_PENALTIES.register
register_aggregation = LOSS_AGGREGATIONS.register
