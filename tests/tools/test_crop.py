"""Tests of tools/crop.py (``vgym.tools.crop``): pixel-exact crops, box parsing and the model-facing
errors."""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vgym  # noqa: F401  (registers the crop tool and the envs)
from vgym.errors import ToolError
from vgym.tooling import TOOLS, ToolContext, fit_to_budget
from vgym.tools.crop import crop, parse_box

H, W = 60, 80  # a non-square test image, so x/y mix-ups show
IMAGE = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
FRAME = r"the image is 80x60, so a valid box lies within \[0, 0, 80, 60\]"


@pytest.fixture
def ctx() -> ToolContext:
    return ToolContext(images=[IMAGE], metadata={}, rng=np.random.default_rng(0), max_pixels=224 * 224)


def _crop(ctx: ToolContext, **arguments: object) -> np.ndarray:
    """Run the registered crop tool (with validation) and return its single image."""
    result = TOOLS.get("crop")(ctx, arguments)
    assert len(result.images) == 1
    return result.images[0]


@settings(max_examples=100, deadline=None)
@given(
    xs=st.lists(st.integers(0, W), min_size=2, max_size=2, unique=True).map(sorted),
    ys=st.lists(st.integers(0, H), min_size=2, max_size=2, unique=True).map(sorted),
)
def test_crop_equals_numpy_slicing(xs: list[int], ys: list[int]) -> None:
    ctx = ToolContext(images=[IMAGE], metadata={}, rng=np.random.default_rng(0), max_pixels=224 * 224)
    (x1, x2), (y1, y2) = xs, ys
    result = TOOLS.get("crop")(ctx, {"box": [x1, y1, x2, y2]})
    assert np.array_equal(result.images[0], IMAGE[y1:y2, x1:x2])
    assert result.text == f"crop of image 0 at [{x1}, {y1}, {x2}, {y2}]"


def test_crop_does_not_touch_the_source_image(ctx: ToolContext) -> None:
    before = IMAGE.copy()
    _crop(ctx, box=[10, 10, 20, 20])
    assert np.array_equal(IMAGE, before)


@pytest.mark.parametrize(
    "box, expected",
    [
        ([10.5, 20.2, 30.1, 40.9], (10, 20, 31, 41)),  # floor the start, ceil the end
        ([10.0, 20.0, 30.0, 40.0], (10, 20, 30, 40)),  # whole floats stay put
        ([3.9, 3.9, 4.1, 4.1], (3, 3, 5, 5)),  # a sub-pixel box still yields whole pixels (2x2)
    ],
)
def test_fractional_boxes_widen_to_whole_pixels(ctx: ToolContext, box: list[float], expected: tuple) -> None:
    assert parse_box(box, W, H) == expected
    x1, y1, x2, y2 = expected
    assert np.array_equal(_crop(ctx, box=box), IMAGE[y1:y2, x1:x2])


@pytest.mark.parametrize(
    "box, expected",
    [
        ([-10, -5, 30, 100], (0, 0, 30, 60)),  # clipped at the top-left and the bottom
        ([70, 50, 200, 200], (70, 50, 80, 60)),  # clipped at the bottom-right
        ([-1e9, -1e9, 1e9, 1e9], (0, 0, 80, 60)),  # the whole image
    ],
)
def test_partly_outside_boxes_are_clipped(ctx: ToolContext, box: list[float], expected: tuple) -> None:
    assert parse_box(box, W, H) == expected
    x1, y1, x2, y2 = expected
    assert np.array_equal(_crop(ctx, box=box), IMAGE[y1:y2, x1:x2])


@pytest.mark.parametrize("box", [[-10, 0, 30, 30], [0, -0.5, 30, 30], [0, 0, 80.5, 30], [0, 0, 30, 1e308],
                                 [-1e308, -1e308, 1e308, 1e308]],
                         ids=["negative-x", "negative-y", "past-width", "past-height", "huge-both-ways"])
def test_a_clipped_box_is_said_so_whichever_side_it_leaves(ctx: ToolContext, box: list[float]) -> None:
    """Out of range is treated alike for either sign: clipped, and the text says so (not silently)."""
    result = crop(ctx, box=box)
    assert result.text.endswith(f"(clipped to the {W}x{H} image)"), result.text


