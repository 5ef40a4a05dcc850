"""2D spatial relations: multiple-choice questions about where named shapes lie relative to each other.

Contents: :data:`TASK_NAME`, :data:`SHAPES`, :data:`COLOURS`, :data:`PALETTES`, :data:`SIMILAR`,
:data:`RELATIONS`, :data:`KINDS`, :data:`LETTERS`, :class:`Spatial2dConfig`, :class:`Spatial2dTask`,
:func:`shape_mask`.

A scene (``size``² pixels, light grey) holds non-overlapping filled shapes, each named "<colour> <shape>"
("red circle"); every name occurs once, and no name's words are a subset of another's, so grounding a name
finds exactly one object. Each sample asks one of two kinds of question, both with four options lettered A-D
(shuffled with the sample's generator, so every letter is the answer a quarter of the time):

- ``relation``: "Where is the red circle relative to the blue triangle?" — to the left, to the right, above,
  below. Relations compare box centres: the asked axis separates them by at least ``axis_margin`` times the
  larger object side, and the other axis by at most ``off_axis_ratio`` times that separation (within ~22° of
  the axis at the default), so exactly one option is true. The four relations are drawn uniformly.
- ``nearest``: "Which of these triangles is nearest to the red circle?" — four objects of one shape. The
  runner-up's centre distance is at least ``nearest_ratio`` times the nearest's and at least one larger object
  side more.

The answer is the correct letter (:func:`vgym.rewards.multiple_choice_reward`; the option text is accepted
too). The oracle grounds the two named objects (``relation``), or the anchor and then the options' shape word,
which returns every object of that shape, at most 10 (``nearest``), and answers the letter.

``metadata["objects"]`` lists every object (``name``, tight ``box`` [x1, y1, x2, y2] with x2/y2 exclusive, and
``point``, the box centre, which lies inside every shape) for the oracle ``ground`` / ``point`` backends.

Difficulty (sides scale with ``object_size``, counts with ``objects``; defaults shown):
    0 — 6 to 8 objects with sides 36-52 px, 6 well-separated colours. 1 — 9 to 12 objects with sides 25-36 px,
    8 colours (adds cyan and pink). 2 — 13 to 16 objects with sides 16-24 px, 10 colours in 5 similar pairs
    (red/crimson, green/lime, blue/navy,
        purple/magenta, orange/yellow); the question's objects get a same-shape twin of the paired colour
        (placed anywhere free), so a "red circle" question shows a crimson circle too (up to 18 objects).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vgym.errors import InvalidConfigError
from vgym.rewards import multiple_choice_reward
from vgym.task import Sample, Solution, Task, register_task, sample_seed

__all__ = ["TASK_NAME", "SHAPES", "COLOURS", "PALETTES", "SIMILAR", "RELATIONS", "KINDS", "LETTERS",
           "Spatial2dConfig", "Spatial2dTask", "shape_mask"]

TASK_NAME = "spatial_2d"

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
"""Object shapes (every difficulty); triangles point up."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (235, 205, 20),
    "green": (30, 160, 50),
    "blue": (40, 70, 220),
    "purple": (130, 50, 180),
    "cyan": (20, 190, 210),
    "pink": (240, 120, 180),
    "crimson": (160, 20, 60),
    "lime": (140, 215, 40),
    "navy": (25, 35, 130),
    "magenta": (210, 40, 190),
}
"""Object colours (RGB); single words, so no name's words contain another's."""

PALETTES: dict[int, tuple[str, ...]] = {
    0: ("red", "orange", "yellow", "green", "blue", "purple"),
    1: ("red", "orange", "yellow", "green", "blue", "purple", "cyan", "pink"),
    2: ("red", "orange", "yellow", "green", "blue", "purple", "crimson", "lime", "navy", "magenta"),
}
"""Colours per difficulty; at most 10, so a shape word grounds at most 10 objects (the ground tool's
limit)."""

SIMILAR: dict[str, str] = {
    "red": "crimson", "crimson": "red", "green": "lime", "lime": "green", "blue": "navy", "navy": "blue",
    "purple": "magenta", "magenta": "purple", "orange": "yellow", "yellow": "orange",
}
"""The look-alike of each colour of the difficulty-2 palette (twins of the question's objects use it)."""

