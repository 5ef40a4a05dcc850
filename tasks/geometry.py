"""Plane geometry on a rendered diagram: the length of a segment, an angle, or the area of a polygon, in
pixels.

Contents: :data:`TASK_NAME`, :data:`KINDS`, :data:`TOLERANCES`, :data:`LEVELS`, :class:`Level`,
:class:`GeometryConfig`, :class:`GeometryTask`.

The scene (512² by default) is a white canvas with black anti-aliased segments and labelled points (a dot and
a letter A, B, C, ... drawn with ``cv2.putText``). One figure answers the question: a segment (length), two
arms meeting at a vertex (angle, optionally closed into a triangle) or a triangle or convex quadrilateral
(area). Other labelled points, segments between labelled points and unlabelled lines are clutter. The question
names points by their labels::

    How long is segment DB in pixels?                       (length, rel_tol 0.02)
    What is angle CAF in degrees?                           (the angle at A, in [15, 165]; abs_tol 2)
    What is the area of quadrilateral BEAC in square pixels? (vertices in drawing order; rel_tol 0.03)

Difficulty adds clutter (:data:`LEVELS`); at difficulty 2 lines are 1 pixel wide and points sit at non-integer
coordinates (drawn with 1/16-pixel precision).

Tools: ``metadata["objects"]`` holds one object per labelled point (name ``"point <label>"``, a small box
around it, ``point`` its exact ``[x, y]``), so the oracle ``point`` tool finds each label and ``measure``
computes the value (the oracle plan does both when they fit in ``oracle_calls``; see :class:`GeometryConfig`).
The oracle ``point`` backend returns whole pixels (it truncates), so figures are large enough that values
measured from those whole pixels stay within the tolerance: segments and arms are at least ``min_length``
(100) pixels, which bounds the error by sqrt(2)/100 = 1.4% for lengths and 2 * sqrt(2)/100 rad = 1.6 degrees
for angles, and polygons keep a truncation error bound under 2.5% of their area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from vgym.errors import InvalidConfigError
from vgym.rewards import numeric_reward
from vgym.task import Sample, Solution, Task, register_task, sample_seed

__all__ = ["TASK_NAME", "KINDS", "TOLERANCES", "LEVELS", "Level", "GeometryConfig", "GeometryTask"]

TASK_NAME = "geometry"

KINDS: tuple[str, ...] = ("length", "angle", "area")
"""Question kinds, drawn uniformly."""

TOLERANCES: dict[str, dict[str, float]] = {
    "length": {"rel_tol": 0.02},
    "angle": {"abs_tol": 2.0},
    "area": {"rel_tol": 0.03},
}
"""Keyword arguments of :func:`vgym.rewards.numeric_reward` per kind."""

LABELS = "BCDEFGHJKLMNPRSTUVWXYZ"
"""Point labels (I, O and Q are skipped: they read as 1, 0 and O)."""

_UNITS = {"length": "pixels", "angle": "degrees", "area": "square pixels"}
_MAX_TRIES = 2000  # rejection-sampling cap; the defaults accept a figure within a few dozen tries
_AREA_BOUND = 0.025  # a polygon's truncation error bound stays under this share of its area (tolerance 0.03)
_DOT = 3  # radius in pixels of the dot marking a labelled point
_LABEL_OFFSET = 13.0  # pixels from a point to its label's centre
_FONT, _FONT_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.55
_SHIFT = 4  # fractional bits for sub-pixel drawing (1/16 pixel)


@dataclass(frozen=True)
class Level:
    """Clutter and rendering of one difficulty."""

    extra_points: int
    """Labelled points that belong to no question figure."""
    extra_segments: int
    """Segments between random labelled points (question points included) that are not part of the figure."""
    clutter_lines: int
    """Unlabelled straight lines across the canvas."""
    thickness: int
    """Line width in pixels."""
    subpixel: bool
    """Whether points sit at non-integer coordinates."""


LEVELS: dict[int, Level] = {
    0: Level(extra_points=1, extra_segments=0, clutter_lines=0, thickness=2, subpixel=False),
    1: Level(extra_points=3, extra_segments=2, clutter_lines=2, thickness=2, subpixel=False),
    2: Level(extra_points=5, extra_segments=4, clutter_lines=4, thickness=1, subpixel=True),
}
"""Clutter per difficulty."""


@dataclass(frozen=True)
class GeometryConfig:
    """Scene generation settings."""

    difficulty: int = 0
    """0, 1 or 2: more clutter, thinner lines and (at 2) non-integer coordinates; see :data:`LEVELS`."""
    width: int = 512
    """Canvas width in pixels."""
    height: int = 512
    """Canvas height in pixels."""
    margin: int = 30
    """Labelled points keep at least this many pixels from the canvas edge (room for their labels)."""
    min_length: float = 100.0
    """Shortest segment and angle arm in pixels; >= 100 keeps values measured from the whole pixels the point
    tool returns within the tolerance (see the module docstring). Polygons are kept large by their own
    bound."""
    min_gap: float = 40.0
    """Smallest distance in pixels between two labelled points (labels must not collide)."""
    oracle_calls: int = 3
    """Most tool calls in the oracle plan; the env's default ``max_turns`` (4) leaves 3 before the answer. The
    plan points at every label the question names, then measures, when that fits (a length: 3 calls; an angle
    or a triangle: 4; a quadrilateral: 5); otherwise it measures at once with the exact coordinates it
    knows."""

    def __post_init__(self) -> None:
        if self.difficulty not in LEVELS:
            raise InvalidConfigError(f"difficulty must be 0, 1 or 2, got {self.difficulty}")
        if self.min_length < 100 or self.min_gap < 2 * _LABEL_OFFSET:
            raise InvalidConfigError(
                f"need min_length >= 100 (truncated tool points stay within tolerance) and min_gap >= "
                f"{2 * _LABEL_OFFSET:g} (labels do not collide); got min_length={self.min_length}, "
                f"min_gap={self.min_gap}"
            )
        if self.oracle_calls < 1:
            raise InvalidConfigError(f"oracle_calls must be >= 1 (the measure call), got {self.oracle_calls}")
        if self.margin < 20 or min(self.width, self.height) - 2 * self.margin < 2 * self.min_length:
            raise InvalidConfigError(
                "need margin >= 20 and each canvas side >= 2 * margin + 2 * min_length so figures fit; got "
                f"width={self.width}, height={self.height}, margin={self.margin}, "
                f"min_length={self.min_length}"
            )


class GeometryTask(Task):
    """Measure a length, an angle or an area on a labelled diagram (see the module docstring)."""

    name = TASK_NAME
    config_cls = GeometryConfig
    default_tools = ("point", "measure")
    config: GeometryConfig

    def sample(self, split: str, index: int, seed: int) -> Sample:
        cfg, level = self.config, LEVELS[self.config.difficulty]
        rng = sample_seed(seed, split, index)
        kind = KINDS[int(rng.integers(len(KINDS)))]
        figure = self._figure(rng, kind)
        # an angle's (end, vertex, end): its two arms
        ends = list(zip(range(len(figure)), range(1, len(figure))))
        # close the polygon (or the angle's triangle)
        if kind == "area" or (kind == "angle" and rng.random() < 0.5):
            ends.append((len(figure) - 1, 0))
        points = list(figure) + self._extra_points(rng, figure, [(figure[i], figure[j]) for i, j in ends],
                                                   level.extra_points)
        labels = [LABELS[i] for i in rng.permutation(len(points))]
        named = dict(zip(labels, points))
        names = labels[: len(figure)]  # the question's points, in figure order
        value = _value(kind, figure)
        edges = [(names[i], names[j]) for i, j in ends]
        extra = [
            tuple(str(v) for v in rng.choice(labels, 2, replace=False)) for _ in range(level.extra_segments)
        ]
        lines = [self._clutter_line(rng) for _ in range(level.clutter_lines)]
        centre = (sum(p[0] for p in figure) / len(figure), sum(p[1] for p in figure) / len(figure))
        image = _render(cfg, level, named, [(named[a], named[b]) for a, b in edges + extra], lines, centre)

        if kind == "length":
            question = f"How long is segment {names[0]}{names[1]} in pixels?"
        elif kind == "angle":
            question = f"What is angle {''.join(names)} in degrees?"
        else:
            shape = "triangle" if len(names) == 3 else "quadrilateral"
            question = f"What is the area of {shape} {''.join(names)} in square pixels?"
        objects = [{"name": f"point {lab}", "box": _box(named[lab], cfg), "point": list(named[lab])}
                   for lab in sorted(named)]
        return Sample(
            id=f"{TASK_NAME}/{split}/{seed}/{index}",
            task=TASK_NAME,
            split=split,
            index=index,
            question=question,
            images=(image,),
            answer=f"{value:.2f}",
            metadata={
                "kind": kind,
                "labels": names,
                "value": value,
                "tolerance": dict(TOLERANCES[kind]),
                "points": {lab: list(p) for lab, p in sorted(named.items())},
                "segments": [list(e) for e in edges + extra],
                "clutter_lines": [[list(p), list(q)] for p, q in lines],
                "objects": objects,
            },
        )

    def score(self, sample: Sample, answer: str) -> float:
        # "px^2" and "px**2" are unit spellings, not a second number.
        text = answer.replace("**2", "").replace("^2", "")
        return numeric_reward(text, float(sample.metadata["value"]), **sample.metadata["tolerance"])

    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        kind = sample.metadata["kind"]
        tol = TOLERANCES[kind]
        within = f"{tol['abs_tol']:g} degrees" if "abs_tol" in tol else f"{tol['rel_tol']:.0%}"
        return (
            f"{sample.question} Coordinates are pixels of the {sample.images[0].shape[1]}x"
            f"{sample.images[0].shape[0]} image. Answer with one number in {_UNITS[kind]}; answers within "
            f"{within} count as correct."
        )

    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        if not tools_enabled:
            return Solution(tool_calls=(), answer=sample.answer)
        names, points = sample.metadata["labels"], sample.metadata["points"]
        kind = {"length": "distance"}.get(sample.metadata["kind"], sample.metadata["kind"])
        calls = [("point", {"query": f"point {lab}"}) for lab in names]
        if len(calls) + 1 > self.config.oracle_calls:
            calls = []
        calls.append(("measure", {"kind": kind, "points": [list(points[lab]) for lab in names]}))
        return Solution(tool_calls=tuple(calls), answer=sample.answer)

    # ---------------------------------------------------------------- generation

    def _coord(self, rng: np.random.Generator, lo: float, hi: float) -> float:
        v = float(rng.uniform(lo, hi))
        return v if LEVELS[self.config.difficulty].subpixel else float(round(v))

    def _snap(self, p: np.ndarray) -> tuple[float, float]:
        if LEVELS[self.config.difficulty].subpixel:
            return float(p[0]), float(p[1])
        return float(round(p[0])), float(round(p[1]))

    def _inside(self, p: tuple[float, float]) -> bool:
        m = self.config.margin
        return m <= p[0] <= self.config.width - m and m <= p[1] <= self.config.height - m

    def _random_point(self, rng: np.random.Generator) -> tuple[float, float]:
        m = self.config.margin
        return self._coord(rng, m, self.config.width - m), self._coord(rng, m, self.config.height - m)

    def _figure(self, rng: np.random.Generator, kind: str) -> list[tuple[float, float]]:
        """The question's points in order: segment ends, arm-vertex-arm, or polygon vertices around the
        boundary.

        Raises:
            RuntimeError: if no valid figure is found in ``_MAX_TRIES`` draws (not with valid configs).
        """
        cfg = self.config
        span = min(cfg.width, cfg.height) - 2 * cfg.margin  # the longest segment that fits in every direction
        sides = 2 if kind == "length" else 3 if kind == "angle" or rng.random() < 0.5 else 4
        # The value is drawn before the placement, so lengths and angles spread evenly over their ranges.
        length = rng.uniform(cfg.min_length, 0.9 * span)  # <= 0.9 * span: >= 10% of placements fit
        turn = math.radians(rng.uniform(15, 165)) * rng.choice([-1, 1])
        for _ in range(_MAX_TRIES):
            if kind == "area":  # vertices sorted around their centroid: a convex polygon's boundary order
                pts = [self._random_point(rng) for _ in range(sides)]
                cx, cy = sum(p[0] for p in pts) / sides, sum(p[1] for p in pts) / sides
                pts.sort(key=lambda p: math.atan2(p[1] - cy, p[0] - cx))
            else:
                start, heading = np.array(self._random_point(rng)), rng.uniform(0, 2 * math.pi)
                if kind == "length":
                    pts = [start, start + length * np.array([math.cos(heading), math.sin(heading)])]
                else:  # end, vertex, end; arms of random lengths
                    arms = rng.uniform(cfg.min_length, max(cfg.min_length, 0.75 * span), 2)
                    ends = [start + r * np.array([math.cos(h), math.sin(h)])
                            for r, h in zip(arms, (heading, heading + turn))]
                    pts = [ends[0], start, ends[1]]
                pts = [self._snap(p) for p in pts]
            if all(self._inside(p) for p in pts) and _valid(kind, pts, cfg):
                return pts
        raise RuntimeError(f"no valid {kind} figure in {_MAX_TRIES} tries with {cfg}")

    def _extra_points(self, rng: np.random.Generator, taken: list[tuple[float, float]], segments: list,
                      n: int) -> list[tuple[float, float]]:
        """Up to ``n`` clutter points, ``min_gap`` from every point and half of it from the figure's
        segments."""
        out: list[tuple[float, float]] = []
        for _ in range(_MAX_TRIES):
            if len(out) == n:
                break
            p = self._random_point(rng)
            if (all(math.dist(p, q) >= self.config.min_gap for q in taken + out)
                    and all(_segment_distance(p, a, b) >= self.config.min_gap / 2 for a, b in segments)):
                out.append(p)
        return out  # fewer than n only on a crowded canvas; the question's points are unaffected

    def _clutter_line(self, rng: np.random.Generator) -> tuple[tuple[float, float], tuple[float, float]]:
        """Ends of a line through a random canvas point at a random angle, reaching past the canvas."""
        c = np.array([rng.uniform(0, self.config.width), rng.uniform(0, self.config.height)])
        a = rng.uniform(0, math.pi)
        d = (self.config.width + self.config.height) * np.array([math.cos(a), math.sin(a)])
        return (float((c - d)[0]), float((c - d)[1])), (float((c + d)[0]), float((c + d)[1]))


def _angle(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> float:
    """Angle ABC at ``b`` in degrees, in [0, 180]."""
    u, v = (a[0] - b[0], a[1] - b[1]), (c[0] - b[0], c[1] - b[1])
    return math.degrees(math.atan2(abs(u[0] * v[1] - u[1] * v[0]), u[0] * v[0] + u[1] * v[1]))


def _area(pts: list[tuple[float, float]]) -> float:
    """Shoelace area of a simple polygon."""
    n = len(pts)
    return abs(sum(pts[i][0] * pts[(i + 1) % n][1] - pts[(i + 1) % n][0] * pts[i][1] for i in range(n))) / 2


def _value(kind: str, pts: list[tuple[float, float]]) -> float:
    if kind == "length":
        return math.dist(pts[0], pts[1])
    if kind == "angle":
        return _angle(*pts)
    return _area(pts)


def _valid(kind: str, pts: list[tuple[float, float]], cfg: GeometryConfig) -> bool:
    """Whether a figure is legible and answerable from the truncated points the point tool returns."""
    n = len(pts)
    if any(math.dist(p, q) < cfg.min_gap for i, p in enumerate(pts) for q in pts[i + 1:]):
        return False
    if kind == "length":
        return math.dist(*pts) >= cfg.min_length
    if kind == "angle":
        return (
            min(math.dist(pts[0], pts[1]), math.dist(pts[2], pts[1])) >= cfg.min_length
            and 15 <= _angle(*pts) <= 165
        )
    # Area (vertices in boundary order): convex, every interior angle in [30, 150] degrees, and truncating
    # each
    # vertex by < 1 px per axis moves the area by < _AREA_BOUND of it (which also keeps polygons large).
    angles = [_angle(pts[i - 1], pts[i], pts[(i + 1) % n]) for i in range(n)]
    # convex, no slivers
    if abs(sum(angles) - 180 * (n - 2)) > 1e-6 or not all(30 <= a <= 150 for a in angles):
        return False
    # Area is translation invariant, so truncating every vertex by a vector in [0, 1)^2 moves the area as much
    # as
    # keeping one vertex k fixed and moving the others by differences of norm < sqrt(2). d(area)/d(vertex i)
    # has
    # norm |p[i+1] - p[i-1]| / 2, and the quadratic remainder, half a sum of n cross products of moves, is <
    # n.
    grads = [math.dist(pts[(i + 1) % n], pts[i - 1]) / 2 for i in range(n)]
    bound = math.sqrt(2) * (sum(grads) - max(grads)) + n
    return bound <= _AREA_BOUND * _area(pts)


def _segment_distance(p: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance from ``p`` to the segment ``ab``."""
    d = (b[0] - a[0], b[1] - a[1])
    t = min(1.0, max(0.0, ((p[0] - a[0]) * d[0] + (p[1] - a[1]) * d[1]) / (d[0] ** 2 + d[1] ** 2)))
    return math.dist(p, (a[0] + t * d[0], a[1] + t * d[1]))


