"""Tests of tools/ocr.py (``vgym.tools.ocr``): RapidOCR on text drawn with OpenCV, the oracle, reading order,
box restriction, the model-facing errors and cache replay.

The RapidOCR engine is loaded once per module with one onnxruntime thread (the test machine's cores are
shared).
"""

from __future__ import annotations

import json
import math
import socket
import time
from typing import Any

import cv2
import numpy as np
import pytest

import vgym.tools.ocr  # noqa: F401  (registers the ocr tool)
from vgym.errors import ToolError
from vgym.tool_runtime import ToolRuntime, ToolRuntimeConfig
from vgym.tooling import TOOLS, ToolContext
from vgym.tools.ocr import reading_order, render_text_scene

OPTIONS = {"EngineConfig.onnxruntime.intra_op_num_threads": 1}  # shared CPU; production uses all cores
FONT = cv2.FONT_HERSHEY_SIMPLEX
# text, baseline origin, scale, px
LINES = [("VGYM 2026", (60, 150), 2.0, 4), ("Exit at gate 12", (60, 350), 1.5, 3)]
RECALL_FLOOR = 0.75  # per scene (4-8 lines), so one miss passes; measured: 212 of 212 lines (1.00) over
# seeds 0..39, counting a line when its text matches exactly after normalising case and spaces and IoU >= 0.5


