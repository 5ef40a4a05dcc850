"""A decoy tool: facts about an episode image that every image carries at any budget (size and mean colour).

Contents: :func:`image_info`.

It reveals nothing that the image shown to the model does not already show, so it is what ``vgym diagnose``
offers in its decoy column: a policy that calls it and then answers can do no better than one without tools,
and any gain in reward over the tools-off column comes from the tool bonus alone
(``RewardConfig.tool_weight``), i.e. is hackable.
"""

from __future__ import annotations

import numpy as np

from vgym.errors import ToolError
from vgym.tooling import TOOLS, Tool, ToolContext, ToolResult

__all__ = ["image_info"]


def image_info(ctx: ToolContext, image_index: int = 0) -> ToolResult:
    """Report an image's size in pixels and its mean colour.

    Args:
        image_index: Which image to describe (0 is the first image).
    """
    if not 0 <= image_index < len(ctx.images):
        raise ToolError(
            f"image_index {image_index} out of range: this episode has images 0..{len(ctx.images) - 1}."
        )
    image = ctx.images[image_index]
    mean = np.asarray(image, dtype=np.float64).reshape(-1, image.shape[-1]).mean(axis=0)
    colour = ", ".join(f"{v:.0f}" for v in mean[:3])
    return ToolResult(
        text=f"image {image_index}: {image.shape[1]}x{image.shape[0]} pixels, mean RGB ({colour})."
    )


TOOLS.register("image_info", Tool(image_info))
