"""One registry type for every axis a recipe can name: runtimes, prune methods, quantization schemes, tasks.

The pattern of torchao's handler registry and timm's model registry: implementations register themselves on
import, every dispatch is a lookup, and the names a recipe may use, the CLI's choices, the dashboard's pickers
and the tests' parameter lists are all read from here, so they cannot disagree.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from engine.core.errors import RecipeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to implementations, in registration order. Registering a name twice is an error (two modules
    claiming one name would make dispatch depend on import order)."""

    def __init__(self, axis: str, field: str) -> None:
        self.axis = axis  # what one entry is, for messages: "runtime", "prune method"
        self.field = field  # the recipe field that names an entry, for messages: "runtime", "prune.method"
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """`registry.register("eager", Eager())`, or as a decorator: `@registry.register("eager")`."""
        if entry is not None:
            return self._add(name, entry)
        return lambda e: self._add(name, e)

    def _add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.axis} {name!r} is registered twice "
                             f"({self._entries[name]!r} and {entry!r}): give the new one another name")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry of `name`; an unknown name is a RecipeError naming the field and the allowed names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise RecipeError(f"{self.field}={str(name)[:60]!r} is not allowed: choose one of "
                              f"{', '.join(self._entries)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __repr__(self) -> str:
        return f"Registry({self.axis}: {', '.join(self._entries)})"
