"""A small typed name → object registry, used for tasks, tools, advantage estimators, losses and reporters.

Contents: :class:`Registry`.

Rules (STYLE.md §5): registering a name twice raises; an unknown name is reported with the valid names and the
closest match; entries may be lazy — a ``"package.module:attr"`` string, or a module registered with
:meth:`Registry.register_lazy` that registers the name itself when imported — resolved on first
:meth:`Registry.get`, so a heavy module loads only when its entry is used.

One file imported under two module names (``tools.crop`` from a checkout's root and ``vgym.tools.crop``) runs
its registration line twice; the second registration of an object defined at the same place (same source file
and qualified name) is accepted and keeps the first object, so that is not an error. A lazy entry is replaced
by the object its module registers; registering the name from any other file raises, as for any taken name.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from vgym.errors import UnknownNameError, VgymError

__all__ = ["Registry"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Lazy:
    """A lazy entry: import ``module``; take ``attr`` from it, or (``attr`` None) what the module
    registers."""

    module: str
    attr: str | None

    def source_file(self) -> str | None:
        """The module's file, found without importing it (its parent packages are imported); None if
        unknown."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return None
        return os.path.realpath(spec.origin) if spec is not None and spec.origin else None


def _place(obj: Any) -> tuple[str, str] | None:
    """Where ``obj`` is defined: (real path of its source file, qualified name); None when unknown."""
    try:
        path = inspect.getfile(obj)
    except TypeError:  # a builtin, or an instance without a defining function
        return None
    return os.path.realpath(path), getattr(obj, "__qualname__", "")


class Registry(Generic[T]):
    """Maps snake_case names to objects of one kind.

    >>> reg: Registry[int] = Registry("numbers")
    >>> reg.register("one", 1)
    1
    >>> reg.get("one")
    1
    """

    def __init__(self, kind: str, *, defined_by: Callable[[T], Any] | None = None) -> None:
        """Args:
        kind: what is registered ("task", "tool", ...), used in error messages. defined_by: maps an entry to
        the function or class that defines it, whose source file and qualified name
            identify the entry's origin (e.g. a tool's function); default: the entry itself.
        """
        self.kind = kind
        self._defined_by = defined_by or (lambda obj: obj)
        self._entries: dict[str, T | _Lazy] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T) -> T: ...

    def register(self, name: str, obj: T | None = None):  # type: ignore[no-untyped-def]
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator.

        Args:
            name: the key; must not be registered yet, except as a lazy entry pointing at the file that
                defines ``obj`` (which ``obj`` then replaces) or by an object defined at the same place as
                ``obj`` (the same file imported under another module name: the first object is kept).
            obj: the object, or a lazy ``"package.module:attr"`` entry point string.

        Returns:
            ``obj`` (so the call works as a decorator), or the decorator itself.

        Raises:
            VgymError: if ``name`` is taken by another object.
        """
        if obj is None:
            return lambda o: self.register(name, o)
        if isinstance(obj, str) and ":" in obj:
            module, _, attr = obj.partition(":")
            self._add(name, _Lazy(module, attr))
            return obj
        current = self._entries.get(name)
        if current is None:
            self._entries[name] = obj
        elif isinstance(current, _Lazy) and self._defined_in(obj, current.source_file()):
            self._entries[name] = obj  # the lazy entry's module registering its object as it is imported
        elif not isinstance(current, _Lazy) and self._same_place(current, obj):
            pass  # the same file imported under a second module name: keep the object already in use
        else:
            self._taken(name)
        return obj

    def register_lazy(self, name: str, module: str, attr: str | None = None) -> None:
        """Register ``name`` without importing anything yet.

        Args:
            name: the key; must not be registered yet.
            module: the module to import on first :meth:`get`.
            attr: the module attribute that is the entry; None when importing ``module`` registers ``name``
                itself (its registration line replaces this entry).

        Raises:
            VgymError: if ``name`` is taken.
        """
        self._add(name, _Lazy(module, attr))

    def _add(self, name: str, entry: _Lazy) -> None:
        if name in self._entries:
            self._taken(name)
        self._entries[name] = entry

    def _taken(self, name: str) -> None:
        raise VgymError(f"{self.kind} {name!r} is already registered; pick another name or a new version.")

    def _defined_in(self, obj: T, path: str | None) -> bool:
        place = _place(self._defined_by(obj))
        return path is not None and place is not None and place[0] == path

    def _same_place(self, a: T, b: T) -> bool:
        place = _place(self._defined_by(a))
        return place is not None and place == _place(self._defined_by(b))

    def get(self, name: str) -> T:
        """Return the object registered as ``name``, importing a lazy entry's module on first use.

        Raises:
            UnknownNameError: with the registered names and the closest match.
            VgymError: when a lazy entry's module was imported but did not register ``name``.
            ImportError: when a lazy entry's module cannot be imported (unchanged, naming the module).
        """
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: {sorted(self._entries)}"
            )
        entry = self._entries[name]
        if isinstance(entry, _Lazy):
            module = importlib.import_module(entry.module)  # its registration line may replace the entry
            if isinstance(self._entries[name], _Lazy) and entry.attr is not None:
                self._entries[name] = getattr(module, entry.attr)
            elif isinstance(self._entries[name], _Lazy):
                raise VgymError(f"importing {entry.module} did not register {self.kind} {name!r}; its "
                                f"registration line must use that name")
            entry = self._entries[name]
        return entry  # type: ignore[return-value]

    def is_loaded(self, name: str) -> bool:
        """Whether ``name``'s entry is resolved (False for a lazy entry not yet used)."""
        return name in self._entries and not isinstance(self._entries[name], _Lazy)

    def names(self) -> list[str]:
        """Registered names, sorted (lazy entries included, without importing them)."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
