"""One registry type for every axis a recipe can name: runtimes, prune methods, quantization schemes, tasks.

The pattern of torchao's handler registry and timm's model registry: implementations register themselves on
import, every dispatch is a lookup, and the names a recipe may use, the CLI's choices, the dashboard's pickers
and the tests' parameter lists are all read from here, so they cannot disagree.
"""
from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

from engine.core.errors import RecipeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names to implementations, in registration order. Registering a name twice is an error (two modules
    claiming one name would make dispatch depend on import order)."""

    def __init__(self, axis: str, field: str, fill: str | None = None) -> None:
        self.axis = axis  # what one entry is, for messages: "runtime", "prune method"
        self.field = field  # the recipe field that names an entry, for messages: "runtime", "prune.method"
        # The module whose import registers the built-in entries. A registry lives in the lowest layer that
        # names its entries (the Recipe validates against it); its implementations live higher up and are
        # imported on first use, so `core` never imports them by name. Filling modules import no torch at
        # import time: the dashboard's server process validates recipes without loading it.
        self._fill = fill
        self._entries: dict[str, T] = {}

    def _filled(self) -> dict[str, T]:
        if self._fill is not None:
            fill, self._fill = self._fill, None
            importlib.import_module(fill)
        return self._entries

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
            return self._filled()[name]
        except (KeyError, TypeError):
            raise RecipeError(f"{self.field}={str(name)[:60]!r} is not allowed: choose one of "
                              f"{', '.join(self._filled())}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._filled())

    def __contains__(self, name: object) -> bool:
        return name in self._filled()

    def __iter__(self) -> Iterator[str]:
        return iter(self._filled())

    def items(self) -> list[tuple[str, T]]:
        return list(self._filled().items())

    def __repr__(self) -> str:
        return f"Registry({self.axis}: {', '.join(self._entries)})"