def _draw(lines: list[tuple[str, tuple[int, int], float, int]], width: int, height: int) -> np.ndarray:
    """Black text on white, drawn with OpenCV."""
    image = np.full((height, width, 3), 255, np.uint8)
    for text, origin, scale, thickness in lines:
        cv2.putText(image, text, origin, FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return image


def _drawn_box(text: str, origin: tuple[int, int], scale: float, thickness: int) -> list[int]:
    """Where cv2.putText puts ``text``: from ``origin`` (bottom-left of the baseline) up by the glyph height
    and down by the descender."""
    (w, h), baseline = cv2.getTextSize(text, FONT, scale, thickness)
    return [origin[0], origin[1] - h, origin[0] + w, origin[1] + baseline]


def _near(box: list[int], drawn: list[int]) -> bool:
    """Every edge of ``box`` within 40% of the drawn text's height of the drawn box: the detector pads lines
    by a margin (measured up to 35% of the height at the top, where putText's height leaves out half the
    stroke)."""
    tolerance = 0.4 * (drawn[3] - drawn[1])
    return all(abs(a - b) <= tolerance for a, b in zip(box, drawn))


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _iou(a: list[float], b: list[float]) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _ctx(image: np.ndarray, resource: Any = None, metadata: dict | None = None) -> ToolContext:
    return ToolContext(
        images=[image],
        metadata=metadata or {},
        rng=np.random.default_rng(0),
        max_pixels=224 * 224,
        resource=resource,
    )


@pytest.fixture(scope="module")
def engine() -> Any:
    return TOOLS.get("ocr").backend("rapidocr").loader(OPTIONS)


@pytest.fixture(scope="module")
def page() -> np.ndarray:
    return _draw(LINES, 640, 480)


def _read(ctx: ToolContext, backend: str = "rapidocr", **arguments: Any) -> tuple[list[dict], np.ndarray]:
    result = TOOLS.get("ocr")(ctx, arguments, backend=backend)
    assert len(result.images) == 1
    return json.loads(result.text), result.images[0]


def test_rapidocr_reads_drawn_lines_where_they_were_drawn(
    engine: Any, page: np.ndarray, request: Any
) -> None:
    start = time.perf_counter()
    lines, annotated = _read(_ctx(page, engine))
    request.node.user_properties.append(("latency_640x480_s", time.perf_counter() - start))  # reported only
    assert [_norm(line["text"]) for line in lines] == ["vgym 2026", "exit at gate 12"]  # top line first
    for line, drawn in zip(lines, LINES):
        assert _near(line["box"], _drawn_box(*drawn)), (line["box"], _drawn_box(*drawn))
        assert 0.5 < line["score"] <= 1.0
    # The annotation draws red boxes on a copy; white and black pixels elsewhere are untouched.
    assert annotated.shape == page.shape and not np.array_equal(annotated, page)
    x1, y1, x2, y2 = lines[0]["box"]
    assert tuple(annotated[y1 + (y2 - y1) // 2, x1]) == (255, 0, 0)
    assert np.array_equal(annotated[240:260], page[240:260])  # the empty band between the lines


def test_rapidocr_is_repeatable(engine: Any, page: np.ndarray) -> None:
    first = TOOLS.get("ocr")(_ctx(page, engine), {})
    second = TOOLS.get("ocr")(_ctx(page, engine), {})
    assert first.text == second.text
    assert np.array_equal(first.images[0], second.images[0])
    assert not TOOLS.get("ocr").backend("rapidocr").nondeterministic


def test_rapidocr_box_reads_only_that_region_in_full_image_coordinates(engine: Any, page: np.ndarray) -> None:
    # The second line spans about x 60..395, y 320..360; the box [40, 280, 620, 400] holds it and no other.
    lines, annotated = _read(_ctx(page, engine), box=[40, 280, 620, 400])
    assert [_norm(line["text"]) for line in lines] == ["exit at gate 12"]
    # not shifted by the region's (40, 280) corner
    assert _near(lines[0]["box"], _drawn_box(*LINES[1])), lines
    assert annotated.shape == (120, 580, 3)  # the region's view


def test_rapidocr_on_a_blank_image_finds_nothing(engine: Any) -> None:
    blank = np.full((120, 160, 3), 255, np.uint8)
    lines, annotated = _read(_ctx(blank, engine))
    assert lines == [] and np.array_equal(annotated, blank)


@pytest.mark.parametrize("seed", range(6))
def test_rapidocr_recall_on_procedural_scenes(engine: Any, seed: int) -> None:
    image, texts = render_text_scene(np.random.default_rng(seed))
    lines, _ = _read(_ctx(image, engine))
    found = [next((i for i, line in enumerate(lines) if _norm(line["text"]) == _norm(truth["text"])
                   and _iou(line["box"], truth["box"]) >= 0.5), None) for truth in texts]
    assert sum(i is not None for i in found) / len(texts) >= RECALL_FLOOR, (texts, lines)
    matched = [i for i in found if i is not None]
    assert matched == sorted(matched)  # the ground truth is in reading order, so the matches come in order


def test_rapidocr_reads_a_4k_image(engine: Any, request: Any) -> None:
    height, width = 2160, 3840
    lines = [
        (text, (200 + 300 * i, 400 + 450 * i), 3.0, 6)
        for i, text in enumerate(["VGYM 2026", "Quarterly report", "Total 4213 units", "Exit at gate 12"])
    ]
    ctx = _ctx(_draw(lines, width, height), engine)
    start = time.perf_counter()
    found, annotated = _read(ctx)
    # reported, not asserted
    request.node.user_properties.append(("latency_4k_s", time.perf_counter() - start))
    assert [_norm(line["text"]) for line in found] == [_norm(text) for text, *_ in lines]
    for line, drawn in zip(found, lines):
        # mapped back from RapidOCR's working size
        assert _near(line["box"], _drawn_box(*drawn)), (line, drawn)
    assert annotated.shape == (height, width, 3)


def test_loading_and_reading_never_touch_the_network(
    monkeypatch: pytest.MonkeyPatch, page: np.ndarray
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    fresh = TOOLS.get("ocr").backend("rapidocr").loader({**OPTIONS, "Global.text_score": 0.6})
    lines, _ = _read(_ctx(page, fresh), box=[0, 60, 640, 200])
    assert [_norm(line["text"]) for line in lines] == ["vgym 2026"]


def test_bad_loader_options_raise_a_tool_error() -> None:
    with pytest.raises(
        ToolError, match=r"invalid rapidocr options \{'Global\.no_such_key': 1\}.*Global\.text_score"
    ):
        TOOLS.get("ocr").backend("rapidocr").loader({"Global.no_such_key": 1})


def test_rapidocr_without_a_loaded_engine_says_how_to_load_it(page: np.ndarray) -> None:
    with pytest.raises(ToolError, match=r"rapidocr backend has no engine.*ToolRuntime"):
        TOOLS.get("ocr")(_ctx(page), {})


def test_oracle_returns_the_metadata_lines() -> None:
    image, texts = render_text_scene(np.random.default_rng(3))
    lines, annotated = _read(_ctx(image, metadata={"texts": texts}), backend="oracle")
    assert lines == [{**truth, "score": 1.0} for truth in texts]
    assert annotated.shape == image.shape


def test_oracle_box_keeps_lines_whose_centre_is_inside() -> None:
    texts = [{"text": "top", "box": [10, 10, 110, 40]},  # centre (60, 25)
             {"text": "middle", "box": [10, 50, 210, 80]},  # centre (110, 65)
             {"text": "bottom", "box": [100, 90, 180, 120]}]  # centre (140, 105)
    image = np.full((130, 220, 3), 255, np.uint8)
    # [0, 20, 150, 70] holds the centres (60, 25) and (110, 65) though it cuts both boxes; (140, 105) lies
    # below.
    lines, annotated = _read(_ctx(image, metadata={"texts": texts}), backend="oracle", box=[0, 20, 150, 70])
    assert [line["text"] for line in lines] == ["top", "middle"]
    assert annotated.shape == (50, 150, 3)


def test_oracle_without_texts_metadata_says_so(page: np.ndarray) -> None:
    with pytest.raises(ToolError, match=r"needs metadata\['texts'\].*use 'rapidocr'"):
        TOOLS.get("ocr")(_ctx(page), {}, backend="oracle")


@pytest.mark.parametrize("backend", ["rapidocr", "oracle"])
@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"image_index": 1}, r"image_index 1 does not exist; valid indices are 0\.\.0"),
        ({"image_index": -1}, r"image_index -1 does not exist"),
        ({"image_index": 0.5}, r"argument 'image_index' must be a JSON integer"),
        (
            {"box": [700, 0, 800, 100]},
            r"box \[700, 0, 800, 100\] lies outside the image; the image is 640x480",
        ),
        ({"box": [100, 100, 50, 200]}, r"box \[100, 100, 50, 200\] is empty or inverted"),
        ({"box": [0, 0, math.nan, 10]}, r"box must hold finite numbers"),
        ({"box": [1, 2, 3]}, r"box must be 4 numbers \[x1, y1, x2, y2\], got \[1, 2, 3\]"),
        ({"box": "0, 0, 10, 10"}, r"argument 'box' must be a JSON array"),
        ({"language": "en"}, r"unknown argument\(s\) \['language'\]"),
    ],
)
def test_bad_calls_raise_a_helpful_tool_error(engine: Any, page: np.ndarray, backend: str, arguments: dict,
                                              message: str) -> None:
    ctx = _ctx(page, engine, metadata={"texts": []})
    with pytest.raises(ToolError, match=message):
        TOOLS.get("ocr")(ctx, arguments, backend=backend)


