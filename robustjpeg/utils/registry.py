"""Name -> factory registries shared by datasets, models and attacks (timm style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from robustjpeg.errors import UnknownName

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories; unknown names raise an error listing the known ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def wrap(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = fn
            return fn

        return wrap

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._items[name]

    def create(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
