"""Reading dataset files safely: bounded JSON / JSON Lines / text readers, paths confined to a dataset root, and
robust image loading. :mod:`vgym.datasets` (the vgym JSONL format and the generic loader task) builds on these and
re-exports every public name here, so ``from vgym.datasets import load_image`` keeps working.

Contents: :data:`MAX_LINE_BYTES`, :data:`MAX_JSON_DEPTH`, :data:`MAX_JSON_FILE_BYTES`, :func:`read_text_lines`,
:func:`read_json_lines`, :func:`read_json`, :func:`confined_path`, :class:`MediaError`, :func:`load_image`.

**Limits.** A line over :data:`MAX_LINE_BYTES` (1 MiB), JSON nested deeper than :data:`MAX_JSON_DEPTH` (32),
``NaN``/``Infinity`` and duplicate keys in an object are errors naming ``file:line``; a whole-file JSON annotation
over :data:`MAX_JSON_FILE_BYTES` is refused. :func:`confined_path` refuses absolute paths, ``..`` escapes and
symbolic links leading outside the root. :func:`load_image` refuses images over ``max_pixels`` before decoding
them. All of these raise :class:`~vgym.errors.InvalidConfigError` naming the file.

**Bad media.** A media file that is missing, empty, not an image, truncated, corrupt, too large or in a mode without
an RGB meaning raises :class:`MediaError`, the :class:`~vgym.errors.InvalidConfigError` subclass that marks a fault
of *one record's data* rather than of the configuration: :func:`vgym.rollout.rollout` turns it into a failed
episode (reward 0, ``truncated_reason`` naming the error and the file) and plays the rest of the batch.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vgym.errors import InvalidConfigError

__all__ = ["MAX_LINE_BYTES", "MAX_JSON_DEPTH", "MAX_JSON_FILE_BYTES", "read_text_lines", "read_json_lines",
           "read_json", "confined_path", "MediaError", "load_image"]

MAX_LINE_BYTES = 1 << 20
"""Longest JSONL / text annotation line accepted, in bytes (without the newline)."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of JSON containers accepted (a top-level object is depth 1)."""
MAX_JSON_FILE_BYTES = 1 << 28
"""Largest whole-file JSON annotation (ChartQA's lists) accepted: 256 MiB."""


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _JsonRefused(f"duplicate key {key!r} in an object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _JsonRefused(f"{name} is not a valid number here (JSON has no NaN or Infinity)")


class _JsonRefused(ValueError):
    """A JSON text that parses but is refused (duplicate keys, NaN)."""


def _depth(value: Any) -> int:
    """Nesting depth of JSON containers (a scalar is 0, ``{}`` is 1), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _parse_json(text: str, where: str) -> Any:
    try:
        value = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_no_constant)
    except RecursionError:  # the C decoder recurses per level: thousands of "[" exhaust the stack before we look
        raise InvalidConfigError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as error:
        raise InvalidConfigError(f"{where}: invalid JSON: {error.msg} at column {error.colno}") from None
    except _JsonRefused as error:
        raise InvalidConfigError(f"{where}: {error}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise InvalidConfigError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels ({_depth(value)})")
    return value


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of a UTF-8 text file, enforcing :data:`MAX_LINE_BYTES`."""
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise InvalidConfigError(f"cannot read the annotation file {path}: {error.strerror or error}") from None
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
    """Decode a JSON Lines file under the limits of the module docstring; lines starting with ``//`` are skipped.

    Returns:
        ``(where, value)`` per line, in file order, ``where`` being ``"<path>:<line>"``.

    Raises:
        InvalidConfigError: as :func:`read_text_lines`, or for invalid JSON, nesting deeper than 32, NaN/Infinity
            or a duplicate key; the message names the file and line.
    """
    return [(where, _parse_json(text, where)) for where, text in read_text_lines(path) if not text.startswith("//")]


def read_json(path: str | os.PathLike, *, max_bytes: int = MAX_JSON_FILE_BYTES) -> Any:
    """Decode a whole-file JSON annotation (e.g. a ChartQA list) under the depth and constant rules.

    Raises:
        InvalidConfigError: for a missing file, one over ``max_bytes``, or invalid or refused JSON.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise InvalidConfigError(f"{path}: annotation file is {size} bytes, over the limit of {max_bytes}")
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8-sig")
    except OSError as error:
        raise InvalidConfigError(f"cannot read the annotation file {path}: {error.strerror or error}") from None
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
        InvalidConfigError: for a non-string or empty path, a NUL byte, an absolute path, or a path that resolves
            outside ``realpath(root)`` (through ``..`` or a symbolic link pointing out).
    """
    if not isinstance(relative, str) or not relative.strip() or "\x00" in relative:
        raise InvalidConfigError(f"a dataset path must be a non-empty string relative to the root, got {relative!r}")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[/\\]", relative):
        raise InvalidConfigError(f"absolute path {relative!r} is not allowed: paths are relative to the dataset "
                                 f"root {os.fspath(root)}")
    real_root = os.path.realpath(root)
    full = os.path.realpath(os.path.join(real_root, relative))
    if os.path.commonpath([real_root, full]) != real_root:
        raise InvalidConfigError(f"path {relative!r} resolves to {full}, outside the dataset root {real_root} "
                                 "(a '..' or a symbolic link leads out); keep every file inside the root")
    return full


class MediaError(InvalidConfigError):
    """A record's media file (image or video) cannot be used: missing, empty, not a known format, truncated,
    corrupt, too large, or without an RGB meaning. The message names the file.

    It is an :class:`~vgym.errors.InvalidConfigError`, so ``except InvalidConfigError`` still catches it; the
    subclass lets a rollout tell one bad record (skip the episode, keep the batch) from a bad configuration
    (stop). Pickles with its attributes (Ray workers may raise it).

    Attributes:
        path: the file at fault, or None when unknown.
        sample_id: the id of the sample that needed it (``"<task>/<record id>"``), set by
            :meth:`vgym.datasets.DatasetTask.sample`; None when raised outside a task.
    """

    def __init__(self, message: str, *, path: str | None = None, sample_id: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.sample_id = sample_id


def _to_rgb(image: Image.Image, path: str) -> np.ndarray:
    """The decoded ``image`` as RGB uint8 (H, W, 3); see :func:`load_image` for the conversions."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode.startswith("I;16") or mode == "I":  # 16-bit grey (PNG): scale 0..65535 to 0..255, rounded
        grey = np.asarray(image).astype(np.int64)
        if grey.min() < 0 or grey.max() > 65535:
            raise MediaError(f"{path}: 32-bit integer pixels outside 0..65535 are not supported", path=path)
        return np.repeat(((grey * 255 + 32767) // 65535).astype(np.uint8)[..., None], 3, axis=2)
    if mode == "F":
        raise MediaError(f"{path}: floating-point images (Pillow mode 'F') are not supported; save 8-bit RGB",
                         path=path)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA")).astype(np.int64)  # over white, as viewers show transparency
        colour, alpha = rgba[..., :3], rgba[..., 3:]
        return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    try:
        return np.asarray(image.convert("RGB"))  # L, 1, P, CMYK, YCbCr, ...
    except ValueError as error:
        raise MediaError(f"{path}: cannot convert Pillow mode {mode!r} to RGB ({error})", path=path) from None


def load_image(path: str, *, max_pixels: int = 64_000_000) -> np.ndarray:
    """Decode an image file as RGB uint8, whatever its extension says (the format is read from the bytes).

    Conversions: grey and 1-bit are replicated to three channels; palettes are expanded; alpha (RGBA, LA, or a
    palette with transparency) is composited over white; 16-bit grey is scaled to 8 bits (``v * 255 / 65535``,
    rounded); 16-bit colour (RGB / RGBA PNG) keeps each sample's high byte, as Pillow decodes it (within 1 of the
    rounded value); CMYK and YCbCr go through Pillow's conversion. Multi-frame files give their first frame.
    EXIF orientation is *not* applied: annotations such as COCO boxes refer to the stored pixel grid.

    Args:
        path: the file (resolve it with :func:`confined_path` first).
        max_pixels: largest W·H accepted, checked from the header before any pixel is decoded (a decompression
            bomb guard; Pillow's own limit of about 179 M pixels applies on top).

    Returns:
        (H, W, 3) uint8, C-contiguous.

    Raises:
        MediaError: naming the file, when it is missing, empty, not an image, truncated or corrupt, too large,
            or in a mode that has no RGB meaning.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise MediaError(f"{path}: image is {width}x{height} = {width * height} pixels, over "
                                 f"max_pixels={max_pixels} (raise max_image_pixels if the file is trusted)", path=path)
            image.load()
            return np.ascontiguousarray(_to_rgb(image, path), dtype=np.uint8)
    except MediaError:
        raise
    except FileNotFoundError:
        raise MediaError(f"image file not found: {path}", path=path) from None
    except UnidentifiedImageError:
        raise MediaError(f"{path}: not an image Pillow can read (empty, corrupt or unsupported)", path=path) from None
    except Image.DecompressionBombError as error:
        raise MediaError(f"{path}: {error}", path=path) from None
    except (OSError, SyntaxError, EOFError, ValueError) as error:  # Pillow's decoders raise all of these
        raise MediaError(f"{path}: the image could not be decoded ({error}); the file may be truncated or corrupt",
                         path=path) from None
