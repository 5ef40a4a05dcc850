"""Video temporal grounding: find when one event happens in a short synthetic clip and answer
``[start, end]``.

Contents: :data:`TASK_NAME`, :data:`KINDS`, :class:`VideoGroundingConfig`, :class:`VideoGroundingTask`. The
shape-scene renderer and its tables live in :mod:`vgym.data.shape_scenes`, the clip cache in
:mod:`vgym.data.clips`.

A clip (224×168 at 10 fps, 6/8/10 s by difficulty) shows coloured shapes (ball, square, triangle) on a dark
background. Several events happen at known times, each on its own object (or, for flashes, the whole screen):

- ``appear``: the object is on screen only during the interval ("When is the red ball visible?");
- ``move``: the object rests, glides 56 px left/right/up/down during the interval, then rests again ("When
  does the blue square move left?");
- ``flash``: the background turns a colour during the interval ("When does the screen flash green?").

Every object is a unique (colour, shape) and has at most one event, and flash colours are unique, so the
queried event happens exactly once. The other events are distractors (possibly overlapping in time), plus a
few static objects. Event boundaries lie on frame boundaries, so the gold interval is exact: ``appear`` and
``flash`` show in frames ``i0 .. i1 - 1``, i.e. ``[i0 / fps, i1 / fps]`` (frame ``i`` spans
``[i / fps, (i + 1) / fps)``); a ``move`` is continuous in time, sampled at frame starts: frame ``i0`` is the
last one at rest before it and frame ``i1`` the first at rest after it.

The model sees only ``overview_frames`` (4) evenly spaced frames of the clip (the frames ``sample_frames``
picks over the whole clip), so a short event is usually missed and its boundaries are never visible: the frame
tools ``sample_frames`` / ``get_frame`` read ``Sample.video``, an mp4 written deterministically to
``clip_dir`` (named by a hash of task, version, config, split, seed and index; written under a temporary name
and ``os.replace``-d into place, reused when present). Reward: temporal IoU
(:func:`vgym.rewards.interval_iou_reward`).

Difficulty (clip seconds / event length in frames / distractor events / static objects):
    0 — 6 s / 15–30 / 1 / 1;  1 — 8 s / 8–20 / 3 / 2;  2 — 10 s / 3–10 / 5 / 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vgym.data.clips import clip_path, ensure_clip, overview_indices
from vgym.data.shape_scenes import COLOURS, DIRECTIONS, FLASH_COLOURS, GRID, SHAPES, render_frame
from vgym.errors import InvalidConfigError
from vgym.rewards import interval_iou_reward
from vgym.task import Sample, Solution, Task, register_task, sample_seed

__all__ = ["TASK_NAME", "KINDS", "VideoGroundingConfig", "VideoGroundingTask"]

TASK_NAME = "video_grounding"

KINDS: tuple[str, ...] = ("appear", "move", "flash")
"""Event kinds; the queried event's kind is uniform over these."""

_LEVELS = {  # difficulty: (seconds, (shortest, longest) event in frames, distractor events, static objects)
    0: (6, (15, 30), 1, 1),
    1: (8, (8, 20), 3, 2),
    2: (10, (3, 10), 5, 2),
}
_RENDER_VERSION = 1  # bump when the pictures change, so cached clips are rewritten under new names


@dataclass(frozen=True)
class VideoGroundingConfig:
    """Clip generation settings."""

    difficulty: int = 0
    """0, 1 or 2: longer clips, shorter events and more distractors (see the module docstring)."""
    fps: int = 10
    """Frames per second, at least 2. The default keeps every boundary at a whole 0.1 s, which the tools'
    2-decimal time stamps show exactly."""
    width: int = 224
    """Frame width in pixels (a multiple of 4, 96 to 640); objects scale with it."""
    height: int = 168
    """Frame height in pixels: 3/4 of ``width`` (4 x 3 square cells)."""
    overview_frames: int = 4
    """Frames of the clip in ``Sample.images``, spread evenly over it (1 to 4; with 4, two 8-frame
    ``sample_frames`` calls fit the env's default budget of 20 images)."""
    clip_dir: str | None = None
    """Folder of the cached mp4 clips; None means ``<tempfile.gettempdir()>/vgym-clips``. Not part of the
    clip's name: the same sample gives the same file name anywhere."""

    def __post_init__(self) -> None:
        if self.difficulty not in _LEVELS:
            raise InvalidConfigError(f"difficulty must be 0, 1 or 2, got {self.difficulty}")
        if not isinstance(self.fps, int) or self.fps < 2:
            raise InvalidConfigError(f"fps must be an int >= 2 (10 by default), got {self.fps!r}")
        if not (96 <= self.width <= 640 and self.width % 4 == 0 and 4 * self.height == 3 * self.width):
            raise InvalidConfigError(
                "need width a multiple of 4 in [96, 640] and height = 3/4 of it (a 4 x 3 grid of square "
                "cells), "
                f"got width={self.width}, height={self.height}"
            )
        if not 1 <= self.overview_frames <= 4:
            raise InvalidConfigError(f"overview_frames must be 1 to 4, got {self.overview_frames}")

    @property
    def seconds(self) -> int:
        """Clip length in seconds at this difficulty."""
        return _LEVELS[self.difficulty][0]

    @property
    def num_frames(self) -> int:
        """Frames in the clip."""
        return self.seconds * self.fps

    @property
    def min_event_frames(self) -> int:
        """Shortest event in frames (the difficulty's range is in frames at 10 fps, scaled to ``fps``)."""
        return max(2, round(_LEVELS[self.difficulty][1][0] * self.fps / 10))

    @property
    def max_event_frames(self) -> int:
        """Longest event in frames."""
        return max(self.min_event_frames, round(_LEVELS[self.difficulty][1][1] * self.fps / 10))


