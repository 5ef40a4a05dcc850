"""Depth: how far from the camera a pixel, a region or a whole image is, plus a colour-mapped depth image.

Contents: :func:`depth` (the tool), :func:`stereo_disparity`, :func:`colorize_depth`, and the backends
``oracle`` (the sample's ground-truth depth array), ``stereo`` (OpenCV semi-global matching on a rectified
pair) and ``hf`` (a DPT / Depth Anything model from a local directory).

Values are read at ``floor(x), floor(y)`` for points and as the median over the known pixels of a box (or of
the whole image when neither is given). A pixel without a depth (no stereo match, a non-finite ground truth)
is reported as ``unknown``. The text always says what the numbers mean:

* metric: metres from the camera (``oracle``; ``stereo`` with
  ``metadata["stereo"] = {"focal_px", "baseline_m"}``, depth = focal_px · baseline_m / disparity, or /
  (disparity + ``"doffs_px"``) where that optional key is given; a Depth Anything model whose config says
  ``depth_estimation_type="metric"``);
* relative, stereo without calibration: ``1.0`` = the image's median depth, ``2.0`` = twice as far (exact
  ratios, since depth is proportional to 1/disparity);
* relative, monocular model: ``0`` = the nearest, ``1`` = the farthest part of this image; only the order
  counts.

In every case larger = farther. The depth image colours near things warm (red) and far things cool (blue),
unknown pixels black, and outlines the queried points or box in white.

Backend options (``ToolRuntimeConfig.options["depth"]``): ``stereo`` reads ``num_disparities`` (a positive
multiple of 16, default 64) and ``block_size`` (odd, 1..31, default 5); ``hf`` reads ``model`` (a local
directory, required) and ``device`` (default ``"cpu"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vgym.errors import InvalidConfigError, ToolError
from vgym.tooling import TOOLS, Backend, Tool, ToolContext, ToolResult
from vgym.tools.crop import clip_note, parse_box

__all__ = ["depth", "stereo_disparity", "colorize_depth"]

MAX_POINTS = 32
"""Most points one call may ask about (keeps the reply short)."""

_METRIC = "metric depth in metres from the camera (larger = farther)"
_STEREO_RELATIVE = (
    "relative depth from stereo disparity without calibration: 1.0 = the image's median depth, "
    "2.0 = twice as far (larger = farther)"
)
_MONO_RELATIVE = (
    "relative depth from a monocular model: 0 = the nearest, 1 = the farthest part of this image; "
    "only the order is meaningful (larger = farther)"
)


def depth(
    ctx: ToolContext,
    image_index: int = 0,
    points: list[list[float]] | None = None,
    box: list[float] | None = None,
) -> ToolResult:
    """Measure how far things are from the camera; returns depth values and a colour-mapped depth image (red = near).

    Give points, or a box, or neither (then the whole image's median depth is reported).

    Args:
        image_index: Which image to measure (0 is the first image).
        points: Pixels [[x, y], ...] of that image at which to read the depth.
        box: A region [x1, y1, x2, y2] of that image whose median depth to report.

    Raises:
        ToolError: For a bad image index, point or box, or both points and box.
    """
    # This docstring is the model-facing schema; a direct call runs the default (oracle) backend.
    return _depth_oracle(ctx, image_index=image_index, points=points, box=box)


# ---------------------------------------------------------------------------------------------------- the
# query


@dataclass(frozen=True)
class _Query:
    """A validated request: integer pixels ``[(x, y), ...]`` or a clipped box ``(x1, y1, x2, y2)``, or
    neither."""

    points: list[tuple[int, int]] | None
    box: tuple[int, int, int, int] | None
    note: str = ""
    """The box's :func:`~vgym.tools.crop.clip_note`."""


def _parse_query(
    ctx: ToolContext, image_index: int, points: list[list[float]] | None, box: list[float] | None
) -> tuple[np.ndarray, _Query]:
    """Check the model-facing arguments and return the addressed image and the query.

    Raises:
        ToolError: naming ``image_index``, ``points`` or ``box`` and what a valid value looks like.
    """
    if (
        isinstance(image_index, bool)
        or not isinstance(image_index, int)
        or not 0 <= image_index < len(ctx.images)
    ):
        raise ToolError(
            f"image_index {image_index!r} does not exist; valid indices are 0..{len(ctx.images) - 1}."
        )
    image = ctx.images[image_index]
    height, width = image.shape[:2]
    if points is not None and box is not None:
        raise ToolError("give either points or box, not both; call depth once for each.")
    if box is not None:
        return image, _Query(None, parse_box(box, width, height), clip_note(box, width, height))
    if points is None:
        return image, _Query(None, None)
    frame = f"image {image_index} is {width}x{height}, so x must be in [0, {width}) and y in [0, {height})"
    if not isinstance(points, list) or not 1 <= len(points) <= MAX_POINTS:
        count = len(points) if isinstance(points, list) else points
        raise ToolError(
            f"points must be a list of 1 to {MAX_POINTS} pairs [[x, y], ...], got {count!r} entries."
        )
    pixels = []
    for i, point in enumerate(points):
        if (not isinstance(point, list) or len(point) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)):
            raise ToolError(f"points[{i}] must be a pair [x, y] of numbers, got {point!r}.")
        # NaN and ints too big for a float: inf
        x, y = (float(v) if abs(v) < 1e300 else math.inf for v in point)
        if not (math.isfinite(x) and math.isfinite(y) and 0 <= x < width and 0 <= y < height):
            raise ToolError(f"points[{i}] = {point!r} lies outside the image; {frame}.")
        pixels.append((int(x), int(y)))  # floor: both are non-negative
    return image, _Query(pixels, None)


