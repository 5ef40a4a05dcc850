"""Measure: exact geometry on pixel coordinates (distances, angles, areas, box overlap).

Contents: :func:`measure`, :func:`parse_points`, :func:`parse_boxes`, :func:`polygon_area`, :func:`box_iou`,
:data:`KINDS`.

Coordinates are continuous pixel positions of the addressed image (``[x, y]``; boxes ``[x1, y1, x2, y2]`` with
x2/y2 exclusive, so a box's area is ``(x2 - x1) * (y2 - y1)``). Nothing is clipped: every coordinate must lie
in the image frame ``0 <= x <= W``, ``0 <= y <= H``. Points and boxes are lists of lists (``[[x, y], ...]``);
a flat list (``[x1, y1, x2, y2, ...]``) is regrouped, since models often write one. The result is text plus
the image with the measured geometry drawn on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from vgym.errors import ToolError
from vgym.tooling import TOOLS, Tool, ToolContext, ToolResult

__all__ = ["measure", "parse_points", "parse_boxes", "polygon_area", "box_iou", "KINDS"]

KINDS = ("distance", "angle", "area", "iou")
"""The measurements, and what each takes: two points; three points (angle at the middle one); one box or a
polygon of three or more points; two boxes."""

_DRAW = (255, 0, 255)  # magenta lines on the image


def _numbers(values: Sequence[object]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _parse_groups(
    name: str, values: Sequence[object], size: int, form: str, width: int, height: int
) -> np.ndarray:
    """``values`` as a (N, size) float64 array of in-frame finite coordinates (flat lists are regrouped)."""
    frame = f"the image is {width}x{height}, so coordinates lie in 0 <= x <= {width}, 0 <= y <= {height}"
    if _numbers(values) and len(values) > 0:
        if len(values) % size:
            raise ToolError(f"{name} must be a list of {form}, got {list(values)!r} ({len(values)} numbers, "
                            f"not a multiple of {size}); {frame}.")
        values = [list(values[i : i + size]) for i in range(0, len(values), size)]
    if not all(isinstance(g, list) and len(g) == size and _numbers(g) for g in values):
        raise ToolError(f"{name} must be a list of {form}, got {list(values)!r}; {frame}.")
    try:
        array = np.array(values, dtype=np.float64).reshape(-1, size)
    except OverflowError:  # an int too large for a float
        array = np.full((len(values), size), np.inf)
    if not np.isfinite(array).all():
        raise ToolError(f"{name} must hold finite numbers, got {list(values)!r}; {frame}.")
    xs, ys = array[:, 0::2], array[:, 1::2]
    if (xs < 0).any() or (xs > width).any() or (ys < 0).any() or (ys > height).any():
        raise ToolError(f"{name} {list(values)!r} lie(s) outside the image; {frame}.")
    return array


def parse_points(points: Sequence[object], width: int, height: int) -> np.ndarray:
    """Validate ``points`` (``[[x, y], ...]`` or flat ``[x1, y1, ...]``) against a ``width`` × ``height``
    image.

    Returns:
        (N, 2) float64 array of ``(x, y)``.

    Raises:
        ToolError: if the points are not pairs of finite numbers or lie outside the image frame.
    """
    return _parse_groups("points", points, 2, "points [[x, y], ...]", width, height)


def parse_boxes(boxes: Sequence[object], width: int, height: int) -> np.ndarray:
    """Validate ``boxes`` (``[[x1, y1, x2, y2], ...]`` or flat) against a ``width`` × ``height`` image.

    Returns:
        (N, 4) float64 array of ``(x1, y1, x2, y2)``.

    Raises:
        ToolError: if the boxes are not quadruples of finite numbers, are empty/inverted, or leave the image
            frame.
    """
    array = _parse_groups("boxes", boxes, 4, "boxes [[x1, y1, x2, y2], ...]", width, height)
    bad = [list(b) for b in array.tolist() if b[2] <= b[0] or b[3] <= b[1]]
    if bad:
        raise ToolError(f"boxes {bad!r} are empty or inverted: each box needs x1 < x2 and y1 < y2.")
    return array


def polygon_area(points: np.ndarray) -> float:
    """Area of a simple polygon with vertices ``points`` (N, 2) in order (shoelace formula; either
    orientation)."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of boxes ``a`` and ``b`` (``[x1, y1, x2, y2]``, non-empty); 0 when disjoint."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _angle(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """The angle ABC at ``b`` in degrees, in [0, 180]."""
    u, v = a - b, c - b
    # atan2(|u×v|, u·v) stays exact near 0° and 180°, where acos of a rounded cosine loses precision.
    return math.degrees(math.atan2(abs(u[0] * v[1] - u[1] * v[0]), float(np.dot(u, v))))


def _fmt(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _draw(image: np.ndarray, points: np.ndarray | None, boxes: np.ndarray | None, closed: bool) -> np.ndarray:
    out = np.ascontiguousarray(image.copy())
    if points is not None:
        pts = np.round(points).astype(np.int32)
        cv2.polylines(out, [pts], closed, _DRAW, 1)
        for x, y in pts:
            cv2.drawMarker(out, (int(x), int(y)), (0, 255, 0), cv2.MARKER_CROSS, 7, 1)
    for x1, y1, x2, y2 in np.round(boxes).astype(int) if boxes is not None else []:
        cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), _DRAW, 1)
    return out