RELATIONS: tuple[str, ...] = ("to the left", "to the right", "above", "below")
"""Option texts of ``relation`` questions (the subject relative to the reference)."""

KINDS: tuple[str, ...] = ("relation", "nearest")
"""Question kinds, drawn with equal probability."""

LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
"""Option letters; every question has four options, so chance accuracy is 1/4."""

_BACKGROUND = 235
"""Grey level of the scene."""
_SIDE_SCALE = (1.0, 0.7, 0.46)
"""Largest object side per difficulty, as a multiple of ``object_size``; the smallest is 0.7 of the
largest."""
_LAYOUT_TRIES = 200
"""Scene layouts tried before giving up (a valid one is found within a few at every valid config)."""


@dataclass(frozen=True)
class Spatial2dConfig:
    """Scene generation settings."""

    difficulty: int = 0
    """0: few large objects, distinct colours; 1: more, smaller objects, 8 colours; 2: many small objects
    among look-alike colours (see the module docstring)."""
    size: int = 448
    """Scene side in pixels (square scene). The default budget (224²) shows it at half size."""
    objects: int = 8
    """Most objects at difficulty 0; difficulty d allows ``objects * (2 + d) // 2`` (8, 12, 16), at least 6,
    and a scene holds between 3 fewer than that and that many (difficulty-2 twins come on top)."""
    object_size: int = 52
    """Largest object side at difficulty 0, in pixels; difficulties 1 and 2 use 0.7 and 0.46 of it."""
    gap: int = 4
    """Fewest pixels between two objects' boxes, and between a box and the scene's edge."""
    axis_margin: float = 1.0
    """``relation``: least centre separation on the asked axis, in multiples of the larger object side (>= 1,
    so the two boxes do not overlap on that axis)."""
    off_axis_ratio: float = 0.4
    """``relation``: most centre separation on the other axis, as a fraction of the asked one (0.4: within
    21.8° of the axis), in [0, 1)."""
    nearest_ratio: float = 1.3
    """``nearest``: least ratio of the runner-up option's centre distance to the nearest one's (> 1)."""

    def __post_init__(self) -> None:
        if self.difficulty not in (0, 1, 2):
            raise InvalidConfigError(f"difficulty must be 0, 1 or 2, got {self.difficulty}")
        if self.objects < 6:
            raise InvalidConfigError(
                f"objects must be >= 6 (a nearest question needs an anchor and 4 options "
                f"plus one more object), got {self.objects}"
            )
        if self.object_size < 20 or self.gap < 1:
            raise InvalidConfigError(
                f"need object_size >= 20 (difficulty 2 shrinks it to 0.46) and gap >= 1; got "
                f"object_size={self.object_size}, gap={self.gap}"
            )
        if self.axis_margin < 1 or not 0 <= self.off_axis_ratio < 1 or self.nearest_ratio <= 1:
            raise InvalidConfigError(
                "need axis_margin >= 1, 0 <= off_axis_ratio < 1 and nearest_ratio > 1; got "
                f"axis_margin={self.axis_margin}, off_axis_ratio={self.off_axis_ratio}, "
                f"nearest_ratio={self.nearest_ratio}"
            )
        cell = self.max_side + self.gap
        if (self.max_objects + 2) * cell * cell * 4 > (self.size - 2 * self.gap) ** 2:
            raise InvalidConfigError(
                f"a {self.size}-px scene is too small for {self.max_objects} objects (+2 twins) of up to "
                f"{self.max_side} px (need 4x their padded area); raise size or lower objects or object_size"
            )

    @property
    def max_objects(self) -> int:
        """Most objects at this difficulty before twins."""
        return self.objects * (2 + self.difficulty) // 2

    @property
    def max_side(self) -> int:
        """Largest object side at this difficulty, in pixels."""
        return round(self.object_size * _SIDE_SCALE[self.difficulty])

    @property
    def min_side(self) -> int:
        """Smallest object side at this difficulty, in pixels."""
        return round(0.7 * self.max_side)


