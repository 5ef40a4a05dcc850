"""Grounding: find the boxes of the objects a text query names in an episode image.

Contents: :func:`ground`, :class:`Detection`, :func:`detect_oracle`, :func:`detect_opencv`, :func:`detect_hf`,
:func:`load_detector`, :func:`draw_detections`, :func:`detection_point`, :func:`format_detections`,
:data:`COLOUR_HSV_RANGES`, :data:`SHAPE_WORDS`, :data:`MAX_DETECTIONS`.

Backends (the ``detect_*`` functions return :class:`Detection` lists; :mod:`vgym.tools.point` reuses them):

- ``oracle``: the sample's ``metadata["objects"]`` whose name contains every query word; image 0 only.
- ``opencv``: classical vision. Colour and shape words (``"red circle"``, ``"triangle"``) threshold the image
  in HSV and classify each contour by how well it fills its enclosing circle, rectangle and triangle;
  ``"face"`` uses OpenCV's bundled frontal-face Haar cascade and ``"person"`` its HOG people detector.
- ``hf``: a transformers zero-shot detector (OWLv2 or OWL-ViT) loaded from the local directory in the backend
  option ``model``; option ``score_threshold`` (default 0.1) drops weak boxes.

Boxes are ``[x1, y1, x2, y2]`` in whole pixels of the addressed image, x2/y2 exclusive, best first, at most
:data:`MAX_DETECTIONS`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vgym.errors import ToolError
from vgym.tooling import TOOLS, Backend, Tool, ToolContext, ToolResult

__all__ = [
    "ground", "Detection", "detect_oracle", "detect_opencv", "detect_hf", "load_detector", "draw_detections",
    "detection_point", "format_detections", "COLOUR_HSV_RANGES", "SHAPE_WORDS", "MAX_DETECTIONS",
]

MAX_DETECTIONS = 10
"""Most boxes returned per call (the best-scoring ones)."""

COLOUR_HSV_RANGES: dict[str, tuple[tuple[tuple[int, int, int], tuple[int, int, int]], ...]] = {
    # OpenCV HSV: H in 0..179 (degrees / 2), S and V in 0..255. Chromatic colours need S >= 90 so grey
    # backgrounds and their noise never count; purple and magenta share hues and are split by brightness.
    "red": (((0, 90, 70), (8, 255, 255)), ((170, 90, 70), (179, 255, 255))),
    "orange": (((9, 90, 70), (20, 255, 255)),),
    "yellow": (((21, 90, 70), (34, 255, 255)),),
    "green": (((35, 90, 50), (85, 255, 255)),),
    "cyan": (((86, 90, 70), (100, 255, 255)),),
    "blue": (((101, 90, 50), (124, 255, 255)),),
    "purple": (((125, 90, 40), (139, 255, 255)), ((140, 90, 40), (165, 255, 179))),
    "magenta": (((140, 90, 180), (169, 255, 255)),),
    "white": (((0, 0, 215), (179, 40, 255)),),
    "black": (((0, 0, 0), (179, 255, 45)),),
}
"""Inclusive HSV ranges (lower, upper) per colour word understood by the ``opencv`` backend."""

SHAPE_WORDS: dict[str, str] = {"circle": "circle", "disc": "circle", "disk": "circle", "round": "circle",
                                "square": "rectangle", "rectangle": "rectangle", "triangle": "triangle"}
"""Shape words of the ``opencv`` backend and the shape class each one means."""

_FILLER = frozenset("a an the all any each every of object thing shape".split())
"""Query words that narrow nothing; dropped by every backend (so "the red object" means "red")."""
_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "faces": "face"}
_FACE_WORDS, _PERSON_WORDS = frozenset({"face"}), frozenset({"person", "pedestrian", "human"})
_MIN_SHAPE_FIT = 0.7
"""A contour whose best fill of its enclosing circle/rectangle/triangle is below this is a blob, no shape."""


@dataclass(frozen=True)
class Detection:
    """One found object.

    Attributes:
        box: ``(x1, y1, x2, y2)`` whole pixels, ``0 <= x1 < x2 <= W``, ``0 <= y1 < y2 <= H`` (x2/y2
            exclusive).
        score: confidence in [0, 1] (1.0 for the oracle).
        point: a pixel ``(x, y)`` inside the object, when the backend knows one better than the box centre.
    """

    box: tuple[int, int, int, int]
    score: float
    point: tuple[int, int] | None = None


def _singular(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if len(word) > 3 and re.search(r"(ss|sh|ch|x)es$", word):  # boxes, glasses, benches
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    """Lower-case singular content words of ``text`` (filler words dropped)."""
    return [w for w in (_singular(t) for t in re.findall(r"[a-z0-9]+", text.lower())) if w not in _FILLER]


def _query_words(query: str) -> list[str]:
    words = _words(query)
    if not words:
        raise ToolError(f"query {query!r} names nothing to look for; describe the object, e.g. 'red circle'.")
    return words


def _image(ctx: ToolContext, image_index: int) -> np.ndarray:
    if not 0 <= image_index < len(ctx.images):
        raise ToolError(
            f"image_index {image_index} does not exist; valid indices are 0..{len(ctx.images) - 1}."
        )
    return ctx.images[image_index]


def _pixel_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """Widen a float box to whole pixels and clip it to the image; None if nothing of it is inside."""
    x1, y1 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x2, y2 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def _best(detections: list[Detection], nms_iou: float | None = 0.5) -> list[Detection]:
    """Sort by score (stable: ties keep their order), drop boxes overlapping a better one, keep the top
    few."""
    ranked = sorted(detections, key=lambda d: -d.score)
    if nms_iou is not None:  # greedy non-maximum suppression
        kept: list[Detection] = []
        for det in ranked:
            if all(_iou(det.box, other.box) <= nms_iou for other in kept):
                kept.append(det)
        ranked = kept
    return ranked[:MAX_DETECTIONS]


def _iou(a: Sequence[int], b: Sequence[int]) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detect_oracle(ctx: ToolContext, query: str, image_index: int = 0) -> list[Detection]:
    """The ``metadata["objects"]`` whose name contains every query word (score 1.0, metadata order).

    Args:
        ctx: the episode context (reads ``metadata["objects"]``).
        query: the model's description; lower-cased, split into words, plurals made singular, filler words
            ("the", "object", ...) dropped.
        image_index: which of ``ctx.images`` to search.

    Returns:
        Detections best first (at most :data:`MAX_DETECTIONS`), boxes in pixels of that image.

    Raises:
        ToolError: for an empty query, a bad ``image_index``, any index but 0, or a sample without objects.
    """
    words = _query_words(query)
    _image(ctx, image_index)
    if image_index != 0:
        raise ToolError(f"the oracle grounding backend knows image 0 only, got image_index {image_index}; "
                        "ground objects in image 0.")
    objects = ctx.metadata.get("objects")
    if objects is None:
        raise ToolError("the oracle grounding backend needs metadata['objects'], which this sample lacks; "
                        "use the opencv or hf backend.")
    height, width = ctx.images[0].shape[:2]
    found = []
    for obj in objects:
        if set(words) <= set(_words(str(obj["name"]))) and (box := _pixel_box(obj["box"], width, height)):
            point = obj.get("point")
            found.append(Detection(box, 1.0, (int(point[0]), int(point[1])) if point is not None else None))
    return _best(found, nms_iou=None)


def _colour_mask(hsv: np.ndarray, colour: str) -> np.ndarray:
    mask = np.zeros(hsv.shape[:2], np.uint8)
    for lower, upper in COLOUR_HSV_RANGES[colour]:
        mask |= cv2.inRange(hsv, np.array(lower, np.uint8), np.array(upper, np.uint8))
    return cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))  # drop single-pixel speckles


def _shape_fits(contour: np.ndarray) -> dict[str, float]:
    """How much of its smallest enclosing circle, rotated rectangle and triangle the contour fills (1 =
    exactly)."""
    area = cv2.contourArea(contour)
    hull = cv2.convexHull(contour)
    _, radius = cv2.minEnclosingCircle(hull)
    (_, (rect_w, rect_h), _) = cv2.minAreaRect(hull)
    triangle_area, _ = cv2.minEnclosingTriangle(hull.astype(np.float32))
    enclosing = {"circle": math.pi * radius**2, "rectangle": rect_w * rect_h, "triangle": triangle_area}
    return {name: min(1.0, area / a) if a > 0 else 0.0 for name, a in enclosing.items()}


def _detect_shapes(image: np.ndarray, colours: Sequence[str], shape: str | None) -> list[Detection]:
    """Contours of each colour's mask, kept if they have the asked shape (or any, when ``shape`` is None)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    height, width = image.shape[:2]
    min_area = max(20.0, 1e-4 * height * width)
    found = []
    for colour in colours:
        contours, _ = cv2.findContours(_colour_mask(hsv, colour), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            area = cv2.contourArea(contour)
            if area < min_area or area > 0.5 * height * width:  # noise, or the background itself
                continue
            fits = _shape_fits(contour)
            best = max(fits, key=fits.__getitem__)
            if shape is None:
                score = area / max(cv2.contourArea(cv2.convexHull(contour)), 1e-9)  # solidity
            elif best == shape and fits[best] >= _MIN_SHAPE_FIT:
                score = fits[best]
            else:
                continue
            x, y, w, h = cv2.boundingRect(contour)
            found.append(Detection((x, y, x + w, y + h), round(min(1.0, score), 3)))
    return found


def _detect_faces(gray: np.ndarray) -> list[Detection]:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    rects, neighbours = cascade.detectMultiScale2(cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=5,
                                                  minSize=(24, 24))
    # The cascade gives no probability; more merged neighbour detections mean a surer face, n / (n + 5) in [0,
    # 1).
    return [Detection((int(x), int(y), int(x + w), int(y + h)), round(float(n) / (float(n) + 5.0), 3))
            for (x, y, w, h), n in zip(np.asarray(rects).reshape(-1, 4), np.asarray(neighbours).reshape(-1))]


def _detect_people(gray: np.ndarray) -> list[Detection]:
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    rects, weights = hog.detectMultiScale(gray, winStride=(8, 8), padding=(8, 8), scale=1.05)
    # SVM margins are unbounded; the logistic maps them to (0, 1) (margin 0 -> 0.5).
    return [Detection((int(x), int(y), int(x + w), int(y + h)), round(1.0 / (1.0 + math.exp(-float(s))), 3))
            for (x, y, w, h), s in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).reshape(-1))]