def test_reading_order_groups_rows_then_reads_left_to_right() -> None:
    boxes = [[300, 10, 400, 40],  # 0: centre y 25, right of 1 on the first row
             [10, 14, 200, 44],  # 1: centre y 29 lies in 0's extent 10..40, so same row
             [50, 100, 150, 130],  # 2: centre y 115, the last row
             [0, 38, 50, 60]]  # 3: centre y 49 lies below 0's extent: a row of its own
    # Rows [0, 1], [3], [2]; sorting by top edge alone would give [0, 1, 3, 2].
    assert reading_order(boxes) == [1, 0, 3, 2]
    assert reading_order([]) == []


def test_render_text_scene_is_seeded() -> None:
    a_image, a_texts = render_text_scene(np.random.default_rng(7))
    b_image, b_texts = render_text_scene(np.random.default_rng(7))
    c_image, c_texts = render_text_scene(np.random.default_rng(8))
    assert np.array_equal(a_image, b_image) and a_texts == b_texts
    assert not np.array_equal(a_image, c_image) and a_texts != c_texts
    # the corner is background; ink is 40+ levels darker
    ink = a_image.min(axis=2) < int(a_image[0, 0, 0]) - 40
    for truth in a_texts:  # each ground-truth box is tight: ink on its edge rows/columns, none just outside
        x1, y1, x2, y2 = truth["box"]
        assert 0 < x1 < x2 < 640 and 0 < y1 < y2 < 480
        assert (
            ink[y1:y2, x1].any()
            and ink[y1:y2, x2 - 1].any()
            and ink[y1, x1:x2].any()
            and ink[y2 - 1, x1:x2].any()
        )
        assert not ink[y1:y2, x1 - 1].any() and not ink[y1:y2, x2].any()
        assert not ink[y1 - 1, x1:x2].any() and not ink[y2, x1:x2].any()


def test_cache_replay_through_the_runtime(tmp_path: Any, page: np.ndarray) -> None:
    config = ToolRuntimeConfig(
        cache_dir=str(tmp_path), backends={"ocr": "rapidocr"}, options={"ocr": OPTIONS}
    )
    runtime = ToolRuntime(config)
    try:
        first, first_info = runtime.call(TOOLS.get("ocr"), _ctx(page), {"box": [0, 60, 640, 400]})
        second, second_info = runtime.call(TOOLS.get("ocr"), _ctx(page), {"box": [0, 60, 640, 400]})
    finally:
        runtime.close()
    assert not first_info.cache_hit and second_info.cache_hit
    assert [_norm(line["text"]) for line in json.loads(first.text)] == ["vgym 2026", "exit at gate 12"]
    assert second.text == first.text
    assert (
        second.images[0].tobytes() == first.images[0].tobytes()
        and second.images[0].shape == first.images[0].shape
    )