# ------------------------------------------------------------------------------------------- report and
# render


def colorize_depth(values: np.ndarray) -> np.ndarray:
    """Colour-map a depth map so that near is warm (red) and far is cool (blue).

    Args:
        values: (H, W) float depth, larger = farther; NaN/inf marks unknown pixels.

    Returns:
        (H, W, 3) RGB uint8: OpenCV's TURBO map (its middle part, blue → green → red) stretched between the
            2nd
        and 98th percentile of the known values; unknown pixels are black; an image without known values is
            all
        black.
    """
    known = np.isfinite(values)
    out = np.zeros((*values.shape, 3), dtype=np.uint8)
    if not known.any():
        return out
    lo, hi = np.percentile(values[known], [2, 98])
    span = hi - lo if hi > lo else 1.0  # a flat map: everything gets the same (far) colour
    nearness = np.clip((hi - np.where(known, values, hi)) / span, 0.0, 1.0)  # 1 = nearest
    # TURBO's two ends are near-black (dark purple, dark red); 32..230 keeps far a clear blue and near a clear
    # red,
    # both distinct from the black of unknown pixels.
    bgr = cv2.applyColorMap(np.round(32 + nearness * 198).astype(np.uint8), cv2.COLORMAP_TURBO)
    out = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    out[~known] = 0
    return out


def _fmt(value: float, metric: bool) -> str:
    if not math.isfinite(value):
        return "unknown (no depth at this pixel)"
    return f"{value:.2f} m" if metric else f"{value:.3f}"


def _report(
    values: np.ndarray, metric: bool, legend: str, image_index: int, backend: str, query: _Query
) -> ToolResult:
    """Text and annotated depth image for ``query`` on the (H, W) map ``values`` (NaN = unknown)."""
    known = np.isfinite(values)
    lines = [f"depth of image {image_index} ({backend}): {legend}."]
    if known.any():
        lo, med, hi = np.percentile(values[known], [1, 50, 99])  # 1st/99th: robust to a few stray pixels
        lines.append(
            f"whole image: median {_fmt(med, metric)}, near end {_fmt(lo, metric)}, far end "
            f"{_fmt(hi, metric)} (1st/99th percentile); {100 * known.mean():.0f}% of pixels have a known "
            "depth."
        )
    else:
        lines.append("whole image: no pixel has a known depth.")
    shown = colorize_depth(values)
    thickness = max(1, round(min(values.shape) / 200))
    if query.points is not None:
        for x, y in query.points:
            lines.append(f"point [{x}, {y}]: {_fmt(float(values[y, x]), metric)}")
            cv2.circle(shown, (x, y), 3 * thickness, (255, 255, 255), thickness)
    if query.box is not None:
        x1, y1, x2, y2 = query.box
        region = values[y1:y2, x1:x2]
        good = region[np.isfinite(region)]
        median = _fmt(float(np.median(good)), metric) if good.size else "unknown (no pixel has a depth)"
        lines.append(
            f"box [{x1}, {y1}, {x2}, {y2}]{query.note}: median {median} over {good.size} of {region.size} "
            "pixels."
        )
        cv2.rectangle(shown, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), thickness)
    return ToolResult(text="\n".join(lines), images=[shown])


