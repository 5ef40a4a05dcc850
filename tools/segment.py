"""Segment: the model asks for the mask of the object inside a box or under a point.

Contents: :func:`segment`, :func:`parse_point`, :func:`describe_mask`, :func:`render_mask`.

Backends: ``oracle`` (the sample's ground-truth masks, ``ctx.arrays["masks"]``), ``grabcut`` (OpenCV GrabCut,
no model) and ``hf`` (SAM through ``SamModel`` + ``SamProcessor``, loaded from the local folder in option
``model``). Every backend returns the same :class:`ToolResult`: a text with the mask's area, bounding box and
centroid, then two images: the mask tinted over the image (with the prompt drawn), and the raw mask as a
black/white RGB image (white = object, same size as the addressed image) so later tools can use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from vgym.errors import ToolError
from vgym.tooling import TOOLS, Backend, Tool, ToolContext, ToolResult
from vgym.tools.crop import clip_note, parse_box

__all__ = ["segment", "parse_point", "describe_mask", "render_mask"]

_TINT = np.array([255, 0, 255], np.float32)  # magenta: rare in natural images, visible on most backgrounds
_GRABCUT_ITERATIONS = 5
_GRABCUT_MIN_PIXELS = 5  # k-means needs at least as many samples as GrabCut's 5 GMM components
_GRABCUT_MAX_PIXELS = 2**15
"""GrabCut runs on its region shrunk to at most this many pixels (~181x181; see :func:`_grabcut`)."""


def parse_point(point: Sequence[object], width: int, height: int) -> tuple[int, int]:
    """Validate ``point`` ``[x, y]`` against an image of ``width`` × ``height`` and return its pixel.

    Returns:
        ``(x, y)`` integer pixel (floor of the coordinates) with ``0 <= x < width`` and ``0 <= y < height``.

    Raises:
        ToolError: if the point is not 2 finite numbers or lies outside the image.
    """
    frame = f"the image is {width}x{height}, so a valid point has 0 <= x < {width} and 0 <= y < {height}"
    if len(point) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point):
        raise ToolError(f"point must be 2 numbers [x, y], got {list(point)!r}; {frame}.")
    try:
        x, y = (float(v) for v in point)  # type: ignore[arg-type]
    except OverflowError:  # an int too large for a float
        x = y = math.inf
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ToolError(f"point must hold finite numbers, got {list(point)!r}; {frame}.")
    if not (0 <= x < width and 0 <= y < height):
        raise ToolError(f"point {list(point)!r} lies outside the image; {frame}.")
    return math.floor(x), math.floor(y)


def describe_mask(mask: np.ndarray) -> str:
    """One line on a boolean (H, W) mask: area in pixels (and % of the image), bounding box, centroid.

    The bounding box is ``[x1, y1, x2, y2]`` with x2/y2 exclusive (as boxes are everywhere in vgym); the
    centroid is the mean pixel position ``(x, y)``, one decimal. An empty mask reads "empty mask (no object
    found)".
    """
    area = int(mask.sum())
    if area == 0:
        return "empty mask (no object found)"
    ys, xs = np.nonzero(mask)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    share = 100.0 * area / mask.size
    return (
        f"mask area {area} px ({share:.1f}% of the image), bounding box {box}, "
        f"centroid ({xs.mean():.1f}, {ys.mean():.1f})"
    )


def render_mask(
    image: np.ndarray, mask: np.ndarray, box: Sequence[int] | None = None, point: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The two images a segment call returns.

    Args:
        image: RGB uint8 (H, W, 3).
        mask: bool (H, W).
        box: the prompt box ``(x1, y1, x2, y2)`` to draw (green), or None.
        point: the prompt point ``(x, y)`` to draw (green), or None.

    Returns:
        ``(overlay, mask_rgb)``: the image with the mask tinted magenta at 50% and outlined, the prompt drawn
            on
        top; and the mask as RGB uint8 (H, W, 3), 255 on the object and 0 elsewhere.
    """
    overlay = image.astype(np.float32)
    overlay[mask] = 0.5 * overlay[mask] + 0.5 * _TINT
    overlay = np.ascontiguousarray(overlay.round().astype(np.uint8))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(overlay, contours, -1, tuple(int(c) for c in _TINT), 1)
    if box is not None:
        cv2.rectangle(overlay, (box[0], box[1]), (box[2] - 1, box[3] - 1), (0, 255, 0), 1)
    if point is not None:
        cv2.drawMarker(overlay, (point[0], point[1]), (0, 255, 0), cv2.MARKER_CROSS, 9, 1)
    mask_rgb = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    return overlay, mask_rgb