@dataclass
class _Object:
    colour: str
    shape: str
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def side(self) -> int:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


class Spatial2dTask(Task):
    """Answer where named shapes lie relative to each other, as a letter (see the module docstring)."""

    name = TASK_NAME
    config_cls = Spatial2dConfig
    default_tools = ("ground",)
    config: Spatial2dConfig

    def sample(self, split: str, index: int, seed: int) -> Sample:
        cfg = self.config
        rng = sample_seed(seed, split, index)
        kind = KINDS[int(rng.integers(len(KINDS)))]
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]  # used by relation questions only
        for _ in range(_LAYOUT_TRIES):
            layout = self._layout(rng, kind)
            if layout is None:
                continue
            objects, shape = layout
            if kind == "relation":
                found = self._relation_question(objects, relation, rng)
            else:
                found = self._nearest_question(objects, shape)
            if found is not None:
                break
        else:  # pragma: no cover - the config checks leave plenty of room; this guards the invariant
            raise RuntimeError(f"no valid {kind} question in {_LAYOUT_TRIES} layouts for {cfg}")
        question, options, gold, involved = found
        if cfg.difficulty == 2:
            self._add_twins(objects, involved, rng)
        # drawing and metadata order tell nothing
        objects = [objects[i] for i in rng.permutation(len(objects))]
        order = rng.permutation(len(options))
        options = [options[i] for i in order]
        gold_index = int(np.flatnonzero(order == gold)[0])
        lines = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, options))

        image = np.full((cfg.size, cfg.size, 3), _BACKGROUND, dtype=np.uint8)
        for obj in objects:
            x1, y1, _, _ = obj.box
            mask = shape_mask(obj.shape, obj.side)
            image[y1 : y1 + obj.side, x1 : x1 + obj.side][mask] = COLOURS[obj.colour]
        records = [
            {
                "name": o.name,
                "box": list(o.box),
                "point": [(o.box[0] + o.box[2]) // 2, (o.box[1] + o.box[3]) // 2],
            }
            for o in objects
        ]
        queries = [involved[0].name, involved[1].name if kind == "relation" else shape]
        return Sample(
            id=f"{TASK_NAME}/{split}/{seed}/{index}",
            task=TASK_NAME,
            split=split,
            index=index,
            question=f"{question}\n{lines}",
            images=(image,),
            answer=LETTERS[gold_index],
            metadata={"objects": records, "kind": kind, "options": options, "gold_index": gold_index,
                      "queries": queries},
        )

    def _layout(self, rng: np.random.Generator, kind: str) -> tuple[list[_Object], str] | None:
        """Random non-overlapping objects and a shape, or None when they did not fit. For ``nearest`` object 0
        is the anchor and objects 1-4 the options, all of the returned shape (see
        :meth:`_nearest_question`)."""
        cfg = self.config
        palette = PALETTES[cfg.difficulty]
        count = int(rng.integers(max(6, cfg.max_objects - 3), cfg.max_objects + 1))
        names = [(c, s) for c in palette for s in SHAPES]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        chosen: list[tuple[str, str]] = []
        if kind == "nearest":  # the anchor first, then four options of one shape; the rest at random
            option_colours = rng.choice(palette, size=4, replace=False)
            chosen = [(str(c), shape) for c in option_colours]
            anchor = [n for n in names if n not in chosen]
            chosen.insert(0, anchor[int(rng.integers(len(anchor)))])
        rest = [n for n in names if n not in chosen]
        chosen += [rest[i] for i in rng.choice(len(rest), size=count - len(chosen), replace=False)]
        placed: list[_Object] = []
        for colour, shape_name in chosen:
            box = self._place(rng, placed)
            if box is None:
                return None
            placed.append(_Object(colour, shape_name, _box(box)))
        return placed, shape

    def _place(self, rng: np.random.Generator, placed: list[_Object]) -> tuple[int, int, int] | None:
        """``(x, y, side)`` of a free square at least ``gap`` from every placed box and the edge, or None."""
        cfg = self.config
        for _ in range(300):
            side = int(rng.integers(cfg.min_side, cfg.max_side + 1))
            x, y = (int(v) for v in rng.integers(cfg.gap, cfg.size - cfg.gap - side + 1, 2))
            if all(x >= o.box[2] + cfg.gap or o.box[0] >= x + side + cfg.gap or y >= o.box[3] + cfg.gap
                   or o.box[1] >= y + side + cfg.gap for o in placed):
                return x, y, side
        return None

    def _relation_question(
        self, objects: list[_Object], relation: str, rng: np.random.Generator
    ) -> tuple[str, list[str], int, list[_Object]] | None:
        pairs = [(a, b) for a in objects for b in objects if a is not b and self._relation(a, b) == relation]
        if not pairs:
            return None
        a, b = pairs[int(rng.integers(len(pairs)))]
        question = f"Where is the {a.name} relative to the {b.name}, comparing their centres?"
        return question, list(RELATIONS), RELATIONS.index(relation), [a, b]

    def _nearest_question(
        self, objects: list[_Object], shape: str
    ) -> tuple[str, list[str], int, list[_Object]] | None:
        anchor, options = objects[0], objects[1:5]
        dist = [math.dist(anchor.centre, o.centre) for o in options]
        first, second = sorted(dist)[:2]
        largest = max(o.side for o in [anchor, *options])
        if second < self.config.nearest_ratio * first or second - first < largest:
            return None
        question = f"Which of these {shape}s is nearest to the {anchor.name}, comparing their centres?"
        gold = int(np.argmin(dist))
        return question, [o.name for o in options], gold, [anchor, options[gold]]

    def _relation(self, a: _Object, b: _Object) -> str | None:
        """Where ``a`` lies relative to ``b`` (one of :data:`RELATIONS`), or None when no relation is
        clear."""
        dx, dy = a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]
        margin = self.config.axis_margin * max(a.side, b.side)
        for main, other, (negative, positive) in ((dx, dy, RELATIONS[:2]), (dy, dx, RELATIONS[2:])):
            if abs(main) >= margin and abs(other) <= self.config.off_axis_ratio * abs(main):
                return negative if main < 0 else positive
        return None

    def _add_twins(self, objects: list[_Object], involved: list[_Object], rng: np.random.Generator) -> None:
        """Add a same-shape object of the look-alike colour for each of ``involved``, anywhere free, unless
        that name is already in the scene or no free spot is found."""
        names = {o.name for o in objects}
        for obj in involved:
            twin = SIMILAR[obj.colour]
            box = self._place(rng, objects)
            if f"{twin} {obj.shape}" not in names and box is not None:
                objects.append(_Object(twin, obj.shape, _box(box)))
                names.add(f"{twin} {obj.shape}")

    def score(self, sample: Sample, answer: str) -> float:
        return multiple_choice_reward(answer, sample.metadata["options"], sample.metadata["gold_index"])

    def answer_choices(self) -> tuple[str, ...]:
        return LETTERS

    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        return sample.question + "\nAnswer with the letter (A, B, C or D) of the correct option."

    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        calls = tuple(("ground", {"query": q}) for q in sample.metadata["queries"]) if tools_enabled else ()
        return Solution(tool_calls=calls, answer=sample.answer)


def shape_mask(shape: str, side: int) -> np.ndarray:
    """A ``side × side`` bool mask of a filled ``shape`` touching all four edges (a triangle points up).

    Raises:
        ValueError: for an unknown shape or ``side < 4``.
    """
    if shape not in SHAPES or side < 4:
        raise ValueError(f"need a shape in {SHAPES} and side >= 4; got {shape!r}, side={side}")
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    c = (side - 1) / 2  # the centre column (and row); pixel centres sit at whole coordinates
    if shape == "circle":  # radius side / 2: the middle pixel of each edge is inside
        return (xx - c) ** 2 + (yy - c) ** 2 <= (side / 2) ** 2
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    # half-width grows from 1/2 on the top row to side/2 on the bottom one
    return np.abs(xx - c) <= (yy + 1) / 2


def _box(square: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """The tight box of a shape drawn in the ``(x, y, side)`` square: the square itself (every mask of
    :func:`shape_mask` touches all four edges)."""
    x, y, side = square
    return x, y, x + side, y + side


register_task(Spatial2dTask)
