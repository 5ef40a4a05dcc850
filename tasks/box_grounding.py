"""Box grounding: give the pixel box of the shape a short description names, among look-alike distractors.

Contents: :data:`TASK_NAME`, :data:`COLOURS`, :data:`SHAPES`, :data:`RELATIONS`, :class:`BoxGroundingConfig`,
:class:`BoxGroundingTask`, :func:`render_preview`.

A scene is a flat grey canvas with non-overlapping solid shapes (circles, squares, upward triangles) in six
colours. The question names one by colour and shape ("Give the box of the red circle.") and the answer is its
tight bounding box ``[x1, y1, x2, y2]`` in pixels of image 0 (x2/y2 exclusive, the convention of every vgym
tool), scored by IoU with :func:`vgym.rewards.box_iou_reward`, so the reward is continuous and only the exact
integer box earns 1.0. Every scene holds confusers of the target: at least one shape of the same colour and a
different shape, and one of the same shape and a different colour; no other object shares the target's name
unless a relation is needed to tell them apart.

Relational references (difficulty 2, a ``relation_rate`` share of questions): the scene holds the target, a
*twin* with the same colour and shape, and a uniquely named *anchor*; the target lies strictly on one side of
the anchor (entirely left of, right of, above or below its box) and the twin strictly on the opposite side, so
"the blue square left of the green triangle" names exactly one object under any reading of "left of".

The oracle grounds the target's exact name (and, for a relation, the anchor's), then answers the target's box;
``metadata["objects"]`` (name, box, point) feeds the oracle ``ground``/``point`` backends. The colours fall in
the HSV ranges of the ``opencv`` grounding backend, so that backend works on these scenes as well.

Difficulty (image side, object side, distractors): the image grows while objects do not, so at the default
budget (224²) a difficulty-2 object shrinks 6× to 4–8 budget pixels and a box read off the budget image is off
by ±3 pixels per side:
    0 — 448², objects 40–64 px, 4 distractors.
    1 — 896², objects 32–56 px, 8 distractors.
    2 — 1344², objects 24–48 px, 14 distractors, half the questions relational.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vgym.errors import InvalidConfigError
from vgym.rewards import box_iou_reward
from vgym.task import Sample, Solution, Task, register_task, sample_seed

__all__ = ["TASK_NAME", "COLOURS", "SHAPES", "RELATIONS", "BoxGroundingConfig", "BoxGroundingTask",
           "render_preview"]

TASK_NAME = "box_grounding"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 30),
    "orange": (240, 130, 20),
    "purple": (130, 40, 190),
}
"""Object colours (RGB), each inside its :data:`vgym.tools.ground.COLOUR_HSV_RANGES` range."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
"""Object shapes; the opencv grounding backend understands all three words."""

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
"""Spatial relations of relational references; each one's opposite is its neighbour in the pair order."""

_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_BACKGROUND = (150, 230)
"""Range of the grey level of the canvas (inclusive low, exclusive high), drawn per scene."""
_TRIES = 200
"""Placement attempts per object before the whole scene is redrawn (layouts are sparse, see __post_init__)."""


@dataclass(frozen=True)
class BoxGroundingConfig:
    """Scene generation settings; the tuples hold one entry per difficulty 0, 1, 2."""

    difficulty: int = 0
    """0, 1 or 2: picks the entries of the tuples below; relations appear at difficulty 2 only."""
    image_sizes: tuple[int, int, int] = (448, 896, 1344)
    """Side of the square scene in pixels, per difficulty."""
    object_sizes: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = ((40, 64), (32, 56), (24, 48))
    """Inclusive (min, max) side of an object's square footprint in pixels, per difficulty."""
    distractors: tuple[int, int, int] = (4, 8, 14)
    """Objects besides the target (the twin and anchor of a relation count among them), per difficulty; at
    least 2, for the same-colour and same-shape confusers (4 at difficulty 2 when relations are on)."""
    relation_rate: float = 0.5
    """Share of difficulty-2 questions that use a relational reference, in [0, 1]."""
    gap: int = 4
    """Least empty pixels between any two objects' boxes."""

    def __post_init__(self) -> None:
        if self.difficulty not in (0, 1, 2):
            raise InvalidConfigError(f"difficulty must be 0, 1 or 2, got {self.difficulty}")
        if len(self.image_sizes) != 3 or len(self.object_sizes) != 3 or len(self.distractors) != 3:
            raise InvalidConfigError(
                "image_sizes, object_sizes and distractors need one entry per difficulty (3 each), got "
                f"{len(self.image_sizes)}, {len(self.object_sizes)} and {len(self.distractors)}"
            )
        if not 0.0 <= self.relation_rate <= 1.0:
            raise InvalidConfigError(f"relation_rate must be in [0, 1], got {self.relation_rate}")
        if self.gap < 0:
            raise InvalidConfigError(f"gap must be >= 0, got {self.gap}")
        for d, (side, (lo, hi), n) in enumerate(zip(self.image_sizes, self.object_sizes, self.distractors)):
            if not 8 <= lo <= hi <= side // 4:
                raise InvalidConfigError(
                    f"object sizes at difficulty {d} must satisfy 8 <= min <= max <= image side / 4, got "
                    f"({lo}, {hi}) for a {side}-pixel image"
                )
            least = 4 if d == 2 and self.relation_rate > 0 else 2  # + the twin and the anchor of a relation
            if n < least:
                raise InvalidConfigError(
                    f"difficulty {d} needs at least {least} distractors (the confusers), got {n}"
                )
            # Rejection sampling stays fast while the objects' padded footprints cover under a quarter of the
            # scene.
            if (n + 1) * (hi + self.gap) ** 2 > side * side / 4:
                raise InvalidConfigError(
                    f"difficulty {d} is too crowded: {n + 1} objects of up to {hi} px (+{self.gap} gap) in a "
                    f"{side}² image cover over 1/4 of it; use fewer distractors, smaller objects or a larger "
                    "image"
                )

    @property
    def image_size(self) -> int:
        """Scene side in pixels at this difficulty."""
        return self.image_sizes[self.difficulty]

    @property
    def num_objects(self) -> int:
        """Objects in a scene at this difficulty (target and distractors)."""
        return self.distractors[self.difficulty] + 1