def test_a_box_inside_the_image_says_nothing_of_clipping(ctx: ToolContext) -> None:
    assert crop(ctx, box=[0, 0, W, H]).text == f"crop of image 0 at [0, 0, {W}, {H}]"


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"box": [100, 100, 120, 120]}, r"box \[100, 100, 120, 120\] lies outside the image; " + FRAME),
        ({"box": [-20, -20, -10, -10]}, r"lies outside the image; " + FRAME),
        ({"box": [80, 0, 90, 10]}, r"lies outside the image"),  # starts exactly at the right edge
        (
            {"box": [10, 10, 10, 20]},
            r"box \[10, 10, 10, 20\] is empty or inverted: need x1 < x2 and y1 < y2; " + FRAME,
        ),
        ({"box": [30, 10, 10, 20]}, r"is empty or inverted"),
        ({"box": [10, 30, 20, 10]}, r"is empty or inverted"),
        ({"box": [math.nan, 0, 10, 10]}, r"box must hold finite numbers, got \[nan, 0, 10, 10\]; " + FRAME),
        ({"box": [0, 0, math.inf, 10]}, r"box must hold finite numbers"),
        ({"box": [0, 0, -math.inf, 10]}, r"box must hold finite numbers"),
        ({"box": [0, 0, 10**400, 10]}, r"box must hold finite numbers"),  # an int too big for a float
        ({"box": [1, 2, 3]}, r"box must be 4 numbers \[x1, y1, x2, y2\], got \[1, 2, 3\]; " + FRAME),
        ({"box": [1, 2, 3, 4, 5]}, r"box must be 4 numbers"),
        ({"box": []}, r"box must be 4 numbers"),
        (
            {"box": ["0", "0", "10", "10"]},
            r"box must be 4 numbers \[x1, y1, x2, y2\], got \['0', '0', '10', '10'\]",
        ),
        ({"box": [True, 0, 10, 10]}, r"box must be 4 numbers"),
        ({"box": [[0, 0], [10, 10]]}, r"box must be 4 numbers"),
        ({"box": [0, 0, None, 10]}, r"box must be 4 numbers"),
        ({"box": "0, 0, 10, 10"}, r"argument 'box' must be a JSON array"),
        (
            {"box": [0, 0, 10, 10], "image_index": 1},
            r"image_index 1 does not exist; valid indices are 0\.\.0",
        ),
        ({"box": [0, 0, 10, 10], "image_index": -1}, r"image_index -1 does not exist"),
        ({"box": [0, 0, 10, 10], "image_index": 0.0}, r"argument 'image_index' must be a JSON integer"),
        ({"box": [0, 0, 10, 10], "image_index": True}, r"argument 'image_index' must be a JSON integer"),
        ({"image_index": 0}, r"missing required argument\(s\) \['box'\]"),
        ({"box": [0, 0, 10, 10], "zoom": 2}, r"unknown argument\(s\) \['zoom'\]"),
    ],
)
def test_bad_calls_raise_a_helpful_tool_error(ctx: ToolContext, arguments: dict, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        TOOLS.get("crop")(ctx, arguments)


def test_crop_of_a_crop_through_the_env() -> None:
    env = gymnasium.make("vgym/VisualSearch-v0")
    try:
        obs, info = env.reset(options={"split": "val", "index": 3})
        protocol, scene = env.unwrapped.protocol, env.unwrapped.sample.images[0]
        rx1, ry1, rx2, ry2 = env.unwrapped.sample.metadata["region"]

        obs, _, _, _, info = env.step(protocol.format_tool_call("crop", {"box": [rx1, ry1, rx2, ry2]}))
        assert info["tool_calls"][0]["ok"] and info["tool_calls"][0]["image_indices"] == [1]

        # Image 1 is the region (one cell) at full resolution, so its own pixel frame starts at 0.
        obs, _, _, _, info = env.step(
            protocol.format_tool_call("crop", {"box": [2, 5, 32, 25], "image_index": 1})
        )
        (record,) = info["tool_calls"]
        assert record["ok"], record["error"]
        assert record["image_indices"] == [2]
        assert "[image 2: 30x20]" in obs["text"]
        expected = fit_to_budget(scene[ry1 + 5 : ry1 + 25, rx1 + 2 : rx1 + 32], 224 * 224, upscale=True)
        (shown,) = obs["images"]
        assert np.array_equal(shown, expected)
    finally:
        env.close()