class VideoGroundingTask(Task):
    """Answer when the queried event happens in a synthetic clip (see the module docstring)."""

    name = TASK_NAME
    config_cls = VideoGroundingConfig
    default_tools = ("sample_frames", "get_frame")
    necessary_tools = ("sample_frames", "get_frame")
    config: VideoGroundingConfig

    def plan(self, split: str, index: int, seed: int) -> dict[str, Any]:
        """The clip's description, a pure function of the arguments: everything :func:`render_frame` draws.

        Returns:
            ``{"background": [r, g, b], "objects": [...], "events": [...], "query": 0}``: objects are
            ``{"colour", "shape", "cell": [col, row]}``; events are ``{"kind", "start", "end"}`` in frames
                plus
            ``"object"`` (index) for appear/move, ``"direction"`` for move, ``"colour"`` for flash;
                ``events[0]`` is the
            queried one. JSON-serialisable, cheap (no pixels), so tests can hash thousands.

        Raises:
            InvalidConfigError: for an unknown split or a negative seed or index.
        """
        cfg = self.config
        rng = sample_seed(seed, split, index)
        _, _, n_distractors, n_static = _LEVELS[cfg.difficulty]
        kinds = [KINDS[int(rng.integers(len(KINDS)))] for _ in range(1 + n_distractors)]
        identities = [(c, s) for c in COLOURS for s in SHAPES]
        order = rng.permutation(len(identities))
        flash_names = [str(name) for name in rng.permutation(list(FLASH_COLOURS))]
        free = {(c, r) for c in range(GRID[0]) for r in range(GRID[1])}
        objects: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        flashes: list[tuple[int, int]] = []

        def new_object(cells: list[tuple[int, int]]) -> int:
            colour, shape = identities[order[len(objects)]]
            free.difference_update(cells)
            objects.append({"colour": colour, "shape": shape, "cell": list(cells[0])})
            return len(objects) - 1

        for kind in kinds:
            length = int(rng.integers(cfg.min_event_frames, cfg.max_event_frames + 1))
            start = int(rng.integers(0, cfg.num_frames - length + 1))
            clash = any(start < e + 1 and s < start + length + 1 for s, e in flashes)  # 1-frame gap at least
            # the query's never clashes
            if kind == "flash" and not clash and len(flashes) < len(FLASH_COLOURS):
                flashes.append((start, start + length))
                events.append({"kind": kind, "start": start, "end": start + length,
                               "colour": flash_names[len(flashes) - 1]})
                continue
            # A clashing distractor flash (one background at a time) and a move with no free pair of
            # neighbouring cells become appears.
            cells = sorted(free)
            pairs = [
                (a, d) for a in cells for d, (dx, dy) in DIRECTIONS.items() if (a[0] + dx, a[1] + dy) in free
            ]
            if kind == "move" and pairs:
                (col, row), direction = pairs[int(rng.integers(len(pairs)))]
                dx, dy = DIRECTIONS[direction]
                obj = new_object([(col, row), (col + dx, row + dy)])
                events.append({"kind": kind, "start": start, "end": start + length, "object": obj,
                               "direction": direction})
            elif cells:
                obj = new_object([cells[int(rng.integers(len(cells)))]])
                events.append({"kind": "appear", "start": start, "end": start + length, "object": obj})
        for _ in range(n_static):
            if free:
                cells = sorted(free)
                new_object([cells[int(rng.integers(len(cells)))]])
        background = [int(v) for v in rng.integers(20, 70, 3)]
        return {"background": background, "objects": objects, "events": events, "query": 0}

    def sample(self, split: str, index: int, seed: int) -> Sample:
        return self._sample(
            self.plan(split, index, seed), split, index, seed, self.clip_path(split, index, seed)
        )

    def _sample(self, plan: dict[str, Any], split: str, index: int, seed: int, path: str | None,
                suffix: str = "") -> Sample:
        """The sample of ``plan``, writing its clip to ``path`` unless that file exists (None: no clip)."""
        cfg = self.config
        event = plan["events"][0]
        if path is not None:  # render every frame only when the clip is not cached yet
            ensure_clip(path, lambda: [render_frame(plan, i, cfg) for i in range(cfg.num_frames)], cfg.fps)
        overview = self.overview_indices()
        start_s, end_s = round(event["start"] / cfg.fps, 6), round(event["end"] / cfg.fps, 6)
        return Sample(
            id=f"{TASK_NAME}/{split}/{seed}/{index}{suffix}",
            task=TASK_NAME,
            split=split,
            index=index,
            question=_question(plan),
            images=tuple(render_frame(plan, i, cfg) for i in overview),
            answer=f"[{start_s:.2f}, {end_s:.2f}]",
            metadata={
                "start_s": start_s,
                "end_s": end_s,
                "event": _describe(plan, event),
                "fps": cfg.fps,
                "num_frames": cfg.num_frames,
                "duration_s": cfg.num_frames / cfg.fps,
                "overview_frames": overview,
                "plan": plan,
            },
            video=path,
        )

    def overview_indices(self) -> list[int]:
        """Indices of the frames in ``Sample.images``: those ``sample_frames`` picks over the whole clip
        (:func:`vgym.data.clips.overview_indices`)."""
        return overview_indices(self.config.num_frames, self.config.fps, self.config.overview_frames)

    def counterfactuals(self, sample: Sample) -> list[Sample]:
        """Every other placement of the queried event, at its length, that changes no overview frame.

        An appear or flash event may slide while the same overview frames fall inside it; a move only while
        none does (an overview frame inside a move shows the object part-way, which would change). Every other
        event stays put, so the shown frames are identical while the gold interval moves; moved flashes keep
        the generator's 1-frame gap to other flashes. The class fixes the event's length (see
        :meth:`vgym.task.Task.counterfactuals`). Clips are not written (``video=None``).
        """
        plan = sample.metadata["plan"]
        event = plan["events"][0]
        start, end = event["start"], event["end"]
        length = end - start
        overview = sample.metadata["overview_frames"]
        # Overview frame i shows the event if start <= i < end (appear, flash) or start < i < end (a move is
        # at
        # rest at both ends).
        slack = int(event["kind"] == "move")
        inside = [i for i in overview if start + slack <= i < end]
        if inside and event["kind"] == "move":
            return []
        first = max([i + 1 - slack for i in overview if i < start + slack] + [0])
        last = min([i for i in overview if i >= end] + [self.config.num_frames]) - length
        if inside:
            first, last = max(first, max(inside) - length + 1), min(last, min(inside))
        flashes = [(e["start"], e["end"]) for e in plan["events"][1:] if e["kind"] == "flash"]
        seed = int(sample.id.split("/")[2])
        out = []
        for new_start in range(first, last + 1):
            if new_start == start:
                continue
            if event["kind"] == "flash" and any(
                new_start < e + 1 and s < new_start + length + 1 for s, e in flashes
            ):
                continue
            cf_plan = {**plan, "events": [{**event, "start": new_start, "end": new_start + length},
                                          *plan["events"][1:]]}
            out.append(
                self._sample(cf_plan, sample.split, sample.index, seed, None, suffix=f"/cf{new_start}")
            )
        return out

    def clip_path(self, split: str, index: int, seed: int) -> str:
        """Where :meth:`sample` writes the clip: ``clip_dir`` / ``video_grounding-<hash>.mp4``, the hash of
        the task, its version, the renderer's version, the config (less ``clip_dir``), split, seed and index
        (:func:`vgym.data.clips.clip_path`)."""
        fields = {k: v for k, v in asdict(self.config).items() if k != "clip_dir"}
        return clip_path(TASK_NAME, [self.version, _RENDER_VERSION, fields, split, seed, index],
                         clip_dir=self.config.clip_dir)

    def score(self, sample: Sample, answer: str) -> float:
        return interval_iou_reward(answer, [sample.metadata["start_s"], sample.metadata["end_s"]])

    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        return (f"{sample.question} The images are {len(sample.images)} evenly spaced frames of a "
                f"{sample.metadata['duration_s']:g} s video. Answer the interval in seconds as [start, end].")

    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        if not tools_enabled:
            return Solution(tool_calls=(), answer=sample.answer)
        meta = sample.metadata
        start, end, step = meta["start_s"], meta["end_s"], 1.0 / meta["fps"]
        pad = max(0.25 * (end - start), step)  # 4 frames: one before the event, two inside, one after
        window = {
            "start_s": round(max(0.0, start - pad), 3),
            "end_s": round(min(meta["duration_s"], end + pad), 3),
            "num_frames": 4,
        }
        return Solution(tool_calls=(("sample_frames", window),), answer=sample.answer)


def _describe(plan: dict[str, Any], event: dict[str, Any]) -> str:
    """``"red ball appear"``, ``"blue square move left"``, ``"screen flash green"``."""
    if event["kind"] == "flash":
        return f"screen flash {event['colour']}"
    obj = plan["objects"][event["object"]]
    words = [obj["colour"], obj["shape"], event["kind"]]
    return " ".join(words + [event["direction"]] if event["kind"] == "move" else words)


def _question(plan: dict[str, Any]) -> str:
    event = plan["events"][plan["query"]]
    if event["kind"] == "flash":
        return f"When does the screen flash {event['colour']}?"
    obj = plan["objects"][event["object"]]
    name = f"{obj['colour']} {obj['shape']}"
    if event["kind"] == "appear":
        return f"When is the {name} visible?"
    return f"When does the {name} move {event['direction']}?"


register_task(VideoGroundingTask)