Estimator = Callable[[ToolContext, np.ndarray, int], tuple[np.ndarray, bool, str]]
"""``(ctx, image, image_index) -> (values (H, W) float32 with NaN unknown, metric, legend)``."""


def _run(
    ctx: ToolContext, backend: str, estimate: Estimator, image_index: int,
    points: list[list[float]] | None, box: list[float] | None,
) -> ToolResult:
    image, query = _parse_query(ctx, image_index, points, box)
    values, metric, legend = estimate(ctx, image, image_index)
    return _report(values, metric, legend, image_index, backend, query)


def _require_first_image(image_index: int, what: str) -> None:
    if image_index != 0:
        raise ToolError(
            f"{what} exists only for image 0, got image_index {image_index}; call with image_index 0."
        )


# ----------------------------------------------------------------------------------------------------
# backends


def _estimate_oracle(ctx: ToolContext, image: np.ndarray, image_index: int) -> tuple[np.ndarray, bool, str]:
    _require_first_image(image_index, "the ground-truth depth map")
    if "depth" not in ctx.arrays:
        raise ToolError("the oracle depth backend needs a ground-truth depth map, and this sample has none; "
                        "use the stereo or hf backend.")
    values = np.asarray(ctx.arrays["depth"], dtype=np.float32)
    if values.shape != image.shape[:2]:
        raise ToolError(
            f"this sample's depth map is {values.shape}, not the size of image 0 {image.shape[:2]}."
        )
    return np.where(np.isfinite(values) & (values > 0), values, np.nan).astype(np.float32), True, _METRIC


def stereo_disparity(
    left: np.ndarray, right: np.ndarray, *, num_disparities: int = 64, block_size: int = 5
) -> np.ndarray:
    """Disparity of a rectified stereo pair by OpenCV semi-global block matching (StereoSGBM).

    Args:
        left: (H, W, 3) RGB uint8 left view (the reference).
        right: (H, W, 3) RGB uint8 right view; left pixel x matches right pixel x - disparity on the same row.
        num_disparities: search range in pixels, a positive multiple of 16.
        block_size: matching window side, odd, 1..31.

    Returns:
        (H, W) float32 disparity in pixels (1/16-pixel steps); NaN where no reliable match was found
        (occlusions, textureless areas, the leftmost ``num_disparities`` columns) and where it is not
            positive.

    Raises:
        InvalidConfigError: for a bad ``num_disparities`` or ``block_size``.
    """
    if isinstance(num_disparities, bool) or not isinstance(num_disparities, int) or num_disparities <= 0 \
            or num_disparities % 16:
        raise InvalidConfigError(
            f"num_disparities must be a positive multiple of 16, got {num_disparities!r}"
        )
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not 1 <= block_size <= 31 \
            or block_size % 2 == 0:
        raise InvalidConfigError(f"block_size must be an odd integer in 1..31, got {block_size!r}")
    gray_left = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY)
    gray_right = cv2.cvtColor(right, cv2.COLOR_RGB2GRAY)
    # smoothness penalties as OpenCV's sample scales them (per channel of a window)
    area = block_size * block_size
    matcher = cv2.StereoSGBM_create(
        minDisparity=0,
        numDisparities=num_disparities,
        blockSize=block_size,
        P1=8 * area,
        P2=32 * area,
        disp12MaxDiff=1,
        uniquenessRatio=10,
        speckleWindowSize=100,
        speckleRange=2,
        mode=cv2.STEREO_SGBM_MODE_SGBM,
    )
    fixed = matcher.compute(gray_left, gray_right)  # int16, disparity * 16; invalid = (minDisparity - 1) * 16
    disparity = fixed.astype(np.float32) / 16.0
    disparity[disparity <= 0] = np.nan  # zero disparity = infinitely far: no usable depth
    return disparity


def _estimate_stereo(ctx: ToolContext, image: np.ndarray, image_index: int) -> tuple[np.ndarray, bool, str]:
    _require_first_image(image_index, "the stereo right view")
    if "right" not in ctx.arrays:
        raise ToolError("the stereo depth backend needs the right view of a stereo pair, and this sample has "
                        "none; use the oracle or hf backend.")
    right = np.asarray(ctx.arrays["right"])
    if right.shape != image.shape:
        raise ToolError(f"this sample's right view is {right.shape}, not the shape of image 0 {image.shape}.")
    disparity = stereo_disparity(image, right, num_disparities=ctx.options.get("num_disparities", 64),
                                 block_size=ctx.options.get("block_size", 5))
    calibration = ctx.metadata.get("stereo")
    if calibration is not None:
        # depth = f * B / (d + doffs); doffs (principal-point offset between the views, as Middlebury
        # calibrates
        # it) is optional and 0 for a pair whose principal points coincide.
        scale = float(calibration["focal_px"]) * float(calibration["baseline_m"])
        offset = float(calibration.get("doffs_px", 0.0))
        return (scale / (disparity + offset)).astype(np.float32), True, _METRIC
    known = np.isfinite(disparity)
    median = float(np.median(disparity[known])) if known.any() else 1.0
    # depth ∝ 1/d, so this is depth/median
    return (median / disparity).astype(np.float32), False, _STEREO_RELATIVE