def _prompt(
    ctx: ToolContext, image_index: int, box: list[float] | None, point: list[float] | None
) -> tuple[np.ndarray, tuple[int, int, int, int] | None, tuple[int, int] | None, str]:
    """The addressed image, the validated prompt (exactly one of box and point is not None) and the box's
    :func:`~vgym.tools.crop.clip_note`."""
    if not 0 <= image_index < len(ctx.images):
        raise ToolError(
            f"image_index {image_index} does not exist; valid indices are 0..{len(ctx.images) - 1}."
        )
    if (box is None) == (point is None):
        given = "both box and point" if box is not None else "neither box nor point"
        raise ToolError(
            f"segment needs exactly one prompt, got {given}; pass box=[x1, y1, x2, y2] or point=[x, y]."
        )
    image = ctx.images[image_index]
    h, w = image.shape[:2]
    if box is not None:
        return image, parse_box(box, w, h), None, clip_note(box, w, h)
    return image, None, parse_point(point, w, h), ""  # type: ignore[arg-type]


def _result(
    image: np.ndarray,
    mask: np.ndarray,
    image_index: int,
    box: tuple[int, ...] | None,
    point: tuple[int, ...] | None,
    note: str = "",
) -> ToolResult:
    prompt = f"box {list(box)}{note}" if box is not None else f"point {list(point)}"  # type: ignore[arg-type]
    overlay, mask_rgb = render_mask(image, mask, box, point)
    text = (
        f"segment of image {image_index} from {prompt}: {describe_mask(mask)}. "
        "Returned: the mask over the image, then the mask alone (white = object)."
    )
    return ToolResult(text=text, images=[overlay, mask_rgb])


def segment(
    ctx: ToolContext, image_index: int = 0, box: list[float] | None = None, point: list[float] | None = None
) -> ToolResult:
    """Segment the object inside a box or under a point; reports its area, bounding box and centroid.

    Args:
        image_index: Which image to segment (0 is the first image).
        box: The object's region [x1, y1, x2, y2] in pixels of that image (give either box or point).
        point: A pixel [x, y] on the object (give either box or point).
    """
    return _segment_grabcut(ctx, image_index=image_index, box=box, point=point)  # called directly: grabcut


# --- oracle
# -------------------------------------------------------------------------------------------------------


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _segment_oracle(
    ctx: ToolContext, image_index: int = 0, box: list[float] | None = None, point: list[float] | None = None
) -> ToolResult:
    """Ground truth: the object whose box best overlaps ``box`` (IoU), or whose mask contains ``point``.

    Ties go to the first object; several masks holding the point (overlapping objects) go to the smallest. No
    overlapping object (or a point on background) gives an empty mask.
    """
    image, pbox, ppoint, note = _prompt(ctx, image_index, box, point)
    masks = ctx.arrays.get("masks")
    objects = ctx.metadata.get("objects")
    if masks is None or objects is None:
        raise ToolError("segment's oracle backend needs this sample's ground-truth masks, and it has none.")
    if image_index != 0:
        raise ToolError(
            f"segment's oracle backend knows masks of image 0 only, got image_index {image_index}."
        )
    if masks.shape != (len(objects), *image.shape[:2]):
        raise ToolError(
            f"this sample's masks {masks.shape} do not match its {len(objects)} objects and image."
        )
    chosen: int | None = None
    if pbox is not None:
        ious = [_box_iou(pbox, [float(v) for v in obj["box"]]) for obj in objects]
        chosen = int(np.argmax(ious)) if ious and max(ious) > 0 else None
    else:
        x, y = ppoint  # type: ignore[misc]
        holding = [i for i in range(len(objects)) if masks[i, y, x]]
        chosen = min(holding, key=lambda i: (int(masks[i].sum()), i)) if holding else None
    mask = masks[chosen].astype(bool) if chosen is not None else np.zeros(image.shape[:2], bool)
    return _result(image, mask, image_index, pbox, ppoint, note)


