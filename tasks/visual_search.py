"""Visual search in a high-resolution scene: name the colour of a small marker inside a given region.

Contents: :data:`TASK_NAME`, :data:`COLOURS`, :class:`VisualSearchConfig`, :class:`VisualSearchTask`.

The scene is a ``grid × grid`` board of ``cell``-pixel cells on a speckled background; every cell holds one small
square marker of a random colour. The question names a region (a box in pixels) that contains exactly one
marker's centre. At the env's image budget the scene is shrunk by ``grid·cell / sqrt(max_pixels)`` (6× by default),
which leaves each marker about one pixel wide and mixed with the speckle; a crop of the region zoomed to the budget
shows it ~16 pixels wide. So the answer needs the crop tool (``tests/tasks/test_visual_search.py`` checks both
sizes and that a colour read-out from the budget image fails where the same read-out from the crop succeeds).

Difficulty:
    0 — the region is one grid cell (box coordinates are multiples of ``cell``): the quickstart variant, learnable
        by a tiny model that copies the box into the crop call and names the colour it then sees.
    1 — the region is a random box of ½–1 cell around the marker, inside its cell, and markers are smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vgym.errors import InvalidConfigError
from vgym.rewards import exact_match_reward
from vgym.task import Sample, Solution, Task, register_task, sample_seed

__all__ = ["TASK_NAME", "COLOURS", "VisualSearchConfig", "VisualSearchTask"]

TASK_NAME = "visual_search"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (20, 170, 40),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 20),
    "magenta": (220, 30, 220),
    "cyan": (20, 220, 230),
}
"""Marker colours (RGB); the answer is one of these names, so chance accuracy is 1/6."""

_BACKGROUND = 150
"""Grey level of the board; speckles are drawn on top of it."""


@dataclass(frozen=True)
class VisualSearchConfig:
    """Scene generation settings."""

    difficulty: int = 0
    """0: the region is one grid cell; 1: a random box around the marker and smaller markers."""
    grid: int = 24
    """Cells per side; the scene is ``grid * cell`` pixels square."""
    cell: int = 56
    """Cell side in pixels. With the default budget (224²) a one-cell crop is zoomed 4×."""
    marker_size: int = 8
    """Marker side in pixels at difficulty 0 (difficulty 1 uses 3/4 of it)."""
    speckles: int = 6000
    """Number of 1–2 pixel speckles of random colour scattered over the scene (clutter)."""

    def __post_init__(self) -> None:
        if self.difficulty not in (0, 1):
            raise InvalidConfigError(f"difficulty must be 0 or 1, got {self.difficulty}")
        if self.grid < 2 or self.cell < 4 * self.marker_size or self.marker_size < 2:
            raise InvalidConfigError(
                f"need grid >= 2, marker_size >= 2 and cell >= 4 * marker_size; got grid={self.grid}, "
                f"cell={self.cell}, marker_size={self.marker_size}"
            )


class VisualSearchTask(Task):
    """Name the colour of the marker in a region of a high-resolution scene (see the module docstring)."""

    name = TASK_NAME
    config_cls = VisualSearchConfig
    default_tools = ("crop",)
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
        side = cfg.marker_size if cfg.difficulty == 0 else max(2, cfg.marker_size * 3 // 4)
        margin = side + 2
        colour_idx = rng.integers(0, len(names), (cfg.grid, cfg.grid))
        offsets = rng.integers(margin, cfg.cell - margin - side, (cfg.grid, cfg.grid, 2))
        boxes = {}
        for r in range(cfg.grid):
            for c in range(cfg.grid):
                x = c * cfg.cell + int(offsets[r, c, 0])
                y = r * cfg.cell + int(offsets[r, c, 1])
                image[y - 1 : y + side + 1, x - 1 : x + side + 1] = 0  # 1 px black frame
                image[y : y + side, x : x + side] = COLOURS[names[colour_idx[r, c]]]
                boxes[(r, c)] = (x, y, x + side, y + side)
        r, c = (int(v) for v in rng.integers(0, cfg.grid, 2))
        target = boxes[(r, c)]
        if cfg.difficulty == 0:
            region = (c * cfg.cell, r * cfg.cell, (c + 1) * cfg.cell, (r + 1) * cfg.cell)
        else:
            region = self._random_region(rng, target, (c * cfg.cell, r * cfg.cell))
        answer = names[colour_idx[r, c]]
        x1, y1, x2, y2 = region
        question = f"What colour is the square in the region [{x1}, {y1}, {x2}, {y2}]?"
        return Sample(
            id=f"{TASK_NAME}/{split}/{seed}/{index}",
            task=TASK_NAME,
            split=split,
            index=index,
            question=question,
            images=(image,),
            answer=answer,
            metadata={"target_box": list(target), "region": list(region), "cell": [r, c], "colour": answer},
        )

    def _random_region(
        self, rng: np.random.Generator, target: tuple[int, ...], origin: tuple[int, int]
    ) -> tuple[int, ...]:
        """A box of 1/2-1 cell per side containing the target marker and no other marker's centre.

        The box is clipped to the target's own cell (whose top-left corner is ``origin``): markers of neighbouring
        cells can be ~23 px apart, so a box merely smaller than a cell could still cover a second centre.
        """
        cell = self.config.cell
        w, h = (int(v) for v in rng.integers(cell // 2, cell, 2))
        cx, cy = (target[0] + target[2]) // 2, (target[1] + target[3]) // 2
        ox, oy = origin
        x1 = int(np.clip(cx - rng.integers(target[2] - target[0], w - (target[2] - target[0])), ox, ox + cell - w))
        y1 = int(np.clip(cy - rng.integers(target[3] - target[1], h - (target[3] - target[1])), oy, oy + cell - h))
        return (x1, y1, x1 + w, y1 + h)

    def score(self, sample: Sample, answer: str) -> float:
        return exact_match_reward(answer, sample.answer)

    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        return sample.question + " Answer with one colour name."

    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        calls = (("crop", {"box": list(sample.metadata["region"])}),) if tools_enabled else ()
        return Solution(tool_calls=calls, answer=sample.answer)


def render_preview(sample: Sample) -> np.ndarray:
    """The scene with the question's region outlined in white (for docs and the trajectory viewer)."""
    image = sample.images[0].copy()
    x1, y1, x2, y2 = sample.metadata["region"]
    cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), (255, 255, 255), 3)
    return image


register_task(VisualSearchTask)
