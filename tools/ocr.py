"""OCR: read the text lines of an image (or of a box of it), with their boxes, in reading order.

Contents: :func:`ocr`, :func:`reading_order`, :func:`render_text_scene`.

Backends:

- ``rapidocr`` (default): PP-OCR detection + recognition from the ``rapidocr`` 3.x wheel, run by onnxruntime.
  The wheel ships its models, so it runs offline; it is loaded once per process by the backend's loader, whose
  options are RapidOCR config keys with JSON values (e.g.
  ``{"Global.text_score": 0.6, "EngineConfig.onnxruntime.intra_op_num_threads": 2}``). Text is detected on the
  image shrunk to a long side of 960 px and read at up to 2000 px, so tiny print on a 4K image may be missed;
  OCR of a ``box`` reads closer.
- ``oracle``: the sample's ``metadata["texts"]`` (a list of ``{"text", "box"}``); with a box argument, the
  lines whose box centre lies inside it.

Both return the lines as JSON text, ``[{"text": ..., "box": [x1, y1, x2, y2], "score": ...}, ...]`` (boxes in
pixels of the addressed image, x2/y2 exclusive, even when only a ``box`` of it was read), and one image: the
image (or the box of it) with each line's box drawn and numbered in list order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from vgym.errors import ToolError
from vgym.tooling import TOOLS, Backend, Tool, ToolContext, ToolResult
from vgym.tools.crop import parse_box

__all__ = ["ocr", "reading_order", "render_text_scene"]

_DEFAULT_OPTIONS: dict[str, Any] = {
    "Global.log_level": "error",
    "Det.limit_type": "max",
    "Det.limit_side_len": 960,
}
"""Our defaults over RapidOCR's. Log level: RapidOCR warns on every image without text; errors still show.
Detector size: RapidOCR scales an image's *short* side up to 736 px, so a 580x120 region was read 6x enlarged,
split into single words and took 3.5 s; detecting at a long side of at most 960 px (PaddleOCR's classic
default) read it as one line in 0.1 s, kept recall on our scenes, and read 13-px text on a 4K image
(measured)."""

_BOX_COLOUR = (255, 0, 0)  # RGB red: visible on dark-on-light text and on photos alike


def ocr(ctx: ToolContext, image_index: int = 0, box: list[float] | None = None) -> ToolResult:
    """Read the text in an image: each text line with its box and a confidence, top-to-bottom, left-to-right.

    Args:
        image_index: Which image to read (0 is the first image).
        box: Only read this region [x1, y1, x2, y2] in pixels of that image (omit to read the whole image).

    Returns:
        The lines as JSON text, ``[{"text", "box", "score"}, ...]`` in reading order with boxes in pixels of
        the addressed image, and one image: the read region with each line's box drawn and numbered in list
        order.

    Raises:
        ToolError: if ``image_index`` does not exist, ``box`` is invalid or outside the image, or the backend
            cannot serve the sample (no engine loaded, no ``metadata["texts"]`` for the oracle).
    """
    return _ocr_rapidocr(ctx, image_index=image_index, box=box)


def reading_order(boxes: Sequence[Sequence[float]]) -> list[int]:
    """The order in which to read text lines: rows top to bottom, and left to right within a row.

    Lines are taken by the vertical centre of their box; a line joins the current row when its centre lies
    within the vertical extent of the row's first line, so a slightly slanted or taller neighbour stays in its
    row.

    Args:
        boxes: ``[x1, y1, x2, y2]`` per line.

    Returns:
        Indices into ``boxes`` in reading order (a permutation of ``range(len(boxes))``; stable for ties).
    """
    by_centre = sorted(range(len(boxes)), key=lambda i: (boxes[i][1] + boxes[i][3]) / 2)
    rows: list[list[int]] = []
    for i in by_centre:
        centre = (boxes[i][1] + boxes[i][3]) / 2
        if rows and boxes[rows[-1][0]][1] <= centre <= boxes[rows[-1][0]][3]:
            rows[-1].append(i)
        else:
            rows.append([i])
    return [i for row in rows for i in sorted(row, key=lambda j: boxes[j][0])]


def render_text_scene(
    rng: np.random.Generator, *, width: int = 640, height: int = 480, num_rows: int = 4
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw a procedural document: rows of dark words and numbers on a light background, with ground truth.

    Each row holds one or two text items (two are at least 80 px apart, so they read as separate lines) in a
    random Hershey font, scale and dark colour.

    Args:
        rng: the source of all randomness.
        width: image width in pixels (at least 320).
        height: image height in pixels; it must leave at least 50 px per row.
        num_rows: how many rows of text.

    Returns:
        ``(image, texts)``: the RGB uint8 (height, width, 3) image and its ``metadata["texts"]`` ground truth,
        ``[{"text": str, "box": [x1, y1, x2, y2]}, ...]`` in reading order (boxes tight around the ink, x2/y2
        exclusive).

    Raises:
        ValueError: if the image is too small for ``num_rows`` rows.
    """
    if width < 320 or num_rows < 1 or height < 50 * num_rows:
        raise ValueError(
            f"need width >= 320 and height >= 50 * num_rows, got {width}x{height}, {num_rows} rows"
        )
    background = int(rng.integers(225, 256))
    image = np.full((height, width, 3), background, np.uint8)
    fonts = [
        cv2.FONT_HERSHEY_SIMPLEX,
        cv2.FONT_HERSHEY_DUPLEX,
        cv2.FONT_HERSHEY_COMPLEX,
        cv2.FONT_HERSHEY_TRIPLEX,
    ]
    band = height // num_rows
    texts: list[dict[str, Any]] = []
    for row in range(num_rows):
        items = [_random_phrase(rng) for _ in range(int(rng.integers(1, 3)))]
        font = fonts[int(rng.integers(len(fonts)))]
        thickness = int(rng.integers(2, 4))
        # a Hershey glyph is ~30 px tall at scale 1
        scale = min(float(rng.uniform(0.9, 1.6)), 0.5 * band / 30)
        widths = [cv2.getTextSize(t, font, scale, thickness)[0][0] for t in items]
        if len(items) == 2 and sum(widths) + 80 > width - 20:  # no room for two: keep the first
            items, widths = items[:1], widths[:1]
        if widths[0] > width - 20:  # one long phrase: shrink it to fit
            scale *= (width - 20) / widths[0]
            widths = [cv2.getTextSize(items[0], font, scale, thickness)[0][0]]
        slack = width - 20 - sum(widths) - 80 * (len(items) - 1)  # spare width, shared out as left margins
        text_h = cv2.getTextSize(items[0], font, scale, thickness)[0][1]
        y = row * band + (band + text_h) // 2  # the row's baseline, centring the text in its band
        x = 10
        for text, w in zip(items, widths):
            x += int(rng.integers(0, slack // len(items) + 1))
            colour = tuple(int(c) for c in rng.integers(0, 80, 3))
            cv2.putText(image, text, (x, y), font, scale, colour, thickness, cv2.LINE_AA)
            # The ground-truth box is the ink itself, searched within the row's band around this item.
            wx1, wx2 = max(0, x - 2 * thickness), min(width, x + w + 2 * thickness)
            ink = np.argwhere(image[row * band : (row + 1) * band, wx1:wx2].min(axis=2) < background - 40)
            (iy1, ix1), (iy2, ix2) = ink.min(axis=0), ink.max(axis=0) + 1
            texts.append({"text": text, "box": [wx1 + int(ix1), row * band + int(iy1), wx1 + int(ix2),
                                                row * band + int(iy2)]})
            x += w + 80
    return image, texts


_WORDS = (
    "exit",
    "gate",
    "total",
    "report",
    "north",
    "station",
    "coffee",
    "open",
    "daily",
    "museum",
    "parking",
    "ticket",
    "price",
    "hotel",
    "garden",
    "market",
    "bridge",
    "river",
    "model",
    "vision",
    "street",
    "office",
)


def _random_phrase(rng: np.random.Generator) -> str:
    """One or two words and maybe a number, in upper, title or lower case."""
    words = [str(rng.choice(_WORDS)) for _ in range(int(rng.integers(1, 3)))]
    if rng.random() < 0.5:
        words.append(str(int(rng.integers(10, 10000))))
    case = int(rng.integers(3))
    phrase = " ".join(words)
    return phrase.upper() if case == 0 else phrase.title() if case == 1 else phrase


def _select(
    ctx: ToolContext, image_index: int, box: list[float] | None
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The addressed image and the region to read, ``(x1, y1, x2, y2)`` (the whole image when ``box`` is
    None)."""
    if not 0 <= image_index < len(ctx.images):
        raise ToolError(
            f"image_index {image_index} does not exist; valid indices are 0..{len(ctx.images) - 1}."
        )
    image = ctx.images[image_index]
    height, width = image.shape[:2]
    region = (0, 0, width, height) if box is None else parse_box(box, width, height)
    return image, region


def _result(image: np.ndarray, region: tuple[int, int, int, int], lines: list[dict[str, Any]]) -> ToolResult:
    """Sort ``lines`` into reading order and package them with the region's annotated view."""
    lines = [lines[i] for i in reading_order([line["box"] for line in lines])]
    x1, y1, x2, y2 = region
    view = np.ascontiguousarray(image[y1:y2, x1:x2]).copy()
    thickness = max(2, round(max(view.shape[:2]) / 320))
    for number, line in enumerate(lines):
        bx1, by1, bx2, by2 = (round(v) for v in line["box"])
        corner1, corner2 = (bx1 - x1, by1 - y1), (bx2 - x1 - 1, by2 - y1 - 1)  # x2/y2 are exclusive
        cv2.rectangle(view, corner1, corner2, _BOX_COLOUR, thickness)
        label_at = (corner1[0], max(corner1[1] - thickness, 12 * thickness))
        cv2.putText(
            view, str(number), label_at, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, _BOX_COLOUR, thickness
        )
    return ToolResult(text=json.dumps(lines), images=[view])


def _ocr_oracle(ctx: ToolContext, image_index: int = 0, box: list[float] | None = None) -> ToolResult:
    """The sample's ground-truth lines (score 1.0); with a box, those whose box centre lies inside it."""
    image, region = _select(ctx, image_index, box)
    if "texts" not in ctx.metadata:
        raise ToolError(
            "the oracle OCR backend needs metadata['texts'], which this sample lacks; use 'rapidocr'."
        )
    x1, y1, x2, y2 = region
    lines = []
    for entry in ctx.metadata["texts"]:
        bx1, by1, bx2, by2 = entry["box"]
        if x1 <= (bx1 + bx2) / 2 <= x2 and y1 <= (by1 + by2) / 2 <= y2:
            lines.append({"text": entry["text"], "box": list(entry["box"]), "score": 1.0})
    return _result(image, region, lines)


def _load_rapidocr(options: Mapping[str, Any]) -> Any:
    """Build a RapidOCR engine from the wheel's bundled models (no download) and the env's options.

    Args:
        options: RapidOCR config keys with JSON values, e.g. ``{"Global.text_score": 0.6}``; they override
            :data:`_DEFAULT_OPTIONS` and RapidOCR's defaults. Enum-valued keys (engine or model type) are
            not supported.

    Returns:
        The ``rapidocr.RapidOCR`` engine.

    Raises:
        ToolError: if an option is not a RapidOCR config key or has a wrong value.
    """
    from rapidocr import RapidOCR  # heavy (onnxruntime) and adds a log handler: import only when used

    params = {**_DEFAULT_OPTIONS, **options}
    try:
        return RapidOCR(params=params)
    except (ValueError, TypeError, KeyError) as error:
        raise ToolError(
            f"invalid rapidocr options {dict(options)!r}: {error}. Options are RapidOCR config keys such "
            f"as 'Global.text_score' or 'EngineConfig.onnxruntime.intra_op_num_threads'."
        ) from error


def _ocr_rapidocr(ctx: ToolContext, image_index: int = 0, box: list[float] | None = None) -> ToolResult:
    """PP-OCR on the region; polygons become axis-aligned boxes in the addressed image's pixels."""
    image, region = _select(ctx, image_index, box)
    if ctx.resource is None:
        raise ToolError(
            "the rapidocr backend has no engine; run it through vgym.tool_runtime.ToolRuntime, which "
            "loads it, or set ctx.resource to the backend's loader(options)."
        )
    x1, y1, x2, y2 = region
    bgr = np.ascontiguousarray(image[y1:y2, x1:x2, ::-1])  # RapidOCR takes arrays as OpenCV BGR
    output = ctx.resource(bgr)
    lines = []
    if output.boxes is not None and output.txts is not None:
        for polygon, text, score in zip(output.boxes, output.txts, output.scores):
            # (4, 2) corners, clockwise from top-left
            xs, ys = np.asarray(polygon)[:, 0], np.asarray(polygon)[:, 1]
            line_box = [x1 + max(0, math.floor(xs.min())), y1 + max(0, math.floor(ys.min())),
                        x1 + min(x2 - x1, math.ceil(xs.max())), y1 + min(y2 - y1, math.ceil(ys.max()))]
            lines.append({"text": str(text), "box": line_box, "score": round(float(score), 3)})
    return _result(image, region, lines)


TOOLS.register("ocr", Tool(ocr, backends={"rapidocr": Backend(_ocr_rapidocr, loader=_load_rapidocr),
                                          "oracle": Backend(_ocr_oracle)}, default_backend="rapidocr"))