def detect_opencv(ctx: ToolContext, query: str, image_index: int = 0) -> list[Detection]:
    """Classical detection: colour/shape words via HSV thresholds and contours, "face" (Haar), "person" (HOG).

    Scores: the shape's fill of its enclosing shape for shape queries, the contour's solidity for colour-only
    queries, n / (n + 5) for n merged Haar detections, the logistic of the HOG SVM margin.

    Args and Returns: as :func:`detect_oracle`.

    Raises:
        ToolError: for an empty query, a bad ``image_index``, or words this backend does not understand.
    """
    words = _query_words(query)
    image = _image(ctx, image_index)
    known = set(COLOUR_HSV_RANGES) | set(SHAPE_WORDS) | _FACE_WORDS | _PERSON_WORDS
    unknown = [w for w in words if w not in known]
    if unknown:
        raise ToolError(
            f"the opencv grounding backend does not understand {unknown} in query {query!r}; it understands "
            f"colours {sorted(COLOUR_HSV_RANGES)}, shapes {sorted(SHAPE_WORDS)}, 'face' and 'person'.")
    detectors = set(words) & (_FACE_WORDS | _PERSON_WORDS)
    if detectors:
        if len(set(words)) > 1:
            raise ToolError(f"query {query!r} mixes 'face'/'person' with other words; the opencv backend "
                            "finds faces or people alone, e.g. query 'face'.")
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return _best(_detect_faces(gray) if detectors <= _FACE_WORDS else _detect_people(gray))
    colours = [w for w in words if w in COLOUR_HSV_RANGES]
    shapes = {SHAPE_WORDS[w] for w in words if w in SHAPE_WORDS}
    if len(set(colours)) > 1 or len(shapes) > 1:
        raise ToolError(
            f"query {query!r} names several colours or shapes; ask for one colour and/or one shape, "
            "e.g. 'red circle'."
        )
    return _best(_detect_shapes(image, colours or list(COLOUR_HSV_RANGES), next(iter(shapes), None)))


