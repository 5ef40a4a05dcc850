"""Tests of vgym/tooling.py: Tool schemas and argument validation, and fit_to_budget.

Tools under test are local functions wrapped in ``Tool`` (never registered); the registry contract test reads
the registered TOOLS without changing them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vgym  # noqa: F401  (registers the built-in tools)
from vgym.errors import ToolError
from vgym.tooling import TOOLS, Tool, ToolContext, ToolResult, fit_to_budget


def zoom(
    ctx: ToolContext, factor: float, label: str = "x", image_index: int = 0, flip: bool = False
) -> ToolResult:
    """Zoom into an image.

    More text after the first paragraph.

    Args:
        factor: How much to zoom.
        label: A label for the result.
        image_index: Which image to zoom.
        flip: Whether to flip it.
    """
    return ToolResult(text=f"{factor} {label} {image_index} {flip} {len(ctx.images)}")


@pytest.fixture
def tool() -> Tool:
    return Tool(zoom)


@pytest.fixture
def ctx() -> ToolContext:
    return ToolContext(
        images=[np.zeros((4, 4, 3), np.uint8)], metadata={}, rng=np.random.default_rng(0), max_pixels=16
    )


# ---------------------------------------------------------------- schema


def test_schema_comes_from_signature_and_docstring_without_ctx(tool: Tool) -> None:
    fn = tool.schema["function"]
    assert fn["name"] == "zoom"
    # Everything before "Args:" is the description; the Args section becomes the parameter descriptions.
    assert tool.description == "Zoom into an image.\n\nMore text after the first paragraph."
    params = fn["parameters"]
    assert list(params["properties"]) == ["factor", "label", "image_index", "flip"]  # no "ctx"
    assert params["required"] == ["factor"]
    assert {k: v["type"] for k, v in params["properties"].items()} == {
        "factor": "number",
        "label": "string",
        "image_index": "integer",
        "flip": "boolean",
    }
    assert params["properties"]["factor"]["description"] == "How much to zoom."
    assert "return" not in fn
    assert (
        tool.signature_hint()
        == "factor: number, label: string (optional), image_index: integer (optional), "
        + ("flip: boolean (optional)")
    )


def test_name_override(tool: Tool) -> None:
    named = Tool(zoom, name="magnify")
    assert named.name == "magnify"
    assert named.schema["function"]["name"] == "magnify"
    assert tool.name == "zoom"


def test_a_tool_must_take_a_context() -> None:
    def nothing() -> ToolResult:
        """Do nothing."""
        return ToolResult()

    with pytest.raises(TypeError, match="must take the ToolContext as its first parameter"):
        Tool(nothing)


@pytest.mark.parametrize("name", TOOLS.names())
def test_every_registered_tool_has_a_described_schema(name: str) -> None:
    tool = TOOLS.get(name)
    assert tool.name == name
    fn = tool.schema["function"]
    assert fn["description"]
    properties = fn["parameters"]["properties"]
    assert "ctx" not in properties
    assert all(p.get("description") for p in properties.values()), (
        f"{name}: every argument needs a description"
    )


# ---------------------------------------------------------------- validation


def test_valid_arguments_run_the_function(tool: Tool, ctx: ToolContext) -> None:
    assert tool(ctx, {"factor": 2}).text == "2 x 0 False 1"  # an int is a valid JSON number
    assert tool(ctx, {"factor": 1.5, "label": "y", "image_index": 0, "flip": True}).text == "1.5 y 0 True 1"


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"factor": 2, "zoom_level": 3}, r"zoom: unknown argument\(s\) \['zoom_level'\]"),
        # the hidden context is not an argument
        ({"ctx": None, "factor": 2}, r"zoom: unknown argument\(s\) \['ctx'\]"),
        ({}, r"zoom: missing required argument\(s\) \['factor'\]"),
        ({"label": "y"}, r"missing required argument\(s\) \['factor'\]"),
        ({"factor": "2"}, r"argument 'factor' must be a JSON number, got '2'"),
        ({"factor": None}, r"argument 'factor' must be a JSON number, got None"),
        ({"factor": [2]}, r"argument 'factor' must be a JSON number"),
        ({"factor": True}, r"argument 'factor' must be a JSON number, got True"),  # bool is not a number
        ({"factor": 2, "image_index": True}, r"argument 'image_index' must be a JSON integer, got True"),
        ({"factor": 2, "image_index": 1.0}, r"argument 'image_index' must be a JSON integer, got 1\.0"),
        ({"factor": 2, "flip": 1}, r"argument 'flip' must be a JSON boolean, got 1"),
        ({"factor": 2, "label": 5}, r"argument 'label' must be a JSON string, got 5"),
    ],
)
def test_invalid_arguments_raise_tool_error(
    tool: Tool, ctx: ToolContext, arguments: dict, message: str
) -> None:
    with pytest.raises(ToolError, match=message) as info:
        tool(ctx, arguments)
    # Every message tells the model what a valid call looks like.
    assert "Expected arguments: factor: number" in str(info.value)


# ---------------------------------------------------------------- fit_to_budget


def test_within_budget_returns_the_same_object() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    assert fit_to_budget(image, 100) is image  # exactly at the budget
    assert fit_to_budget(image, 1000) is image


@pytest.mark.parametrize(
    "shape, max_pixels, upscale, expected",
    [
        ((1344, 1344), 224 * 224, False, (224, 224)),  # the visual-search scene shrinks 6x
        ((100, 50), 1250, False, (50, 25)),  # scale sqrt(1250 / 5000) = 1/2
        ((112, 112), 224 * 224, True, (224, 224)),  # a one-cell crop is zoomed 2x
        # scale sqrt(50176 / 6272) = sqrt(8) = 2.828: 56*2.828 = 158.4 -> 158, 112*2.828 = 316.8 -> 316
        ((56, 112), 224 * 224, True, (158, 316)),
        ((1, 1000), 100, False, (1, 100)),  # a strip cannot stay 1:1000 under 100 pixels; it keeps 1 row
        ((10, 10), 224 * 224, False, (10, 10)),  # small images are not enlarged by default
    ],
)
def test_fit_to_budget_by_hand(
    shape: tuple[int, int], max_pixels: int, upscale: bool, expected: tuple[int, int]
) -> None:
    out = fit_to_budget(np.zeros((*shape, 3), np.uint8), max_pixels, upscale=upscale)
    assert out.shape == (*expected, 3)
    assert out.dtype == np.uint8


@pytest.mark.parametrize("upscale", [False, True])
def test_fit_to_budget_keeps_a_flat_colour(upscale: bool) -> None:
    image = np.empty((40, 30, 3), np.uint8)
    image[:] = (200, 100, 7)
    out = fit_to_budget(image, 300 if not upscale else 5000, upscale=upscale)
    assert out.shape != image.shape
    assert (out == (200, 100, 7)).all()


@settings(max_examples=150, deadline=None)
@given(
    h=st.integers(1, 1200),
    w=st.integers(1, 1200),
    max_pixels=st.integers(1, 300_000),
    upscale=st.booleans(),
)
def test_fit_to_budget_respects_the_budget_and_the_aspect_ratio(
    h: int, w: int, max_pixels: int, upscale: bool
) -> None:
    image = np.zeros((h, w, 3), np.uint8)
    out = fit_to_budget(image, max_pixels, upscale=upscale)
    H, W = out.shape[:2]
    assert out.dtype == np.uint8 and out.shape[2] == 3
    assert H >= 1 and W >= 1
    if h * w <= max_pixels and not upscale:
        assert out is image
        return
    assert H * W <= max_pixels
    scale = math.sqrt(max_pixels / (h * w))
    if h * scale >= 1 and w * scale >= 1:
        # Both sides are the ideal scaled size rounded down: the aspect ratio is kept to within a pixel per
        # side,
        # and the budget is nearly filled.
        assert h * scale - 1 < H <= h * scale + 1e-9
        assert w * scale - 1 < W <= w * scale + 1e-9
    else:
        # A strip thinner than one pixel at this scale: it keeps one row/column and as much length as fits.
        short, long_in, long_out = min(H, W), max(h, w), max(H, W)
        assert short == 1
        assert long_out == max(1, min(math.floor(long_in * scale), max_pixels))


@settings(max_examples=50, deadline=None)
@given(h=st.integers(1, 60), w=st.integers(1, 60))
def test_upscale_fills_the_budget(h: int, w: int) -> None:
    max_pixels = 224 * 224
    out = fit_to_budget(np.zeros((h, w, 3), np.uint8), max_pixels, upscale=True)
    H, W = out.shape[:2]
    scale = math.sqrt(max_pixels / (h * w))  # >= 224 / 60 > 3: always an enlargement
    assert H > h and W > w
    assert H * W <= max_pixels
    # Rounding down costs less than one row and one column of the ideal size.
    assert H * W > (h * scale - 1) * (w * scale - 1)
