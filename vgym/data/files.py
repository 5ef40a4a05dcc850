"""Reading dataset files safely: bounded JSON / JSON Lines / text readers and paths confined to a dataset
root.

Contents: :data:`MAX_LINE_BYTES`, :data:`MAX_JSON_DEPTH`, :data:`MAX_JSON_FILE_BYTES`,
:func:`read_text_lines`, :func:`read_json_lines`, :func:`read_json`, :func:`confined_path`.

**Limits.** A line over :data:`MAX_LINE_BYTES` (1 MiB), JSON nested deeper than :data:`MAX_JSON_DEPTH` (32),
``NaN``/``Infinity`` and duplicate keys in an object are errors naming ``file:line``; a whole-file JSON
annotation over :data:`MAX_JSON_FILE_BYTES` is refused. :func:`confined_path` refuses absolute paths, ``..``
escapes and symbolic links leading outside the root. All of these raise
:class:`~vgym.errors.InvalidConfigError` naming the file. Media files are decoded by :mod:`vgym.data.media`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

from vgym.errors import InvalidConfigError

__all__ = ["MAX_LINE_BYTES", "MAX_JSON_DEPTH", "MAX_JSON_FILE_BYTES", "read_text_lines", "read_json_lines",
           "read_json", "confined_path"]

MAX_LINE_BYTES = 1 << 20
"""Longest JSONL / text annotation line accepted, in bytes (without the newline)."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of JSON containers accepted (a top-level object is depth 1)."""
MAX_JSON_FILE_BYTES = 1 << 28
"""Largest whole-file JSON annotation (ChartQA's lists) accepted: 256 MiB."""


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # the slow search only for the (rare) object that has a duplicate
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _JsonRefused(f"duplicate key {key!r} in an object")
            seen.add(key)
    return out


def _no_constant(name: str) -> Any:
    raise _JsonRefused(f"{name} is not a valid number here (JSON has no NaN or Infinity)")


class _JsonRefused(ValueError):
    """A JSON text that parses but is refused (duplicate keys, NaN)."""


def _depth(value: Any) -> int:
    """Nesting depth of JSON containers (a scalar is 0, ``{}`` is 1), without recursion.

    Only containers go on the stack, and a container holding scalars only is passed over in C (``map(type,
    ...)``): a COCO annotation file is mostly numbers in polygon lists."""
    if not isinstance(value, (dict, list)):
        return 0
    deepest, stack = 1, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        if _SCALAR_TYPES.issuperset(map(type, children)):
            continue
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})
"""The types of JSON's scalars as :func:`json.loads` builds them."""


def _parse_json(text: str, where: str) -> Any:
    try:
        value = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_no_constant)
    # the C decoder recurses per level: thousands of "[" exhaust the stack before we look
    except RecursionError:
        raise InvalidConfigError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as error:
        raise InvalidConfigError(f"{where}: invalid JSON: {error.msg} at column {error.colno}") from None
    except _JsonRefused as error:
        raise InvalidConfigError(f"{where}: {error}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise InvalidConfigError(
            f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels ({_depth(value)})"
        )
    return value


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of a UTF-8 text file, enforcing :data:`MAX_LINE_BYTES`."""
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise InvalidConfigError(
            f"cannot read the annotation file {path}: {error.strerror or error}"
        ) from None
    with handle:
        number = 0
        while raw := handle.readline(MAX_LINE_BYTES + 2):  # bounded: a huge line is never read whole
            number += 1
            if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
                raise InvalidConfigError(f"{path}:{number}: line is over {MAX_LINE_BYTES} bytes (1 MiB)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InvalidConfigError(f"{path}:{number}: not UTF-8 text ({error.reason} at byte "
                                         f"{error.start})") from None
            yield number, text.removeprefix("\ufeff") if number == 1 else text


def read_text_lines(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The non-blank lines of a UTF-8 text annotation file, stripped, with ``where`` = ``"<path>:<line>"``.

    Raises:
        InvalidConfigError: for an unreadable file, a line over :data:`MAX_LINE_BYTES` or invalid UTF-8.
    """
    path = os.fspath(path)
    return [(f"{path}:{number}", text.strip()) for number, text in _lines(path) if text.strip()]


def read_json_lines(path: str | os.PathLike) -> list[tuple[str, Any]]:
    """Decode a JSON Lines file under the limits of the module docstring; lines starting with ``//`` are
    skipped.

    Returns:
        ``(where, value)`` per line, in file order, ``where`` being ``"<path>:<line>"``.

    Raises:
        InvalidConfigError: as :func:`read_text_lines`, or for invalid JSON, nesting deeper than 32,
            NaN/Infinity or a duplicate key; the message names the file and line.
    """
    return [
        (where, _parse_json(text, where))
        for where, text in read_text_lines(path)
        if not text.startswith("//")
    ]


def read_json(path: str | os.PathLike, *, max_bytes: int = MAX_JSON_FILE_BYTES) -> Any:
    """Decode a whole-file JSON annotation (e.g. a ChartQA list) under the depth and constant rules.

    Raises:
        InvalidConfigError: for a missing file, one over ``max_bytes``, or invalid or refused JSON.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise InvalidConfigError(
                f"{path}: annotation file is {size} bytes, over the limit of {max_bytes}"
            )
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8-sig")
    except OSError as error:
        raise InvalidConfigError(
            f"cannot read the annotation file {path}: {error.strerror or error}"
        ) from None
    except UnicodeDecodeError as error:
        raise InvalidConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    return _parse_json(text, path)


def confined_path(root: str | os.PathLike, relative: str) -> str:
    """Resolve ``relative`` against ``root``, following symbolic links, and insist the result stays inside it.

    Args:
        root: the dataset folder.
        relative: a path relative to it (``/`` separators; ``a/../b`` is fine while it stays inside).

    Returns:
        The absolute, symlink-free path (the file need not exist).

    Raises:
        InvalidConfigError: for a non-string or empty path, a NUL byte, an absolute path, or a path that
            resolves outside ``realpath(root)`` (through ``..`` or a symbolic link pointing out).
    """
    if not isinstance(relative, str) or not relative.strip() or "\x00" in relative:
        raise InvalidConfigError(
            f"a dataset path must be a non-empty string relative to the root, got {relative!r}"
        )
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[/\\]", relative):
        raise InvalidConfigError(
            f"absolute path {relative!r} is not allowed: paths are relative to the dataset "
            f"root {os.fspath(root)}"
        )
    real_root = os.path.realpath(root)
    full = os.path.realpath(os.path.join(real_root, relative))
    if os.path.commonpath([real_root, full]) != real_root:
        raise InvalidConfigError(
            f"path {relative!r} resolves to {full}, outside the dataset root {real_root} "
            "(a '..' or a symbolic link leads out); keep every file inside the root"
        )
    return full