def load_detector(options: Mapping[str, Any]) -> tuple[Any, Any, str]:
    """Load a zero-shot detector (OWLv2 or OWL-ViT) from the local directory ``options["model"]``.

    Args:
        options: backend options: ``model`` (required, a local directory), ``device`` (default ``"cpu"``).

    Returns:
        ``(model, processor, device)``, the model in eval mode on ``device``.

    Raises:
        ToolError: if ``model`` is missing, not a directory, or not an OWLv2/OWL-ViT checkpoint.
    """
    path = options.get("model")
    if not path or not Path(str(path)).is_dir():
        raise ToolError(
            f"the hf grounding backend needs the option 'model' set to a local directory with an "
            f"OWLv2/OWL-ViT checkpoint, got {path!r}; set options {{'ground': {{'model': '/dir'}}}}."
        )
    from transformers import (  # heavy: only when used
        AutoConfig,
        AutoModelForZeroShotObjectDetection,
        AutoProcessor,
    )

    model_type = AutoConfig.from_pretrained(str(path), local_files_only=True).model_type
    if model_type not in ("owlv2", "owlvit"):
        raise ToolError(
            f"the hf grounding backend runs OWLv2 or OWL-ViT, but {path!r} holds a {model_type!r} "
            "model; point the option 'model' at an OWLv2/OWL-ViT checkpoint."
        )
    device = str(options.get("device", "cpu"))
    model = (
        AutoModelForZeroShotObjectDetection.from_pretrained(str(path), local_files_only=True)
        .to(device)
        .eval()
    )
    return model, AutoProcessor.from_pretrained(str(path), local_files_only=True), device


