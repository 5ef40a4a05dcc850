"""Procedural shape scenes: the pictures and plan pieces the synthetic video tasks (video_grounding, video_qa)
share.

Contents: :data:`SHAPES`, :data:`COLOURS`, :data:`FLASH_COLOURS`, :data:`DIRECTIONS`, :data:`GRID`,
:class:`FrameSize`, :func:`render_frame`, :class:`Scene`.

A *plan* is a JSON-serialisable description of a clip (no pixels):
``{"background": [r, g, b], "objects": [...], "events": [...], ...}``. Objects are
``{"colour", "shape", "cell": [col, row]}`` on a 4 x 3 grid of square cells (:data:`GRID`); events are
``{"kind", "start", "end"}`` in frames (half-open ``[start, end)``) plus ``"object"`` (an index into
``objects``) for ``appear`` / ``move``, ``"direction"`` (a :data:`DIRECTIONS` key) for ``move`` and
``"colour"`` (a :data:`FLASH_COLOURS` key) for ``flash``. Other keys are ignored by the renderer.

Contracts: :func:`render_frame` is a pure function of (plan, index, width, height): the same plan always gives
the same bytes, so clips can be cached under a hash of their plan. Changing what it draws changes every cached
clip: bump the tasks' ``_RENDER_VERSION`` with it. :class:`Scene` draws every random choice from the generator
it is given, in call order, so a plan is a pure function of that generator's seed.
"""

from __future__ import annotations

from typing import Any, Protocol

import cv2
import numpy as np

from vgym.data.clips import OverviewTimeline

__all__ = ["SHAPES", "COLOURS", "FLASH_COLOURS", "DIRECTIONS", "GRID", "FrameSize", "render_frame", "Scene"]

