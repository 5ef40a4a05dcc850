"""Visual search in a high-resolution scene: name the fine pattern of a small marker inside a given region.

Contents: :data:`TASK_NAME`, :data:`PATTERNS`, :data:`COLOURS`, :class:`VisualSearchConfig`,
:class:`VisualSearchTask`, :func:`render_preview`.

The scene (1344² by default) is a ``grid × grid`` board of ``cell``-pixel cells on a speckled background;
every cell holds one small framed square marker filled with a pattern of a random colour and white: horizontal
lines, vertical lines or a checkerboard, with 3-pixel lines. The question names a region (a box in pixels)
that holds exactly one marker and asks for its pattern.

Why the crop tool is necessary, exactly: every pattern covers each ``align × align`` block (6 × 6, one period
of the pattern) with the same number of coloured and white pixels, and markers sit on that block grid. At the
default budget (224²) the scene is shrunk by exactly ``align`` = 6 with area averaging, so the three patterns
give *byte-identical* budget images: the answer is not in what the model sees. A crop of the region zoomed to
the budget shows the marker ~96 pixels wide with 16-pixel lines (difficulty 0).
``tests/tasks/test_visual_search.py`` checks both.

Difficulty:
    0 — the region is the marker's grid cell (coordinates are multiples of ``cell``; the crop zooms 5.3×): the
        quickstart variant, learnable by a tiny model that copies the box into the crop call and names the
        pattern.
    1 — the region is the marker plus a margin of half its side (arbitrary coordinates, harder to copy;
        clipped to the scene).
    2 — the region is a random box inside the target's cell, and markers are 2/3 as large.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import cv2
import numpy as np

from vgym.errors import InvalidConfigError
from vgym.rewards import exact_match_reward
from vgym.task import Sample, Solution, Task, register_task, sample_seed

__all__ = ["TASK_NAME", "PATTERNS", "COLOURS", "VisualSearchConfig", "VisualSearchTask", "render_preview"]

TASK_NAME = "visual_search"

PATTERNS: tuple[str, ...] = ("horizontal", "vertical", "checkered")
"""Marker patterns; the answer is one of these, so chance accuracy is 1/3."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (20, 170, 40),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 20),
    "magenta": (220, 30, 220),
    "cyan": (20, 220, 230),
}
"""Marker colours (RGB): scene variety only, recorded in the metadata."""

_BACKGROUND = 150
"""Grey level of the board; speckles are drawn on top of it."""


