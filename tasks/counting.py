"""Counting in clutter: how many objects of one kind ("red circles") does a scene of coloured shapes hold?

Contents: :data:`TASK_NAME`, :data:`MAX_COUNT`, :data:`SHAPES`, :data:`COLOURS`, :class:`CountingConfig`,
:class:`CountingTask`, :func:`shape_mask`.

The scene is a square of ``size`` pixels (448² at difficulty 0) holding solid circles, squares and triangles
of several colours. The question names one kind (a colour and a shape) and asks how many there are; the answer
is an integer 0–9, drawn uniformly *before* the scene is built, so every count is equally likely (chance
1/10).

Generation: the scene is cut into square cells of ``1.5 * object_size`` pixels; each object takes its own
randomly chosen cell and sits at a random offset inside it, at least 2 pixels from the cell's border, so
objects never overlap or touch (4 pixels apart at least). The total number of objects is drawn uniformly from
``[MAX_COUNT + 3, objects * (1 + difficulty)]`` independently of the answer, so the amount of clutter says
nothing about the count; the rest are distractors, half of them *confusers* that share exactly one attribute
with the target (its colour or its shape), so neither colour nor shape alone gives the count.

``metadata["objects"]`` lists every object (``name`` "<colour> <shape>", tight ``box`` [x1, y1, x2, y2] with
x2/y2 exclusive, ``point`` a pixel of the object); the oracle grounding backend returns exactly the target's
boxes for the query "<colour> <shape>" (at most 10, enough for counts up to :data:`MAX_COUNT`).

Difficulty:
    0 — 448² on a flat grey background; 4 colours (red, green, blue, yellow) × 3 shapes.
    1 — 672² (1.5×), up to twice the objects; 6 colours (adds orange and purple, close to red and blue) on a
        noisy background with ``speckles`` random-colour dots.
    2 — 896² (2×), up to three times the objects, twice the speckles; at the default budget (224²) an 18-pixel
        object is ~4 pixels wide, so zooming (crop) or grounding pays off.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vgym.errors import InvalidConfigError
from vgym.rewards import numeric_reward
from vgym.task import Sample, Solution, Task, register_task, sample_seed

__all__ = ["TASK_NAME", "MAX_COUNT", "SHAPES", "COLOURS", "CountingConfig", "CountingTask", "shape_mask"]

TASK_NAME = "counting"

MAX_COUNT = 9
"""Largest answer; answers are the integers 0..MAX_COUNT (the oracle grounding backend returns at most 10
boxes)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
"""Object shapes (every difficulty)."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 20),
    "orange": (245, 130, 20),
    "purple": (130, 50, 180),
}
"""Object colours (RGB); difficulty 0 uses the first four, difficulties 1 and 2 all six."""

_BACKGROUND = 200
"""Grey level of the background (noise and speckles are drawn on it at difficulties 1 and 2)."""
_NOISE = 12
"""Background noise amplitude (grey levels, ±) at difficulties 1 and 2."""
_SCALE = (1.0, 1.5, 2.0)
"""Scene side per difficulty, as a multiple of ``size``."""


@dataclass(frozen=True)
class CountingConfig:
    """Scene generation settings."""

    difficulty: int = 0
    """0: small flat scene, 4 colours; 1: 1.5× the side, up to 2× the objects, 6 colours, noise and speckles;
    2: 2× the side, up to 3× the objects, twice the speckles (see the module docstring)."""
    size: int = 448
    """Scene side in pixels at difficulty 0; difficulties 1 and 2 use 1.5× and 2× it (672 and 896 by
    default)."""
    object_size: int = 36
    """Largest object side in pixels; each object's side is uniform in [object_size // 2, object_size]. At
    least 8. Cells are ``1.5 * object_size`` pixels (54 by default)."""
    objects: int = 16
    """Most objects (targets + distractors) in a scene at difficulty 0; difficulty d allows
    ``objects * (1 + d)``. Each scene holds a uniform number in [MAX_COUNT + 3, that]; must fit one object per
    cell."""
    speckles: int = 2000
    """1–2 pixel dots of random colour scattered over the background at difficulty 1 (twice as many at 2, none
    at 0); drawn under the objects."""

    def __post_init__(self) -> None:
        if self.difficulty not in (0, 1, 2):
            raise InvalidConfigError(f"difficulty must be 0, 1 or 2, got {self.difficulty}")
        if self.object_size < 8 or self.speckles < 0:
            raise InvalidConfigError(
                f"need object_size >= 8 and speckles >= 0, got object_size={self.object_size}, "
                f"speckles={self.speckles}"
            )
        if self.objects < MAX_COUNT + 3:
            raise InvalidConfigError(
                f"objects must be >= {MAX_COUNT + 3} (room for {MAX_COUNT} targets and some distractors), "
                f"got {self.objects}"
            )
        cells = (self.scene_size // self.cell) ** 2
        if cells < self.max_objects:
            raise InvalidConfigError(
                f"the scene has {cells} cells of {self.cell} px for up to {self.max_objects} objects at "
                f"difficulty {self.difficulty} (size={self.size}, object_size={self.object_size}, "
                f"objects={self.objects}); raise size or lower object_size or objects"
            )

    @property
    def scene_size(self) -> int:
        """Scene side at this difficulty, in pixels."""
        return int(self.size * _SCALE[self.difficulty])

    @property
    def cell(self) -> int:
        """Side of the placement cells (one object per cell), in pixels."""
        return self.object_size * 3 // 2

    @property
    def max_objects(self) -> int:
        """Most objects in a scene at this difficulty."""
        return self.objects * (1 + self.difficulty)

    @property
    def colours(self) -> tuple[str, ...]:
        """Colour names used at this difficulty."""
        return tuple(COLOURS)[: 4 if self.difficulty == 0 else 6]


class CountingTask(Task):
    """Count the objects of one colour and shape in a cluttered scene (see the module docstring)."""

    name = TASK_NAME
    config_cls = CountingConfig
    default_tools = ("ground", "crop")
    config: CountingConfig

    def sample(self, split: str, index: int, seed: int) -> Sample:
        cfg = self.config
        rng = sample_seed(seed, split, index)
        size, cell = cfg.scene_size, cfg.cell
        kinds = [(c, s) for c in cfg.colours for s in SHAPES]
        target = kinds[int(rng.integers(len(kinds)))]
        count = int(rng.integers(0, MAX_COUNT + 1))  # drawn first: answers are uniform over 0..MAX_COUNT
        total = int(rng.integers(MAX_COUNT + 3, cfg.max_objects + 1))  # independent of the count
        confusers = [k for k in kinds if (k[0] == target[0]) != (k[1] == target[1])]  # one attribute shared
        others = [k for k in kinds if k != target]
        members = [target] * count
        for _ in range(total - count):
            pool = confusers if rng.random() < 0.5 else others
            members.append(pool[int(rng.integers(len(pool)))])

        if cfg.difficulty == 0:
            image = np.full((size, size, 3), _BACKGROUND, dtype=np.uint8)
        else:
            grey = rng.integers(
                _BACKGROUND - _NOISE, _BACKGROUND + _NOISE + 1, (size, size, 1), dtype=np.uint8
            )
            image = np.repeat(grey, 3, axis=2)
            n = cfg.speckles * cfg.difficulty
            xs, ys = rng.integers(0, size - 1, n), rng.integers(0, size - 1, n)
            dots = rng.integers(0, 256, (n, 3), dtype=np.uint8)
            image[ys, xs] = dots
            big = rng.random(n) < 0.5
            image[ys[big] + 1, xs[big]] = dots[big]
            image[ys[big], xs[big] + 1] = dots[big]

        per_row = size // cell
        chosen = rng.choice(per_row * per_row, size=total, replace=False)
        order = rng.permutation(total)  # targets are not the first cells drawn
        objects = []
        for k in order:
            colour, shape = members[k]
            row, col = divmod(int(chosen[k]), per_row)
            side = int(rng.integers(cfg.object_size // 2, cfg.object_size + 1))
            # At least 2 px from the cell's border on every side: objects are >= 4 px apart.
            x = col * cell + int(rng.integers(2, cell - side - 1))
            y = row * cell + int(rng.integers(2, cell - side - 1))
            mask = shape_mask(shape, side)
            image[y : y + side, x : x + side][mask] = COLOURS[colour]
            ys_in, xs_in = np.nonzero(mask)
            box = [
                x + int(xs_in.min()),
                y + int(ys_in.min()),
                x + int(xs_in.max()) + 1,
                y + int(ys_in.max()) + 1,
            ]
            # A pixel of the object: the mask pixel nearest its centroid (inside even for a thin triangle
            # tip).
            nearest = int(np.argmin((xs_in - xs_in.mean()) ** 2 + (ys_in - ys_in.mean()) ** 2))
            point = [x + int(xs_in[nearest]), y + int(ys_in[nearest])]
            objects.append({"name": f"{colour} {shape}", "box": box, "point": point})

        query = f"{target[0]} {target[1]}"
        return Sample(
            id=f"{TASK_NAME}/{split}/{seed}/{index}",
            task=TASK_NAME,
            split=split,
            index=index,
            question=f"How many {query}s are in the image?",
            images=(image,),
            answer=str(count),
            metadata={
                "objects": objects,
                "target": query,
                "colour": target[0],
                "shape": target[1],
                "count": count,
            },
        )

    def score(self, sample: Sample, answer: str) -> float:
        return numeric_reward(answer, float(sample.answer), abs_tol=0.0)

    def answer_choices(self) -> tuple[str, ...]:
        return tuple(str(n) for n in range(MAX_COUNT + 1))

    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        return sample.question + f" Answer with a single number from 0 to {MAX_COUNT}."

    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        calls = (("ground", {"query": sample.metadata["target"]}),) if tools_enabled else ()
        return Solution(tool_calls=calls, answer=sample.answer)


def shape_mask(shape: str, side: int) -> np.ndarray:
    """A ``side × side`` bool mask of ``shape``, touching all four borders of the square.

    A circle of diameter ``side``, the full square, or an isosceles triangle with its base on the bottom row
    and its apex in the middle of the top row (no anti-aliasing: every object pixel has the object's exact
    colour).

    Raises:
        ValueError: for an unknown shape or ``side < 2``.
    """
    if side < 2:
        raise ValueError(f"side must be >= 2, got {side}")
    canvas = np.zeros((side, side), np.uint8)
    last = side - 1
    if shape == "circle":  # pixel centres within side / 2 of the square's centre: touches every border
        yy, xx = np.mgrid[0:side, 0:side] - last / 2
        return xx**2 + yy**2 <= (side / 2) ** 2
    if shape == "square":
        canvas[:] = 1
    elif shape == "triangle":
        cv2.fillPoly(canvas, [np.array([[0, last], [last, last], [last // 2, 0]], np.int32)], 1)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return canvas.astype(bool)


register_task(CountingTask)