SHAPES: tuple[str, ...] = ("ball", "square", "triangle")
"""Object shapes."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "blue": (40, 80, 240),
    "yellow": (240, 220, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 220, 230),
    "orange": (245, 140, 20),
}
"""Object colours (RGB); objects get a black outline so they stay visible during any flash."""

FLASH_COLOURS: dict[str, tuple[int, int, int]] = {
    "green": (40, 200, 60),
    "white": (245, 245, 245),
    "purple": (130, 50, 200),
    "pink": (255, 150, 190),
}
"""Background colours of ``flash`` events (RGB)."""

DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
"""Move directions as (column, row) steps of one grid cell."""

GRID: tuple[int, int] = (4, 3)
"""(columns, rows) of cells an object rests in; a move spans two neighbouring cells."""

# row by row: Scene's cell pool is permuted from it
_CELLS = [(c, r) for r in range(GRID[1]) for c in range(GRID[0])]


class FrameSize(Protocol):
    """Anything with a frame ``width`` and ``height`` in pixels (the video tasks' configs)."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...


def render_frame(plan: dict[str, Any], index: int, config: FrameSize) -> np.ndarray:
    """Frame ``index`` of the clip described by ``plan`` (the schema in the module docstring).

    Flashes fill the background during frames ``[start, end)`` (the last listed wins where two overlap);
    appearing objects are drawn only then; a moving object sits at
    ``cell + direction * clip((index - start) / (end - start), 0, 1)`` cells. Objects are drawn in list order,
    a ``width // 4``-px cell each, radius 5/14 of a cell.

    Args:
        plan: the clip's description.
        index: the frame, 0-based (frames outside every event show the resting scene).
        config: the frame size; ``width`` must be 4/3 of ``height`` for square cells.

    Returns:
        RGB uint8 array (H, W, 3), freshly allocated.
    """
    cfg = config
    background = plan["background"]
    for event in plan["events"]:
        if event["kind"] == "flash" and event["start"] <= index < event["end"]:
            background = FLASH_COLOURS[event["colour"]]
    image = np.empty((cfg.height, cfg.width, 3), np.uint8)
    image[:] = background
    events = {e["object"]: e for e in plan["events"] if "object" in e}
    cell = cfg.width // GRID[0]
    radius = cell * 5 // 14  # 20 px at the default 56-px cells
    for i, obj in enumerate(plan["objects"]):
        col, row = obj["cell"]
        event = events.get(i)
        if event and event["kind"] == "appear" and not event["start"] <= index < event["end"]:
            continue
        if event and event["kind"] == "move":
            dx, dy = DIRECTIONS[event["direction"]]
            f = min(1.0, max(0.0, (index - event["start"]) / (event["end"] - event["start"])))
            col, row = col + f * dx, row + f * dy
        cx, cy = round((col + 0.5) * cell), round((row + 0.5) * cell)
        _draw_shape(image, obj["shape"], (cx, cy), radius, COLOURS[obj["colour"]])
    return image


def _draw_shape(
    image: np.ndarray, shape: str, centre: tuple[int, int], r: int, colour: tuple[int, int, int]
) -> None:
    """A filled ``shape`` of radius ``r`` with a 2-px black outline."""
    cx, cy = centre
    if shape == "ball":
        cv2.circle(image, centre, r, (0, 0, 0), -1, cv2.LINE_AA)
        cv2.circle(image, centre, r - 2, colour, -1, cv2.LINE_AA)
        return
    if shape == "square":
        s = r * 4 // 5
        points = np.array([[cx - s, cy - s], [cx + s, cy - s], [cx + s, cy + s], [cx - s, cy + s]], np.int32)
    else:  # triangle, apex up
        points = np.array([[cx, cy - r], [cx + r, cy + r * 3 // 4], [cx - r, cy + r * 3 // 4]], np.int32)
    cv2.fillPoly(image, [points], colour, cv2.LINE_AA)
    cv2.polylines(image, [points], True, (0, 0, 0), 2, cv2.LINE_AA)


class Scene:
    """A plan under construction for a gap-hidden video task (video_qa): objects, events, pools and the frames
    no further flash may touch.

    Each object identity (colour, shape), cell and flash colour is popped from a pool shuffled at
    construction, so each is used once (flash colours by :meth:`subject` only; distractor flashes pick from
    what is left). Frames of slots and flashes are *blocked*: :meth:`distractors` keeps its flashes a frame
    away from them.

    Args:
        rng: the only source of randomness; the construction draws three permutations from it.
        timeline: the clip's overview frames, gaps and probe frames
            (:func:`vgym.data.clips.overview_timeline`).
        lengths: shortest and longest event in frames (both >= 1).
        look_alike: probability in [0, 1] that a slot holds a look-alike (read by the task's planners).
    """

    def __init__(self, rng: np.random.Generator, timeline: OverviewTimeline, *, lengths: tuple[int, int],
                 look_alike: float) -> None:
        self.rng, self.timeline, self.lengths, self.look_alike = rng, timeline, lengths, look_alike
        identities = [(c, s) for c in COLOURS for s in SHAPES]
        self.identities = [identities[i] for i in rng.permutation(len(identities))]  # popped: each used once
        self.cells = [_CELLS[i] for i in rng.permutation(len(_CELLS))]  # popped: one object identity per cell
        self.flash_colours = [str(c) for c in rng.permutation(list(FLASH_COLOURS))]
        self.objects: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.blocked: set[int] = set()

    def length(self) -> int:
        """A random event length in frames, uniform over ``lengths``."""
        return int(self.rng.integers(self.lengths[0], self.lengths[1] + 1))

    def pick(self, options: list[Any]) -> Any:
        """A uniformly random element of the non-empty ``options``."""
        return options[int(self.rng.integers(len(options)))]

    def slot(self, gap: tuple[int, int], must: list[int]) -> list[int]:
        """A random interval ``[start, end]`` inside ``gap`` holding every frame of ``must``; blocked for
        distractor flashes."""
        lo, hi = gap
        first, last = (min(must), max(must)) if must else (hi - 1, lo)
        length = min(max(self.length(), last - first + 1), hi - lo)
        start = int(self.rng.integers(max(lo, last - length + 1), min(first, hi - length) + 1))
        self.blocked.update(range(start, start + length))
        return [start, start + length]

    def inner_slots(self) -> list[list[int]]:
        """One slot per inner gap, around the frames the oracle's call returns there."""
        return [self.slot(self.timeline.gaps[g + 1], probes) for g, probes in enumerate(self.timeline.probes)]

    def flash(self, interval: list[int], colour: str) -> None:
        """A flash event of ``colour`` during ``interval``; its frames become blocked."""
        self.events.append({"kind": "flash", "start": interval[0], "end": interval[1], "colour": colour})
        self.blocked.update(range(*interval))

    def new_object(self) -> int:
        """A new object, its identity and cell taken from the pools; its index."""
        colour, shape = self.identities.pop()
        self.objects.append({"colour": colour, "shape": shape, "cell": list(self.cells.pop())})
        return len(self.objects) - 1

    def appear(self, interval: list[int]) -> None:
        """A new object on screen during ``interval``."""
        self.events.append(
            {"kind": "appear", "start": interval[0], "end": interval[1], "object": self.new_object()}
        )

    def distractors(self, count: int) -> None:
        """``count`` flashes (colours left in the pool, a frame away from slots and flashes) or
        appearances."""
        for _ in range(count):
            length = self.length()
            if self.rng.random() < 0.5:
                starts = [s for lo, hi in self.timeline.gaps for s in range(lo, hi - length + 1)
                          if self.blocked.isdisjoint(range(s - 1, s + length + 1))]
                if starts:
                    start = self.pick(starts)
                    self.flash([start, start + length], self.pick(self.flash_colours))
                    continue
            lo, hi = self.pick(self.timeline.gaps)
            length = min(length, hi - lo)
            start = int(self.rng.integers(lo, hi - length + 1))
            self.appear([start, start + length])

    def statics(self, count: int) -> None:
        """``count`` new objects on screen for the whole clip."""
        for _ in range(count):
            self.new_object()

    def subject(self) -> dict[str, Any]:
        """A question's subject, taken out of the pools: ``{"kind": "flash", "colour"}`` or
        ``{"kind": "appear", "colour", "shape", "cell"}``, each with probability 1/2."""
        if self.rng.random() < 0.5:
            return {"kind": "flash", "colour": self.flash_colours.pop()}
        colour, shape = self.identities.pop()
        return {"kind": "appear", "colour": colour, "shape": shape, "cell": list(self.cells.pop())}
