"""Crop-and-zoom: the model looks closer at a box of an episode image.

Contents: :func:`crop`, :func:`parse_box`, :func:`clip_note`.

The crop is pixel-exact on the full-resolution image (``image[y1:y2, x1:x2]``); the env then shows it zoomed
to the image budget. Boxes are ``[x1, y1, x2, y2]`` in pixels of the addressed image, x2/y2 exclusive. A box
that reaches outside the image on any side — negative coordinates or past the width/height alike — is clipped
to the image and the tool's text says so (:func:`clip_note`); one entirely outside, empty, inverted or
non-finite is a :class:`ToolError`. The box tools (crop, depth, segment, ocr) share these rules; ``measure``
refuses out-of-frame coordinates instead, since clipping would change what it measures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from vgym.errors import ToolError
from vgym.tooling import TOOLS, Tool, ToolContext, ToolResult

__all__ = ["crop", "parse_box", "clip_note"]


def parse_box(box: Sequence[object], width: int, height: int) -> tuple[int, int, int, int]:
    """Validate ``box`` against an image of ``width`` × ``height`` and return integer pixel bounds.

    Fractional coordinates are widened to whole pixels (floor for x1/y1, ceil for x2/y2); the box is then
    clipped to the image.

    Returns:
        ``(x1, y1, x2, y2)`` with ``0 <= x1 < x2 <= width`` and ``0 <= y1 < y2 <= height``.

    Raises:
        ToolError: if the box is not 4 finite numbers, is empty or inverted, or lies outside the image.
    """
    frame = f"the image is {width}x{height}, so a valid box lies within [0, 0, {width}, {height}]"
    if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        raise ToolError(f"box must be 4 numbers [x1, y1, x2, y2], got {list(box)!r}; {frame}.")
    try:
        x1, y1, x2, y2 = (float(v) for v in box)  # type: ignore[arg-type]
    except OverflowError:  # an int too large for a float, e.g. 10**400
        x1 = y1 = x2 = y2 = math.inf
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ToolError(f"box must hold finite numbers, got {list(box)!r}; {frame}.")
    if x2 <= x1 or y2 <= y1:
        raise ToolError(f"box {list(box)!r} is empty or inverted: need x1 < x2 and y1 < y2; {frame}.")
    ix1, iy1 = max(0, math.floor(x1)), max(0, math.floor(y1))
    ix2, iy2 = min(width, math.ceil(x2)), min(height, math.ceil(y2))
    if ix2 <= ix1 or iy2 <= iy1:
        raise ToolError(f"box {list(box)!r} lies outside the image; {frame}.")
    return ix1, iy1, ix2, iy2


def clip_note(box: Sequence[object], width: int, height: int) -> str:
    """``" (clipped to the 640x480 image)"`` when a valid ``box`` (see :func:`parse_box`) reaches outside a
    ``width`` × ``height`` image on any side, else ``""``."""
    x1, y1, x2, y2 = (float(v) for v in box)  # type: ignore[arg-type]
    inside = x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height
    return "" if inside else f" (clipped to the {width}x{height} image)"


def crop(ctx: ToolContext, box: list[float], image_index: int = 0) -> ToolResult:
    """Crop a region of an image and zoom in on it.

    Args:
        box: The region [x1, y1, x2, y2] in pixels of that image.
        image_index: Which image to crop (0 is the first image).
    """
    if not 0 <= image_index < len(ctx.images):
        raise ToolError(
            f"image_index {image_index} does not exist; valid indices are 0..{len(ctx.images) - 1}."
        )
    image = ctx.images[image_index]
    x1, y1, x2, y2 = parse_box(box, image.shape[1], image.shape[0])
    region = np.ascontiguousarray(image[y1:y2, x1:x2])
    note = clip_note(box, image.shape[1], image.shape[0])
    return ToolResult(text=f"crop of image {image_index} at [{x1}, {y1}, {x2}, {y2}]{note}", images=[region])


TOOLS.register("crop", Tool(crop))
