"""Pointing: the pixel of the object a text query names best, in an episode image.

Contents: :func:`point`, :func:`best_point`.

Reuses the grounding backends of :mod:`vgym.tools.ground` under the same names (``oracle``, ``opencv``,
``hf``): the point is the oracle object's own ``point`` when the metadata has one, else the centre pixel of
the best box.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from vgym.tooling import TOOLS, Backend, Tool, ToolContext, ToolResult
from vgym.tools.ground import (
    Detection,
    detect_hf,
    detect_opencv,
    detect_oracle,
    detection_point,
    draw_detections,
    load_detector,
)

__all__ = ["point", "best_point"]


def best_point(detections: Sequence[Detection]) -> tuple[int, int] | None:
    """The point of the first (best) detection: its own ``point``, else its box's centre pixel.

    Args:
        detections: best first, as the ``detect_*`` functions of :mod:`vgym.tools.ground` return them.

    Returns:
        ``(x, y)`` in pixels; for a box ``[x1, y1, x2, y2]`` (x2/y2 exclusive) the centre is
        ``((x1 + x2 - 1) // 2, (y1 + y2 - 1) // 2)``. None when ``detections`` is empty.
    """
    return detection_point(detections[0]) if detections else None


def _result(detections: list[Detection], query: str, ctx: ToolContext, image_index: int) -> ToolResult:
    xy = best_point(detections)
    if xy is None:
        return ToolResult(text=f"no match for {json.dumps(query)} in image {image_index}:\nnull")
    best = Detection(detections[0].box, detections[0].score, xy)
    head = f"best match for {json.dumps(query)} in image {image_index} (score {best.score}), pixel [x, y]:"
    return ToolResult(text=f"{head}\n[{xy[0]}, {xy[1]}]",
                      images=[draw_detections(ctx.images[image_index], [best], points=True)])


# The model-facing signature and docs only; the backends below implement it (``oracle`` is the default).
def point(ctx: ToolContext, query: str, image_index: int = 0) -> ToolResult:
    """Point at the object a short description names: return the pixel [x, y] of the best match.

    Args:
        query: What to point at, e.g. "red circle" or "face".
        image_index: Which image to search (0 is the first image).
    """
    return _point_oracle(ctx, query, image_index)


def _point_oracle(ctx: ToolContext, query: str, image_index: int = 0) -> ToolResult:
    return _result(detect_oracle(ctx, query, image_index), query, ctx, image_index)


def _point_opencv(ctx: ToolContext, query: str, image_index: int = 0) -> ToolResult:
    return _result(detect_opencv(ctx, query, image_index), query, ctx, image_index)


def _point_hf(ctx: ToolContext, query: str, image_index: int = 0) -> ToolResult:
    return _result(detect_hf(ctx, query, image_index), query, ctx, image_index)


TOOLS.register(
    "point",
    Tool(
        point,
        backends={
            "oracle": Backend(_point_oracle),
            "opencv": Backend(_point_opencv),
            "hf": Backend(_point_hf, loader=load_detector, nondeterministic=True),
        },
        default_backend="oracle",
    ),
)