def measure(
    ctx: ToolContext,
    kind: str,
    points: list[list[float]] | None = None,
    boxes: list[list[float]] | None = None,
    image_index: int = 0,
) -> ToolResult:
    """Measure exact geometry in pixels: a distance, an angle, an area, or the overlap of two boxes.

    Args:
        kind: What to measure: "distance" (2 points), "angle" (3 points a, b, c: the angle at b in degrees),
            "area" (1 box, or a polygon of 3 or more points), "iou" (2 boxes: intersection over union)
            (choices: ["distance", "angle", "area", "iou"])
        points: Points [[x, y], ...] in pixels of the image, for distance, angle and polygon area.
        boxes: Boxes [[x1, y1, x2, y2], ...] in pixels of the image, for box area and iou.
        image_index: Which image the coordinates refer to (0 is the first image).
    """
    if kind not in KINDS:
        raise ToolError(f"kind must be one of {list(KINDS)}, got {kind!r}.")
    if not 0 <= image_index < len(ctx.images):
        raise ToolError(
            f"image_index {image_index} does not exist; valid indices are 0..{len(ctx.images) - 1}."
        )
    image = ctx.images[image_index]
    h, w = image.shape[:2]
    pts = parse_points(points, w, h) if points is not None else None
    bxs = parse_boxes(boxes, w, h) if boxes is not None else None
    wants = {
        "distance": "2 points",
        "angle": "3 points a, b, c",
        "area": "1 box or 3+ points",
        "iou": "2 boxes",
    }
    usage = f"kind {kind!r} takes {wants[kind]}"
    if kind == "area" and (pts is None) == (bxs is None):
        raise ToolError(
            f"{usage}: give either points or boxes, got {'both' if pts is not None else 'neither'}."
        )
    if kind in ("distance", "angle") and (bxs is not None or pts is None):
        raise ToolError(f"{usage} (and no boxes); got points={points!r}, boxes={boxes!r}.")
    if kind == "iou" and (pts is not None or bxs is None):
        raise ToolError(f"{usage} (and no points); got points={points!r}, boxes={boxes!r}.")
    need = {"distance": 2, "angle": 3}.get(kind)
    if pts is not None and need is not None and len(pts) != need:
        raise ToolError(f"{usage}, so points must hold {need} points, got {len(pts)}: {points!r}.")
    if pts is not None and kind == "area" and len(pts) < 3:
        raise ToolError(f"{usage}, so a polygon needs at least 3 points, got {len(pts)}: {points!r}.")
    box_need = {"area": 1, "iou": 2}.get(kind)
    if bxs is not None and len(bxs) != box_need:
        raise ToolError(f"{usage}, so boxes must hold {box_need} box(es), got {len(bxs)}: {boxes!r}.")

    if kind == "distance":
        text = f"distance: {_fmt(float(np.linalg.norm(pts[1] - pts[0])))} px"  # type: ignore[index]
    elif kind == "angle":
        a, b, c = pts  # type: ignore[misc]
        if np.array_equal(a, b) or np.array_equal(c, b):
            raise ToolError(f"angle needs a and c distinct from the vertex b, got points={points!r}.")
        text = f"angle at ({_fmt(b[0])}, {_fmt(b[1])}): {_fmt(_angle(a, b, c))} degrees"
    elif kind == "area" and bxs is not None:
        x1, y1, x2, y2 = bxs[0]
        text = f"area of the box: {_fmt((x2 - x1) * (y2 - y1))} px² ({_fmt(x2 - x1)} x {_fmt(y2 - y1)})"
    elif kind == "area":
        area = polygon_area(pts)  # type: ignore[arg-type]
        text = f"area of the {len(pts)}-point polygon: {_fmt(area)} px²"
    else:
        text = f"iou of the two boxes: {box_iou(bxs[0], bxs[1]):.4f}"  # type: ignore[index]
    drawn = _draw(image, pts, bxs, closed=kind == "area")
    return ToolResult(text=f"{text} (image {image_index}).", images=[drawn])


TOOLS.register("measure", Tool(measure))