@dataclass(frozen=True)
class _DepthModel:
    """A loaded monocular depth model: the network, its (PIL, torchvision-free) processor and whether it is
    metric."""

    model: Any
    processor: Any
    device: str
    metric: bool


def _load_depth_model(options: Mapping[str, Any]) -> _DepthModel:
    """Load a DPT / Depth Anything depth model and its PIL processor from the local folder
    ``options["model"]``.

    Raises:
        ToolError: if the option is missing, is not a local directory, or names another kind of model.
    """
    model_dir = options.get("model")
    if not model_dir:
        raise ToolError(
            "the hf depth backend needs the option 'model' (a local directory saved with "
            "save_pretrained), e.g. options {'depth': {'model': '/models/depth-anything-small'}}."
        )
    if not Path(model_dir).is_dir():
        raise ToolError(
            f"the hf depth backend's option 'model' must be a local directory, got {model_dir!r}."
        )
    from transformers import AutoModelForDepthEstimation, DPTImageProcessorPil  # heavy: only when used

    device = str(options.get("device", "cpu"))
    # The PIL processor: the default DPTImageProcessor needs torchvision, which vgym does not require.
    processor = DPTImageProcessorPil.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForDepthEstimation.from_pretrained(model_dir, local_files_only=True).to(device).eval()
    kind = model.config.model_type
    if kind not in ("dpt", "depth_anything"):
        raise ToolError(
            f"the hf depth backend supports DPT and Depth Anything models, got model_type {kind!r}."
        )
    metric = getattr(model.config, "depth_estimation_type", "relative") == "metric"
    return _DepthModel(model, processor, device, metric)


def _estimate_hf(ctx: ToolContext, image: np.ndarray, image_index: int) -> tuple[np.ndarray, bool, str]:
    import torch

    # The runtime hands the loaded model in as ctx.resource; a direct call (no runtime) loads it here.
    loaded: _DepthModel = ctx.resource if ctx.resource is not None else _load_depth_model(ctx.options)
    inputs = loaded.processor(images=image, return_tensors="pt").to(loaded.device)
    with torch.inference_mode():
        outputs = loaded.model(**inputs)
    target = [tuple(image.shape[:2])]
    pred = loaded.processor.post_process_depth_estimation(outputs, target_sizes=target)[0]["predicted_depth"]
    values = pred.float().cpu().numpy().reshape(image.shape[:2])
    if loaded.metric:
        return np.where(values > 0, values, np.nan).astype(np.float32), True, _METRIC
    # Relative DPT / Depth Anything heads predict affine-invariant inverse depth (larger = nearer): flip it
    # into
    # [0, 1] so that, as everywhere in this tool, larger = farther.
    lo, hi = float(values.min()), float(values.max())
    return ((hi - values) / (hi - lo if hi > lo else 1.0)).astype(np.float32), False, _MONO_RELATIVE


def _depth_oracle(ctx: ToolContext, image_index: int = 0, points: list[list[float]] | None = None,
                  box: list[float] | None = None) -> ToolResult:
    return _run(ctx, "oracle", _estimate_oracle, image_index, points, box)


def _depth_stereo(ctx: ToolContext, image_index: int = 0, points: list[list[float]] | None = None,
                  box: list[float] | None = None) -> ToolResult:
    return _run(ctx, "stereo", _estimate_stereo, image_index, points, box)


def _depth_hf(ctx: ToolContext, image_index: int = 0, points: list[list[float]] | None = None,
              box: list[float] | None = None) -> ToolResult:
    return _run(ctx, "hf", _estimate_hf, image_index, points, box)


TOOLS.register(
    "depth",
    Tool(
        depth,
        backends={
            "oracle": Backend(_depth_oracle),
            "stereo": Backend(_depth_stereo),
            "hf": Backend(_depth_hf, loader=_load_depth_model, nondeterministic=True),
        },
        default_backend="oracle",
    ),
)
