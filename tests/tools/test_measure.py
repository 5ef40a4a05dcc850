"""Tests of tools/measure.py (``vgym.tools.measure``): hand-computed geometry, the schema's enum, the
model-facing errors and cache replay."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vgym.tools.measure  # noqa: F401  (registers the measure tool)
from vgym.errors import ToolError
from vgym.tool_runtime import ToolRuntime, ToolRuntimeConfig
from vgym.tooling import TOOLS, ToolContext
from vgym.tools.measure import KINDS, box_iou, polygon_area

MEASURE = TOOLS.get("measure")
H, W = 60, 80  # a non-square image, so x/y mix-ups show
IMAGE = np.random.default_rng(0).integers(0, 200, (H, W, 3), dtype=np.uint8)  # < 200: never pure magenta


def _ctx() -> ToolContext:
    return ToolContext(images=[IMAGE], metadata={}, rng=np.random.default_rng(0), max_pixels=224 * 224)


def _text(**arguments: object) -> str:
    return MEASURE(_ctx(), arguments).text


@pytest.mark.parametrize(
    "arguments, expected",
    [
        # 3-4-5 triangle: sqrt(3² + 4²) = 5.
        ({"kind": "distance", "points": [[0, 0], [3, 4]]}, "distance: 5 px (image 0)."),
        # a flat list is regrouped
        ({"kind": "distance", "points": [0, 0, 3, 4]}, "distance: 5 px (image 0)."),
        # sqrt(1² + 1²) = 1.41421... shown with 2 decimals.
        ({"kind": "distance", "points": [[10.5, 20], [11.5, 21]]}, "distance: 1.41 px (image 0)."),
        # b→a = (3, 0) along +x, b→c = (0, 4) along +y: a right angle.
        ({"kind": "angle", "points": [[4, 1], [1, 1], [1, 5]]}, "angle at (1, 1): 90 degrees (image 0)."),
        # b→a = (4, 0), b→c = (3, 3): the diagonal, 45 degrees.
        ({"kind": "angle", "points": [[5, 1], [1, 1], [4, 4]]}, "angle at (1, 1): 45 degrees (image 0)."),
        # a, b, c on one horizontal line, b between: a straight angle.
        ({"kind": "angle", "points": [[0, 5], [5, 5], [10, 5]]}, "angle at (5, 5): 180 degrees (image 0)."),
        # (40 - 10) x (30 - 20) = 300.
        ({"kind": "area", "boxes": [[10, 20, 40, 30]]}, "area of the box: 300 px² (30 x 10) (image 0)."),
        # 2.5 x 4
        ({"kind": "area", "boxes": [1.5, 2, 4, 6]}, "area of the box: 10 px² (2.5 x 4) (image 0)."),
        # Right triangle with legs 4 and 3: 4 * 3 / 2 = 6.
        (
            {"kind": "area", "points": [[0, 0], [4, 0], [0, 3]]},
            "area of the 3-point polygon: 6 px² (image 0).",
        ),
        # An L: a 4x1 bar plus a 1x2 stem = 4 + 2 = 6, listed clockwise, then counter-clockwise (same area).
        (
            {"kind": "area", "points": [[0, 0], [4, 0], [4, 1], [1, 1], [1, 3], [0, 3]]},
            "area of the 6-point polygon: 6 px² (image 0).",
        ),
        (
            {"kind": "area", "points": [[0, 3], [1, 3], [1, 1], [4, 1], [4, 0], [0, 0]]},
            "area of the 6-point polygon: 6 px² (image 0).",
        ),
        # [0,0,10,10] ∩ [5,5,15,15] = [5,5,10,10], 25 px²; union 100 + 100 - 25 = 175; 25/175 = 0.142857.
        (
            {"kind": "iou", "boxes": [[0, 0, 10, 10], [5, 5, 15, 15]]},
            "iou of the two boxes: 0.1429 (image 0).",
        ),
        (
            {"kind": "iou", "boxes": [[0, 0, 10, 10], [0, 0, 10, 10]]},
            "iou of the two boxes: 1.0000 (image 0).",
        ),
        # Touching at x = 10 only: no area in common.
        (
            {"kind": "iou", "boxes": [[0, 0, 10, 10], [10, 0, 20, 10]]},
            "iou of the two boxes: 0.0000 (image 0).",
        ),
        # [0,0,20,10] holds [5,0,15,10]: 100 / 200 = 0.5.
        ({"kind": "iou", "boxes": [0, 0, 20, 10, 5, 0, 15, 10]}, "iou of the two boxes: 0.5000 (image 0)."),
        # Corners of the frame are allowed: the diagonal of the 80x60 image is sqrt(6400 + 3600) = 100.
        ({"kind": "distance", "points": [[0, 0], [80, 60]]}, "distance: 100 px (image 0)."),
    ],
)
def test_measure_matches_hand_computed_values(arguments: dict, expected: str) -> None:
    assert _text(**arguments) == expected


def test_measure_draws_the_geometry() -> None:
    result = MEASURE(_ctx(), {"kind": "distance", "points": [[0, 0], [30, 40]]})
    (drawn,) = result.images
    assert drawn.shape == IMAGE.shape and drawn.dtype == np.uint8
    assert tuple(drawn[20, 15]) == (255, 0, 255)  # (15, 20): the midpoint of the segment, on the magenta line
    assert np.array_equal(drawn[55, 75], IMAGE[55, 75])  # far from it: untouched
    assert np.array_equal(IMAGE, np.random.default_rng(0).integers(0, 200, (H, W, 3), dtype=np.uint8))


def test_schema_lists_the_kinds_as_an_enum() -> None:
    kind = MEASURE.schema["function"]["parameters"]["properties"]["kind"]
    assert kind["enum"] == list(KINDS) == ["distance", "angle", "area", "iou"]
    assert MEASURE.schema["function"]["parameters"]["required"] == ["kind"]


@settings(max_examples=60, deadline=None)
@given(
    x=st.integers(0, 70), y=st.integers(0, 50), w=st.integers(1, 10), h=st.integers(1, 10),
    dx=st.integers(-12, 12), dy=st.integers(-12, 12),
)
def test_rectangle_polygon_equals_box_and_iou_is_symmetric(
    x: int, y: int, w: int, h: int, dx: int, dy: int
) -> None:
    corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], float)
    assert polygon_area(corners) == w * h
    a, b = [x, y, x + w, y + h], [x + dx, y + dy, x + dx + w, y + dy + h]
    # Same-size boxes shifted by (dx, dy): overlap = max(0, w - |dx|) * max(0, h - |dy|), union = 2wh -
    # overlap.
    inter = max(0, w - abs(dx)) * max(0, h - abs(dy))
    assert box_iou(a, b) == pytest.approx(inter / (2 * w * h - inter))
    assert box_iou(a, b) == box_iou(b, a)


FRAME = r"the image is 80x60, so coordinates lie in 0 <= x <= 80, 0 <= y <= 60"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            {"kind": "length", "points": [[0, 0], [3, 4]]},
            r"kind must be one of \['distance', 'angle', 'area', 'iou'\], got 'length'",
        ),
        ({"kind": 3}, "argument 'kind' must be a JSON string"),
        ({"points": [[0, 0], [3, 4]]}, r"missing required argument\(s\) \['kind'\]"),
        ({"kind": "distance", "points": [[0, 0], [3, 4]], "unit": "cm"}, r"unknown argument\(s\) \['unit'\]"),
        # Wrong number of points or boxes for the kind.
        (
            {"kind": "distance", "points": [[0, 0], [3, 4], [5, 5]]},
            "kind 'distance' takes 2 points, so points must hold 2 points, got 3",
        ),
        ({"kind": "distance", "points": []}, "points must hold 2 points, got 0"),
        (
            {"kind": "angle", "points": [[0, 0], [3, 4]]},
            "kind 'angle' takes 3 points a, b, c, so points must hold 3 points, got 2",
        ),
        ({"kind": "area", "points": [[0, 0], [3, 4]]}, "a polygon needs at least 3 points, got 2"),
        (
            {"kind": "iou", "boxes": [[0, 0, 10, 10]]},
            "kind 'iou' takes 2 boxes, so boxes must hold 2 box\\(es\\), got 1",
        ),
        ({"kind": "area", "boxes": [[0, 0, 10, 10], [0, 0, 5, 5]]}, r"boxes must hold 1 box\(es\), got 2"),
        # Wrong number of coordinates.
        (
            {"kind": "distance", "points": [[0, 0, 1], [3, 4]]},
            r"points must be a list of points \[\[x, y\], \.\.\.\], got \[\[0, 0, 1\], \[3, 4\]\]; " + FRAME,
        ),
        ({"kind": "distance", "points": [0, 0, 3]}, r"got \[0, 0, 3\] \(3 numbers, not a multiple of 2\)"),
        (
            {"kind": "iou", "boxes": [[0, 0, 10], [5, 5, 15, 15]]},
            r"boxes must be a list of boxes \[\[x1, y1, x2, y2\], \.\.\.\]",
        ),
        ({"kind": "iou", "boxes": [0, 0, 10, 10, 5, 5]}, r"\(6 numbers, not a multiple of 4\)"),
        ({"kind": "distance", "points": [[[0, 0]], [[3, 4]]]}, "points must be a list of points"),
        ({"kind": "distance", "points": [[True, 0], [3, 4]]}, "points must be a list of points"),
        ({"kind": "distance", "points": [["0", "0"], [3, 4]]}, "points must be a list of points"),
        ({"kind": "distance", "points": "0,0 3,4"}, "argument 'points' must be a JSON array"),
        # Non-finite and out-of-image coordinates.
        (
            {"kind": "distance", "points": [[math.nan, 0], [3, 4]]},
            r"points must hold finite numbers, got \[\[nan, 0\], \[3, 4\]\]; " + FRAME,
        ),
        ({"kind": "distance", "points": [[0, 0], [math.inf, 4]]}, "points must hold finite numbers"),
        ({"kind": "distance", "points": [[0, 0], [10**400, 4]]}, "points must hold finite numbers"),
        ({"kind": "iou", "boxes": [[0, 0, math.nan, 10], [5, 5, 15, 15]]}, "boxes must hold finite numbers"),
        (
            {"kind": "distance", "points": [[0, 0], [81, 4]]},
            r"points \[\[0, 0\], \[81, 4\]\] lie\(s\) outside the image; " + FRAME,
        ),
        ({"kind": "distance", "points": [[0, -1], [3, 4]]}, "points .* lie\\(s\\) outside the image"),
        (
            {"kind": "area", "boxes": [[10, 10, 20, 61]]},
            r"boxes \[\[10, 10, 20, 61\]\] lie\(s\) outside the image",
        ),
        # Inverted or empty boxes, degenerate angles.
        (
            {"kind": "area", "boxes": [[20, 10, 10, 20]]},
            r"boxes \[\[20\.0, 10\.0, 10\.0, 20\.0\]\] are empty or inverted",
        ),
        ({"kind": "iou", "boxes": [[0, 0, 10, 10], [5, 5, 5, 15]]}, "are empty or inverted"),
        (
            {"kind": "angle", "points": [[1, 1], [1, 1], [3, 4]]},
            "angle needs a and c distinct from the vertex b",
        ),
        # Arguments that do not fit the kind.
        (
            {"kind": "distance", "boxes": [[0, 0, 3, 4]]},
            r"kind 'distance' takes 2 points \(and no boxes\); got points=None",
        ),
        ({"kind": "distance", "points": [[0, 0], [3, 4]], "boxes": [[0, 0, 3, 4]]}, r"\(and no boxes\)"),
        ({"kind": "iou", "points": [[0, 0], [3, 4]]}, r"kind 'iou' takes 2 boxes \(and no points\)"),
        (
            {"kind": "area"},
            "kind 'area' takes 1 box or 3\\+ points: give either points or boxes, got neither",
        ),
        (
            {"kind": "area", "points": [[0, 0], [4, 0], [0, 3]], "boxes": [[0, 0, 3, 4]]},
            "give either points or boxes, got both",
        ),
        (
            {"kind": "distance", "points": [[0, 0], [3, 4]], "image_index": 1},
            r"image_index 1 does not exist; valid indices are 0\.\.0",
        ),
    ],
)
def test_bad_calls_raise_a_helpful_tool_error(arguments: dict, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        MEASURE(_ctx(), arguments)


def test_cache_replays_identical_bytes(tmp_path: Path) -> None:
    runtime = ToolRuntime(ToolRuntimeConfig(cache_dir=str(tmp_path), backends={"measure": "default"}))
    arguments = {"kind": "angle", "points": [[4, 1], [1, 1], [1, 5]]}
    try:
        first, info1 = runtime.call(MEASURE, _ctx(), arguments)
        second, info2 = runtime.call(MEASURE, _ctx(), arguments)
    finally:
        runtime.close()
    assert not info1.cache_hit and info2.cache_hit
    assert second.text == first.text == "angle at (1, 1): 90 degrees (image 0)."
    assert [im.tobytes() for im in second.images] == [im.tobytes() for im in first.images]