@dataclass(frozen=True)
class VisualSearchConfig:
    """Scene generation settings."""

    difficulty: int = 0
    """0: the region is the marker's grid cell; 1: the marker plus a margin; 2: a random box inside the cell
    and smaller markers (see the module docstring)."""
    grid: int = 32
    """Cells per side; the scene is ``grid * cell`` pixels square."""
    cell: int = 42
    """Cell side in pixels. With the default budget (224²) a one-cell crop is zoomed 5.3×."""
    marker_size: int = 18
    """Marker side in pixels at difficulties 0 and 1 (difficulty 2 uses 2/3, rounded down to ``align``); a
    multiple of ``align``."""
    stripe: int = 3
    """Width of the pattern's lines (and checker squares) in pixels; ``align`` must be a multiple of twice
    it."""
    align: int = 6
    """Markers' corners and sides are multiples of this; equal to the default downscale (1344 / 224) so
    patterns average to identical budget pixels. Set it to ``grid * cell / sqrt(max_pixels)`` when changing
    sizes."""
    speckles: int = 6000
    """Number of 1–2 pixel speckles of random colour scattered over the scene (clutter)."""

    def __post_init__(self) -> None:
        if self.difficulty not in (0, 1, 2):
            raise InvalidConfigError(f"difficulty must be 0, 1 or 2, got {self.difficulty}")
        if self.align < 1:  # checked first: marker_side and the checks below divide by it
            raise InvalidConfigError(
                f"align must be >= 1 (the budget's downscale, 6 by default), got {self.align}"
            )
        side = self.marker_side
        if (
            self.grid < 2
            or side < self.align
            or side % self.align
            or self.cell < side + 4 * self.align
            or self.stripe < 1
            or self.align % (2 * self.stripe)
        ):
            raise InvalidConfigError(
                "need grid >= 2, a marker side (see marker_side) that is a positive multiple of align, "
                "cell >= side + 4 * align, and align a multiple of 2 * stripe; got "
                f"grid={self.grid}, cell={self.cell}, side={side}, align={self.align}, stripe={self.stripe}"
            )

    @property
    def marker_side(self) -> int:
        """Marker side at this difficulty, in pixels."""
        if self.difficulty < 2:
            return self.marker_size
        return max(self.align, (self.marker_size * 2 // 3) // self.align * self.align)


class VisualSearchTask(Task):
    """Name the pattern of the marker in a region of a high-resolution scene (see the module docstring)."""

    name = TASK_NAME
    config_cls = VisualSearchConfig
    default_tools = ("crop",)
    necessary_tools = ("crop",)
    config: VisualSearchConfig

    def sample(self, split: str, index: int, seed: int) -> Sample:
        cfg = self.config
        rng = sample_seed(seed, split, index)
        size = cfg.grid * cfg.cell
        image = np.full((size, size, 3), _BACKGROUND, dtype=np.uint8)
        # Speckle clutter: 1-2 px dots of random colour everywhere (drawn first, markers go on top).
        n = cfg.speckles
        xs, ys = rng.integers(0, size - 1, n), rng.integers(0, size - 1, n)
        colours = rng.integers(0, 256, (n, 3), dtype=np.uint8)
        image[ys, xs] = colours
        big = rng.random(n) < 0.5
        image[ys[big] + 1, xs[big]] = colours[big]
        image[ys[big], xs[big] + 1] = colours[big]
        names = list(COLOURS)
        side, step = cfg.marker_side, cfg.align
        colour_idx = rng.integers(0, len(names), (cfg.grid, cfg.grid))
        pattern_idx = rng.integers(0, len(PATTERNS), (cfg.grid, cfg.grid))
        boxes = {}
        for r in range(cfg.grid):
            for c in range(cfg.grid):
                # Corner on the align grid, at least one align step inside the cell on every side.
                lo_x, lo_y = -(-(c * cfg.cell + step) // step), -(-(r * cfg.cell + step) // step)
                hi_x, hi_y = (
                    ((c + 1) * cfg.cell - step - side) // step,
                    ((r + 1) * cfg.cell - step - side) // step,
                )
                x, y = step * int(rng.integers(lo_x, hi_x + 1)), step * int(rng.integers(lo_y, hi_y + 1))
                # 1 px black frame, the same for all patterns
                image[y - 1 : y + side + 1, x - 1 : x + side + 1] = 0
                colour = COLOURS[names[colour_idx[r, c]]]
                image[y : y + side, x : x + side] = _cached_tile(
                    PATTERNS[pattern_idx[r, c]], side, colour, cfg.stripe
                )
                boxes[(r, c)] = (x, y, x + side, y + side)
        r, c = (int(v) for v in rng.integers(0, cfg.grid, 2))
        target = boxes[(r, c)]
        if cfg.difficulty == 0:
            region = (c * cfg.cell, r * cfg.cell, (c + 1) * cfg.cell, (r + 1) * cfg.cell)
        elif cfg.difficulty == 1:  # the marker plus a margin of half its side, clipped to the scene
            m = side // 2
            x1, y1, x2, y2 = target[0] - m, target[1] - m, target[2] + m, target[3] + m
            region = (max(0, x1), max(0, y1), min(size, x2), min(size, y2))
        else:  # any box inside the target's cell that contains the target holds no other marker
            ox, oy = c * cfg.cell, r * cfg.cell
            region = (
                int(rng.integers(ox, target[0] + 1)),
                int(rng.integers(oy, target[1] + 1)),
                int(rng.integers(target[2], ox + cfg.cell + 1)),
                int(rng.integers(target[3], oy + cfg.cell + 1)),
            )
        answer = PATTERNS[pattern_idx[r, c]]
        x1, y1, x2, y2 = region
        question = f"What pattern is on the square in the region [{x1}, {y1}, {x2}, {y2}]?"
        return Sample(
            id=f"{TASK_NAME}/{split}/{seed}/{index}",
            task=TASK_NAME,
            split=split,
            index=index,
            question=question,
            images=(image,),
            answer=answer,
            metadata={
                "target_box": list(target),
                "region": list(region),
                "cell": [r, c],
                "pattern": answer,
                "colour": names[colour_idx[r, c]],
            },
        )

    def score(self, sample: Sample, answer: str) -> float:
        return exact_match_reward(answer, sample.answer)

    def answer_choices(self) -> tuple[str, ...]:
        return PATTERNS

    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        return sample.question + " Answer horizontal, vertical or checkered."

    def counterfactuals(self, sample: Sample) -> list[Sample]:
        """The same scene with the target showing each other pattern (the generator draws every cell's pattern
        independently, so these scenes are as likely); at the default budget they are byte-identical. With the
        sample they form the class of all three patterns, the same from any member."""
        x1, y1, x2, y2 = sample.metadata["target_box"]
        colour = COLOURS[sample.metadata["colour"]]
        out = []
        for pattern in PATTERNS:
            if pattern == sample.answer:
                continue
            image = sample.images[0].copy()
            image[y1:y2, x1:x2] = pattern_tile(pattern, x2 - x1, colour, self.config.stripe)
            out.append(
                dataclasses.replace(
                    sample,
                    id=f"{sample.id}/cf-{pattern}",
                    images=(image,),
                    answer=pattern,
                    metadata={**sample.metadata, "pattern": pattern},
                )
            )
        return out

    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        calls = (("crop", {"box": list(sample.metadata["region"])}),) if tools_enabled else ()
        return Solution(tool_calls=calls, answer=sample.answer)


def pattern_tile(pattern: str, side: int, colour: tuple[int, int, int], stripe: int = 1) -> np.ndarray:
    """A ``side × side`` RGB tile: ``pattern`` of ``colour`` on white with ``stripe``-pixel lines (or
    squares).

    Half the pixels are coloured, and every block aligned to the tile whose side is a multiple of
    ``2 * stripe`` holds the same number of coloured pixels for all patterns.

    Raises:
        ValueError: for an unknown pattern.
    """
    yy, xx = np.mgrid[0:side, 0:side] // stripe
    masks = {"horizontal": yy % 2 == 0, "vertical": xx % 2 == 0, "checkered": (xx + yy) % 2 == 0}
    if pattern not in masks:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")
    tile = np.full((side, side, 3), 255, dtype=np.uint8)
    tile[masks[pattern]] = colour
    return tile


@functools.lru_cache(maxsize=256)
def _cached_tile(pattern: str, side: int, colour: tuple[int, int, int], stripe: int) -> np.ndarray:
    """:func:`pattern_tile`, memoised and read-only (a scene draws 1,024 tiles from ~24 distinct ones)."""
    tile = pattern_tile(pattern, side, colour, stripe)
    tile.flags.writeable = False
    return tile


def render_preview(sample: Sample) -> np.ndarray:
    """The scene with the question's region outlined in white (for docs and the trajectory viewer)."""
    image = sample.images[0].copy()
    x1, y1, x2, y2 = sample.metadata["region"]
    cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), 3)
    return image


register_task(VisualSearchTask)
