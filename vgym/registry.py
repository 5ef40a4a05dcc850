"""A small typed name → object registry, used for tasks, tools and (later) losses.

Contents: :class:`Registry`.

Rules (STYLE.md §5): registering a name twice raises; an unknown name is reported with the valid names and the
closest match; entries may be lazy ``"module:attr"`` strings resolved on first :meth:`Registry.get`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from vgym.errors import UnknownNameError, VgymError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps snake_case names to objects of one kind.

    >>> reg: Registry[int] = Registry("numbers")
    >>> reg.register("one", 1)
    1
    >>> reg.get("one")
    1
    """

    def __init__(self, kind: str) -> None:
        """Args:
        kind: what is registered ("task", "tool", ...), used in error messages.
        """
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: T | None = None):  # type: ignore[no-untyped-def]
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator.

        Args:
            name: the key; must not be registered yet.
            obj: the object, or a lazy ``"package.module:attr"`` entry point string.

        Returns:
            ``obj`` (so the call works as a decorator), or the decorator itself.

        Raises:
            VgymError: if ``name`` is already registered.
        """
        if obj is None:
            return lambda o: self.register(name, o)
        if name in self._entries:
            raise VgymError(f"{self.kind} {name!r} is already registered; pick another name or a new version.")
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        """Return the object registered as ``name``, importing a lazy entry point on first use.

        Raises:
            UnknownNameError: with the registered names and the closest match.
        """
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: {sorted(self._entries)}"
            )
        entry = self._entries[name]
        if isinstance(entry, str) and ":" in entry:
            module, _, attr = entry.partition(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
