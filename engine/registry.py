"""Explicit name -> object registries that reject duplicate names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from engine.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict filled through `register`, which refuses a name that is already taken."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise KeyError(f"unknown {self.kind} {name!r} (known: {known})") from None

    def choose(self, name: str, key: str) -> T:
        """`get` for a user's choice: an unknown name is a ConfigError on config key `key`."""
        if name not in self._items:
            known = ", ".join(sorted(self._items))
            raise ConfigError(key, f"unknown {name!r}; use one of {known}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