class BoxGroundingTask(Task):
    """Give the box of the object a colour + shape (+ relation) description names (see the module
    docstring)."""

    name = TASK_NAME
    config_cls = BoxGroundingConfig
    default_tools = ("ground", "crop")
    config: BoxGroundingConfig

    def sample(self, split: str, index: int, seed: int) -> Sample:
        cfg = self.config
        rng = sample_seed(seed, split, index)
        size = cfg.image_size
        relation = None
        if cfg.difficulty == 2 and rng.random() < cfg.relation_rate:
            relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
        names = _draw_names(rng, cfg.num_objects, relational=relation is not None)
        for _ in range(_TRIES):  # a dead end (rare at the validated density) redraws every position
            if (boxes := _place(rng, cfg, len(names), relation)) is not None:
                break
        else:  # pragma: no cover - unreachable for valid configs (see BoxGroundingConfig.__post_init__)
            raise RuntimeError(
                f"could not place {len(names)} objects in a {size}² scene ({split}, {index}, {seed})"
            )
        grey = int(rng.integers(*_BACKGROUND))
        image = np.full((size, size, 3), grey, dtype=np.uint8)
        objects = [_draw(image, name, box) for name, box in zip(names, boxes)]
        # Shuffle the listing so the target's position in metadata (and in oracle ground results) says
        # nothing.
        order = [int(i) for i in rng.permutation(len(objects))]
        objects = [objects[i] for i in order]
        target = order.index(0)
        question = f"Give the box of the {names[0]}."
        relation_meta = None
        if relation is not None:
            anchor = order.index(2)
            question = f"Give the box of the {names[0]} {relation} the {names[2]}."
            relation_meta = {"relation": relation, "anchor": anchor, "twin": order.index(1)}
        gold = objects[target]["box"]
        return Sample(
            id=f"{TASK_NAME}/{split}/{seed}/{index}",
            task=TASK_NAME,
            split=split,
            index=index,
            question=question,
            images=(image,),
            answer=_format_box(gold),
            metadata={
                "objects": objects,
                "target": target,
                "relation": relation_meta,
                "image_size": [size, size],
                "background": grey,
            },
        )

    def score(self, sample: Sample, answer: str) -> float:
        return box_iou_reward(answer, sample.metadata["objects"][sample.metadata["target"]]["box"])

    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        width, height = sample.metadata["image_size"]
        where = f", as its [image 0: {width}x{height}] line says" if tools_enabled else ""
        return (
            f"{sample.question} Answer with its bounding box [x1, y1, x2, y2] in pixels of image 0 at full "
            f"resolution ({width}x{height}{where}); x2 and y2 are exclusive."
        )

    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        if not tools_enabled:
            return Solution(tool_calls=(), answer=sample.answer)
        objects = sample.metadata["objects"]
        calls = [("ground", {"query": objects[sample.metadata["target"]]["name"]})]
        if sample.metadata["relation"] is not None:
            calls.append(("ground", {"query": objects[sample.metadata["relation"]["anchor"]]["name"]}))
        return Solution(tool_calls=tuple(calls), answer=sample.answer)


def _format_box(box: list[int]) -> str:
    return "[" + ", ".join(str(v) for v in box) + "]"


