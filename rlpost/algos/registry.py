"""A name -> function table, so config strings pick implementations (`algo.advantage: grpo`).

Each registry knows the config field that selects from it, so an unknown name fails with one line that names
the field and lists the valid choices, instead of a KeyError deep inside a Ray actor. An entry may carry traits
(`register("gae", needs_values=True)`): facts about it that start-up validation checks the config against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from rlpost.config import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Functions registered under names; `kind` and `field` only shape the error message."""

    def __init__(self, kind: str, field: str) -> None:
        self.kind = kind
        self.field = field
        self._fns: dict[str, Callable[..., Any]] = {}
        self._traits: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **traits: Any) -> Callable[[F], F]:
        """Decorator: store the function under `name` (with its traits) and return it unchanged."""

        def deco(fn: F) -> F:
            if name in self._fns:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._fns[name].__qualname__})")
            self._fns[name] = fn
            self._traits[name] = traits
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._fns:
            choices = ", ".join(self.names())
            raise ConfigError(f"{self.field}={name!r} is not a known {self.kind}; choose one of: {choices}")
        return self._fns[name]

    def traits(self, name: str) -> dict[str, Any]:
        """The traits `name` was registered with ({} if none); unknown names fail like `get`."""
        self.get(name)
        return dict(self._traits[name])

    def names(self) -> list[str]:
        return sorted(self._fns)

    def __contains__(self, name: object) -> bool:
        return name in self._fns

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.field!r}, names={self.names()})"
