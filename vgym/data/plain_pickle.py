"""Reading a data pickle without running it: only builtin containers and scalars, nothing callable.

Contents: :data:`MAX_PICKLE_BYTES`, :func:`read_plain_pickle`.

Some dataset releases ship their annotations as Python pickles (RefCOCO's ``refs(unc).p``). ``pickle.load``
on such a file runs whatever the file asks for: a ``__reduce__`` payload can call ``os.system``. This reader
never does: its unpickler's ``find_class`` refuses every global (so no class, function or ``copyreg``
reconstructor can be named, and ``REDUCE``/``NEWOBJ``/``INST``/``EXT*`` have nothing to call) and its
``persistent_load`` refuses every persistent id. What remains are the opcodes that build inert builtin values:
``dict``, ``list``, ``tuple``, ``str``, ``int``, ``float``, ``bool`` and ``None`` in every protocol, ``bytes``
from protocol 3 and ``set``, ``frozenset`` and ``bytearray`` from protocols 4 and 5 (older protocols build
those by calling ``builtins.set`` or ``_codecs.encode``: globals, refused like any other). A refused file
raises :class:`~vgym.errors.InvalidConfigError` naming the file and the global it asked for, before anything
was called.

**Python 2 pickles.** Releases written by Python 2 store ``str`` values as byte strings. They are decoded as
UTF-8, and if that fails, as Latin-1 (which cannot fail); Python 2 ``unicode`` values are exact either way.

**Limits.** A file over :data:`MAX_PICKLE_BYTES` is refused before it is read. The unpickler itself keeps no
recursion (it is stack-based); a caller that walks the result should bound its walk by the file size (shared
references, pickle's memo, let a small file describe a structure that is exponentially large to traverse).
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

from vgym.errors import InvalidConfigError

__all__ = ["MAX_PICKLE_BYTES", "read_plain_pickle"]

MAX_PICKLE_BYTES = 1 << 30
"""Largest pickle read: 1 GiB (RefCOCOg's ``refs(umd).p``, the largest refer file, is tens of MB)."""


class _Refused(Exception):
    """A global or persistent id the file asked for (the message names it)."""


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler that can build builtin values only (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        raise _Refused(f"the global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"the persistent id {repr(pid)[:80]}")


def read_plain_pickle(path: str | os.PathLike, *, max_bytes: int = MAX_PICKLE_BYTES) -> Any:
    """Decode a pickle that holds only builtin containers and scalars, never calling anything it names.

    Args:
        path: the file.
        max_bytes: the largest file accepted.

    Returns:
        The decoded value (dicts, lists, tuples, sets, strings, bytes, numbers, booleans, None); Python 2 byte
        strings become ``str`` (UTF-8, else Latin-1).

    Raises:
        InvalidConfigError: for an unreadable file, one over ``max_bytes``, a pickle that names any global
            (a class, a function, a ``__reduce__`` payload) or a persistent id — the message names the file
            and what it asked for — or bytes that are not a complete pickle.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise InvalidConfigError(f"{path}: pickle file is {size} bytes, over the limit of {max_bytes}")
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        reason = error.strerror or error
        raise InvalidConfigError(f"cannot read the annotation file {path}: {reason}") from None
    for encoding in ("utf-8", "latin-1"):  # Python 2 byte strings; latin-1 decodes any byte
        try:
            return _PlainUnpickler(io.BytesIO(data), encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except _Refused as refused:
            raise InvalidConfigError(
                f"{path}: refused to load this pickle: it asks for {refused}, and only plain data (dicts, "
                "lists, strings, numbers) is read from a dataset pickle; nothing in it was run. A genuine "
                "release file does not do this: download it again from the official source"
            ) from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, MemoryError, OverflowError) as error:
            reason = f"{type(error).__name__}: {error}"
            raise InvalidConfigError(f"{path}: not a valid pickle ({reason})") from None
    raise AssertionError("latin-1 decodes every byte string")  # unreachable