def _box(p: tuple[float, float], cfg: GeometryConfig) -> list[int]:
    """Whole-pixel box around a point's dot (x2/y2 exclusive), inside the canvas."""
    x, y = int(math.floor(p[0])), int(math.floor(p[1]))
    return [max(0, x - _DOT), max(0, y - _DOT), min(cfg.width, x + _DOT + 2), min(cfg.height, y + _DOT + 2)]


def _fixed(p: tuple[float, float]) -> tuple[int, int]:
    """Fixed-point pixel coordinates for OpenCV drawing with ``shift=_SHIFT``."""
    return int(round(p[0] * (1 << _SHIFT))), int(round(p[1] * (1 << _SHIFT)))


def _render(cfg: GeometryConfig, level: Level, named: dict, segments: list, lines: list,
            centre: tuple[float, float]) -> np.ndarray:
    """White canvas: clutter lines, segments, then dots and labels, all black and anti-aliased (RGB uint8).

    Each label sits ``_LABEL_OFFSET`` pixels from its point on the side away from ``centre`` (the figure's
    centroid, so labels fall outside the figure)."""
    image = np.full((cfg.height, cfg.width, 3), 255, dtype=np.uint8)
    black = (0, 0, 0)
    for p, q in lines + segments:
        cv2.line(image, _fixed(p), _fixed(q), black, level.thickness, cv2.LINE_AA, _SHIFT)
    cx, cy = centre
    for label, (x, y) in named.items():
        cv2.circle(image, _fixed((x, y)), _DOT << _SHIFT, black, -1, cv2.LINE_AA, _SHIFT)
        away = math.atan2(y - cy, x - cx)
        (tw, th), _ = cv2.getTextSize(label, _FONT, _FONT_SCALE, 1)
        lx = min(max(x + _LABEL_OFFSET * math.cos(away) - tw / 2, 0), cfg.width - tw)
        ly = min(max(y + _LABEL_OFFSET * math.sin(away) + th / 2, th), cfg.height - 1)
        cv2.putText(image, label, (int(lx), int(ly)), _FONT, _FONT_SCALE, black, 1, cv2.LINE_AA)
    return image


register_task(GeometryTask)