# --- grabcut
# ------------------------------------------------------------------------------------------------------


def _segment_grabcut(
    ctx: ToolContext, image_index: int = 0, box: list[float] | None = None, point: list[float] | None = None
) -> ToolResult:
    """OpenCV GrabCut (5 iterations), deterministic.

    A box initialises GrabCut's rectangle (outside = background, inside = probably foreground). A point
    becomes a sure-foreground disk (radius 3) inside a probably-foreground square whose half-side is a third
    of the image's shorter side (at least 8 px), everything else background; the result keeps only the
    connected part holding the point. A prompt that leaves no background (a box over the whole image) makes
    the image's 1-pixel border background, since GrabCut learns a background colour model. GrabCut sees the
    prompt's neighbourhood shrunk to at most 32,768 pixels and dithered (see :func:`_grabcut`). OpenCV's
    k-means initialisation draws from its thread-local RNG, which is reseeded to 0 before each call.
    """
    image, pbox, ppoint, note = _prompt(ctx, image_index, box, point)
    h, w = image.shape[:2]
    mask = np.full((h, w), cv2.GC_BGD, np.uint8)
    if pbox is not None:
        x1, y1, x2, y2 = pbox
        mask[y1:y2, x1:x2] = cv2.GC_PR_FGD
    else:
        x, y = ppoint  # type: ignore[misc]
        r = max(8, min(h, w) // 3)
        mask[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = cv2.GC_PR_FGD
        cv2.circle(mask, (x, y), 3, cv2.GC_FGD, -1)
    if not (mask == cv2.GC_BGD).any():
        border = np.ones((h, w), bool)
        border[1:-1, 1:-1] = False
        mask[border & (mask != cv2.GC_FGD)] = cv2.GC_BGD
    n_fg = int(((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).sum())
    if min(n_fg, mask.size - n_fg) < _GRABCUT_MIN_PIXELS:  # k-means fits 5 colour clusters to each side
        raise ToolError(
            f"grabcut needs at least {_GRABCUT_MIN_PIXELS} pixels of object and of background; the prompt on "
            f"image {image_index} ({w}x{h}) leaves {n_fg} and {mask.size - n_fg}. Use a larger box or image."
        )
    # GrabCut only needs the prompt and some background around it: run it on the prompt's box grown by its own
    # size on every side (clipped), which is the whole image for large prompts and ~100x faster on a 4K image.
    ys, xs = np.nonzero(mask != cv2.GC_BGD)
    y1, y2, x1, x2 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    my, mx = y2 - y1, x2 - x1
    roi = (slice(max(0, y1 - my), min(h, y2 + my)), slice(max(0, x1 - mx), min(w, x2 + mx)))
    mask[roi] = _grabcut(image[roi], mask[roi])
    fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    if ppoint is not None:
        _, labels = cv2.connectedComponents(fg.astype(np.uint8), connectivity=4)
        fg = (labels == labels[ppoint[1], ppoint[0]]) & fg
    return _result(image, fg, image_index, pbox, ppoint, note)


def _grabcut(region: np.ndarray, prompt: np.ndarray) -> np.ndarray:
    """GrabCut's labels for ``region`` (RGB uint8 (H, W, 3)) from the ``prompt`` labels (uint8 (H, W)).

    GrabCut's max-flow time grows faster than the pixel count and explodes on flat synthetic colours, whose
    colour models are singular (OpenCV adds only 0.01 to a covariance's diagonal): one point on the white of a
    512x512 geometry figure took 80 s, points on 448x448 box-grounding scenes 5-36 s. So a region of more than
    :data:`_GRABCUT_MAX_PIXELS` is shrunk (area interpolation; a cell holding any sure-background pixel stays
    sure background, else any sure-foreground pixel sure foreground), its labels are scaled back (nearest)
    under the prompt's own sure pixels, and the input gets a seeded ±1 dither that gives every colour a
    variance of ~2/3. Measured: at most ~1 s a call on those scenes and on whole-image boxes of 1344x1344
    ones; on the 120 prompts of the GrabCut tests (small scenes, not shrunk) the dithered masks have IoU >=
    0.995 with the undithered ones.
    """
    h, w = prompt.shape
    scale = min(1.0, math.sqrt(_GRABCUT_MAX_PIXELS / (h * w)))
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    small = prompt.copy()
    if scale < 1.0:
        small = cv2.resize(prompt, size, interpolation=cv2.INTER_NEAREST)
        for label in (cv2.GC_FGD, cv2.GC_BGD):  # background last: it wins a cell holding both
            held = cv2.resize((prompt == label).astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
            small[held] = label
        n_fg = int(((small == cv2.GC_FGD) | (small == cv2.GC_PR_FGD)).sum())
        if min(n_fg, small.size - n_fg) < _GRABCUT_MIN_PIXELS:  # too thin a prompt to shrink: full size
            small, size = prompt.copy(), (w, h)
        else:
            region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
    dither = np.random.default_rng(0).integers(-1, 2, region.shape, dtype=np.int16)
    region = np.clip(region.astype(np.int16) + dither, 0, 255).astype(np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(cv2.cvtColor(region, cv2.COLOR_RGB2BGR), small, None, bgd, fgd, _GRABCUT_ITERATIONS,
                cv2.GC_INIT_WITH_MASK)
    if size == (w, h):
        return small
    labels = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    sure = (prompt == cv2.GC_BGD) | (prompt == cv2.GC_FGD)
    return np.where(sure, prompt, labels)


# --- hf (SAM)
# -----------------------------------------------------------------------------------------------------


def _load_sam(options: Mapping[str, Any]) -> tuple[Any, Any, str]:
    """``(model, processor, device)`` from the local folder ``options["model"]`` (no hub downloads).

    The slow (PIL) image processor is used, so torchvision is not needed.

    Raises:
        ToolError: if option ``model`` is missing.
    """
    path = options.get("model")
    if not path:
        raise ToolError("segment's hf backend needs option 'model': a local folder holding a SAM checkpoint.")
    from transformers import SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    device = str(options.get("device", "cpu"))
    image_processor = SamImageProcessorPil.from_pretrained(path, local_files_only=True)
    processor = SamProcessor(image_processor=image_processor)
    model = SamModel.from_pretrained(path, local_files_only=True).to(device).eval()
    return model, processor, device


def _segment_hf(
    ctx: ToolContext, image_index: int = 0, box: list[float] | None = None, point: list[float] | None = None
) -> ToolResult:
    """SAM with one box or one foreground point; a point asks for SAM's 3 candidate masks and keeps the one
    with the highest predicted IoU (a single point is ambiguous), a box for a single mask."""
    import torch

    image, pbox, ppoint, note = _prompt(ctx, image_index, box, point)
    if ctx.resource is None:
        raise ToolError("segment's hf backend has no model loaded; set option 'model' to a local SAM folder.")
    model, processor, device = ctx.resource
    if pbox is not None:
        inputs = processor(images=image, input_boxes=[[list(pbox)]], return_tensors="pt")
    else:
        # SAM's prompt encoder itself shifts points to pixel centres, so the pixel goes in as is.
        inputs = processor(
            images=image, input_points=[[list(ppoint)]], input_labels=[[1]], return_tensors="pt"
        )
    prompt_keys = ("pixel_values", "input_boxes", "input_points", "input_labels")
    with torch.no_grad():
        out = model(
            **{k: v.to(device) for k, v in inputs.items() if k in prompt_keys}, multimask_output=pbox is None
        )
    masks = processor.post_process_masks(
        out.pred_masks.cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )
    candidates = masks[0][0]  # (num_masks, H, W) bool for the one image and its one prompt
    best = int(out.iou_scores[0, 0].argmax())
    return _result(image, candidates[best].numpy().astype(bool), image_index, pbox, ppoint, note)


TOOLS.register("segment", Tool(segment, backends={
    "oracle": Backend(_segment_oracle), "grabcut": Backend(_segment_grabcut),
    "hf": Backend(_segment_hf, loader=_load_sam, nondeterministic=True)}, default_backend="grabcut"))