def _draw_names(rng: np.random.Generator, n: int, *, relational: bool) -> list[str]:
    """Object names: [target, same colour other shape | twin, same shape other colour | anchor, ...].

    Without a relation, entries 1 and 2 are the two confusers; with one, entry 1 is the twin (the target's
    name) and entry 2 the anchor (a name no other object has), and the confusers come next. The rest are
    random names other than the target's (and the anchor's).
    """
    colours, shapes = list(COLOURS), list(SHAPES)
    colour, shape = colours[int(rng.integers(len(colours)))], shapes[int(rng.integers(len(shapes)))]
    other_shapes = [s for s in shapes if s != shape]
    other_colours = [c for c in colours if c != colour]
    confusers = [
        f"{colour} {other_shapes[int(rng.integers(len(other_shapes)))]}",
        f"{other_colours[int(rng.integers(len(other_colours)))]} {shape}",
    ]
    target = f"{colour} {shape}"
    names = [target]
    taken = {target}
    if relational:
        free = [f"{c} {s}" for c in colours for s in shapes if f"{c} {s}" not in taken | set(confusers)]
        anchor = free[int(rng.integers(len(free)))]
        names += [target, anchor]
        taken.add(anchor)
    names += confusers
    pool = [f"{c} {s}" for c in colours for s in shapes if f"{c} {s}" not in taken]
    while len(names) < n:
        names.append(pool[int(rng.integers(len(pool)))])
    return names[:n]


def _holds(relation: str, a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Whether box ``a`` lies entirely ``relation`` box ``b`` (no overlap of their extents on that axis)."""
    if relation == "left of":
        return a[2] <= b[0]
    if relation == "right of":
        return a[0] >= b[2]
    if relation == "above":
        return a[3] <= b[1]
    return a[1] >= b[3]  # below


def _place(
    rng: np.random.Generator, cfg: BoxGroundingConfig, n: int, relation: str | None
) -> list[tuple[int, int, int, int]] | None:
    """Square footprints ``(x1, y1, x2, y2)`` for ``n`` objects, ``cfg.gap`` apart, or None at a dead end.

    With a relation, object 0 (target) must lie ``relation`` object 2 (anchor) and object 1 (twin) the
    opposite.
    """
    size, (lo, hi) = cfg.image_size, cfg.object_sizes[cfg.difficulty]
    boxes: list[tuple[int, int, int, int]] = []
    order = [2, 0, 1, *range(3, n)] if relation is not None else list(range(n))  # the anchor first
    placed: dict[int, tuple[int, int, int, int]] = {}
    for i in order:
        for _ in range(_TRIES):
            side = int(rng.integers(lo, hi + 1))
            x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
            box = (x, y, x + side, y + side)
            g = cfg.gap
            if any(
                box[0] < b[2] + g and b[0] < box[2] + g and box[1] < b[3] + g and b[1] < box[3] + g
                for b in boxes
            ):
                continue
            if relation is not None and i in (0, 1):
                want = relation if i == 0 else _OPPOSITE[relation]
                if not _holds(want, box, placed[2]):
                    continue
            boxes.append(box)
            placed[i] = box
            break
        else:
            return None
    return [placed[i] for i in range(n)]


def _draw(image: np.ndarray, name: str, footprint: tuple[int, int, int, int]) -> dict[str, object]:
    """Draw the object ``name`` into its square ``footprint`` of ``image``; its metadata entry.

    The box is the tight box of the pixels actually drawn (x2/y2 exclusive), the point the drawn pixel nearest
    the mask's centroid.
    """
    colour, shape = name.split()
    x1, y1, x2, y2 = footprint
    side = x2 - x1
    mask = np.zeros((side, side), np.uint8)
    if shape == "circle":
        cv2.circle(mask, ((side - 1) // 2, (side - 1) // 2), (side - 1) // 2, 1, -1)
    elif shape == "square":
        mask[:] = 1
    else:  # an upward triangle filling the footprint's width and height
        cv2.fillPoly(
            mask, [np.array([[(side - 1) // 2, 0], [0, side - 1], [side - 1, side - 1]], np.int32)], 1
        )
    region = image[y1:y2, x1:x2]
    region[mask.astype(bool)] = COLOURS[colour]
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    k = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    box = [x1 + int(xs.min()), y1 + int(ys.min()), x1 + int(xs.max()) + 1, y1 + int(ys.max()) + 1]
    return {"name": name, "box": box, "point": [x1 + int(xs[k]), y1 + int(ys[k])]}


def render_preview(sample: Sample) -> np.ndarray:
    """The scene with the gold box outlined in black (for docs and the trajectory viewer)."""
    image = sample.images[0].copy()
    x1, y1, x2, y2 = sample.metadata["objects"][sample.metadata["target"]]["box"]
    cv2.rectangle(image, (x1 - 2, y1 - 2), (x2 + 1, y2 + 1), (0, 0, 0), 2)
    return image


register_task(BoxGroundingTask)