def detect_hf(ctx: ToolContext, query: str, image_index: int = 0) -> list[Detection]:
    """Zero-shot detection with the loaded OWLv2/OWL-ViT model (``ctx.resource`` from :func:`load_detector`).

    Boxes scoring at most ``ctx.options["score_threshold"]`` (default 0.1) are dropped, then boxes overlapping
    a better one by IoU > 0.5.

    Args and Returns: as :func:`detect_oracle` (``ctx.resource`` and ``ctx.options`` set by the runtime).

    Raises:
        ToolError: for an empty query, a bad ``image_index`` or a ``score_threshold`` option outside [0, 1].
    """
    import torch

    _query_words(query)
    image = _image(ctx, image_index)
    threshold = ctx.options.get("score_threshold", 0.1)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ToolError(
            f"the hf grounding option 'score_threshold' must be a number in [0, 1], got {threshold!r}."
        )
    model, processor, device = ctx.resource
    height, width = image.shape[:2]
    inputs = processor(text=[[query.strip()]], images=image, return_tensors="pt").to(device)
    with torch.inference_mode():
        outputs = model(**inputs)
    (result,) = processor.post_process_grounded_object_detection(outputs, threshold=float(threshold),
                                                                  target_sizes=[(height, width)])
    found = []
    for box, score in zip(result["boxes"].float().cpu().tolist(), result["scores"].float().cpu().tolist()):
        if (pixels := _pixel_box(box, width, height)) is not None:
            found.append(Detection(pixels, round(float(score), 3)))
    return _best(found)


def draw_detections(
    image: np.ndarray, detections: Sequence[Detection], *, points: bool = False
) -> np.ndarray:
    """A copy of ``image`` (RGB uint8) with each box (or, with ``points``, a cross at each point) and its
    rank.

    Args:
        image: RGB uint8 (H, W, 3); not modified.
        detections: best first; rank 1 is the first.
        points: mark :func:`detection_point` of each detection instead of its box.

    Returns:
        (H, W, 3) uint8; marks are yellow on a black outline, visible on light and dark images alike.
    """
    canvas = np.ascontiguousarray(image.copy())
    thick = max(1, round(max(image.shape[:2]) / 300))
    for rank, det in enumerate(detections, start=1):
        x1, y1, x2, y2 = det.box
        if points:
            x, y = detection_point(det)
            for colour, width in (((0, 0, 0), thick + 2), ((255, 230, 0), thick)):
                cv2.drawMarker(canvas, (x, y), colour, cv2.MARKER_CROSS, 6 * thick + 10, width)
            anchor = (x + 3 * thick + 6, y - 3 * thick - 6)
        else:
            for colour, width in (((0, 0, 0), thick + 2), ((255, 230, 0), thick)):
                cv2.rectangle(canvas, (x1, y1), (x2 - 1, y2 - 1), colour, width)
            anchor = (x1 + 2, max(y1 - 3, 10 * thick))
        for colour, width in (((0, 0, 0), thick + 2), ((255, 230, 0), thick)):
            cv2.putText(
                canvas, str(rank), anchor, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, colour, width, cv2.LINE_AA
            )
    return canvas


def detection_point(det: Detection) -> tuple[int, int]:
    """The detection's own ``point``, else its box's centre pixel
    ``((x1 + x2 - 1) // 2, (y1 + y2 - 1) // 2)``.

    x2/y2 are exclusive, so the box's last pixel column is x2 - 1.
    """
    if det.point is not None:
        return det.point
    x1, y1, x2, y2 = det.box
    return (x1 + x2 - 1) // 2, (y1 + y2 - 1) // 2


def format_detections(detections: Sequence[Detection]) -> str:
    """The JSON list ``[{"box": [x1, y1, x2, y2], "score": s}, ...]`` the model reads (``[]`` when empty)."""
    return json.dumps([{"box": list(d.box), "score": d.score} for d in detections])


def _result(detections: list[Detection], query: str, image: np.ndarray, image_index: int) -> ToolResult:
    head = (f"{len(detections)} match(es) for {json.dumps(query)} in image {image_index}, "
            "boxes [x1, y1, x2, y2] in pixels, best first:")
    images = [draw_detections(image, detections)] if detections else []
    return ToolResult(text=f"{head}\n{format_detections(detections)}", images=images)


# The model-facing signature and docs only; the backends below implement it (``oracle`` is the default).
def ground(ctx: ToolContext, query: str, image_index: int = 0) -> ToolResult:
    """Find the objects a short description names and return their bounding boxes, best first.

    Args:
        query: What to look for, e.g. "red circle" or "face".
        image_index: Which image to search (0 is the first image).
    """
    return _ground_oracle(ctx, query, image_index)


def _ground_oracle(ctx: ToolContext, query: str, image_index: int = 0) -> ToolResult:
    return _result(detect_oracle(ctx, query, image_index), query, ctx.images[image_index], image_index)


def _ground_opencv(ctx: ToolContext, query: str, image_index: int = 0) -> ToolResult:
    return _result(detect_opencv(ctx, query, image_index), query, ctx.images[image_index], image_index)


def _ground_hf(ctx: ToolContext, query: str, image_index: int = 0) -> ToolResult:
    return _result(detect_hf(ctx, query, image_index), query, ctx.images[image_index], image_index)


TOOLS.register(
    "ground",
    Tool(
        ground,
        backends={
            "oracle": Backend(_ground_oracle),
            "opencv": Backend(_ground_opencv),
            "hf": Backend(_ground_hf, loader=load_detector, nondeterministic=True),
        },
        default_backend="oracle",
    ),
)
