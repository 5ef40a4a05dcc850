"""Two tools in sequence: the second call's arguments come from the first call's output.

Contents: :data:`TASK_NAME`, :data:`KINDS`, :data:`PATTERNS`, :data:`OPTIONS`, :data:`SCALE_RANGE`,
:data:`CF_RATIO`, :data:`CLIP_SIZE`, :data:`FPS`, :class:`MultiToolConfig`, :class:`MultiToolTask`,
:func:`render_clip_frame`.

Kinds (``MultiToolConfig.kind``; None alternates them by index: even indices ``ground_depth``, odd
``frames_crop``;
a sample is the same whichever way its kind was chosen):

``ground_depth`` — a scene of :mod:`vgym.tasks.depth_3d` (its layouts, renderer and difficulty levels): "How
far from the camera is the red sphere?". Gold: the median of the depth (metres along the optical axis) over
the object's visible pixels (``arrays["masks"]``), within ``depth_rel_tol``. The whole scene is scaled by
``s ~ U(SCALE_RANGE)`` about the camera centre (solids, camera height, wall distance, checker cells): a
pinhole picture of it is the same and every depth is multiplied by ``s``, so metric depth is not recoverable
from the image. The picture is the renderer's unit scene (s = 1) and ``arrays["depth"]`` is its depth times
``s``; a float ray cast of the scaled scene itself (a copy of the depth_3d renderer with every length times s,
run once outside the tests) gave byte-identical pictures for 300 of 300 scenes at random s. Oracle: ``ground``
with the object's name gives its box (the visible pixels' bounding box), ``depth`` with that box reports the
box's median; only objects whose box median is within a quarter of the tolerance of the gold are asked
(occluders or background inside the box never push the reading out). Arrays also hold ``right``, the stereo
view, with ``metadata["stereo"]`` calibrated at the scaled baseline, so the depth tool's stereo backend works
too. Counterfactuals: the same scene at scales ``s · 1.25^k`` inside the range (identical pictures, answers
25% apart).

``frames_crop`` — a :data:`CLIP_SIZE` clip at :data:`FPS` fps (mp4v, cached like video_grounding's) of framed
squares filled with 1- or 2-px patterns (horizontal stripes, vertical stripes, checkered; as visual_search):
the distractors stay the whole clip, the marker shows only during frames ``[start, end)``. "What pattern does
the marker show while it is visible? (A) horizontal stripes (B) vertical stripes (C) checkered". The model
sees ``overview_frames`` evenly spaced frames (the frames ``sample_frames`` picks over the whole clip), none
inside the interval. Oracle: ``sample_frames`` over the interval (2 frames, appended as episode images), then
``crop`` of the first returned image around the marker. Because the clip fits the env's default budget, the
frame tools return the decoded frames at full resolution and ``crop`` zooms pixels the model was already
shown: the crop makes a 10-16 px marker legible to a patch-based model, but it adds no pixel information, so
only ``sample_frames`` is claimed necessary. Counterfactuals: the other two patterns (the overview frames
never show the marker, so they are identical). The pattern is uniform over the three. The oracle's crop box is
in clip pixels, so it needs an env budget of at least 224 x 168 pixels (the default is 224 x 224); below that
the frame tools shrink the frames.

Difficulty (ground_depth as depth_3d; frames_crop clip seconds / marker frames / marker side px / line px /
distractors): 0 — 4 / 12-18 / 16 / 2 / 1;  1 — 6 / 8-14 / 12 / 1 / 2;  2 — 8 / 4-8 / 10 / 1 / 3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from vgym.data.clips import clip_path, ensure_clip, overview_indices, overview_timeline
from vgym.errors import InvalidConfigError
from vgym.rewards import multiple_choice_reward, numeric_reward
from vgym.task import Sample, Solution, Task, register_task, sample_seed
from vgym.tasks.depth_3d import Depth3dConfig, Depth3dTask, Scene, render_view
from vgym.tasks.visual_search import pattern_tile

__all__ = ["TASK_NAME", "KINDS", "PATTERNS", "OPTIONS", "SCALE_RANGE", "CF_RATIO", "CLIP_SIZE", "FPS",
           "MultiToolConfig", "MultiToolTask", "render_clip_frame"]

TASK_NAME = "multi_tool"
KINDS: tuple[str, ...] = ("ground_depth", "frames_crop")
"""Question kinds; see the module docstring."""
PATTERNS: tuple[str, ...] = ("horizontal", "vertical", "checkered")
"""Marker patterns (``pattern_tile`` names), in option order."""
OPTIONS: tuple[str, ...] = ("horizontal stripes", "vertical stripes", "checkered")
"""The lettered options (A), (B), (C) of frames_crop questions, one per pattern."""
SCALE_RANGE = (0.7, 1.4)
"""Range of the ground_depth scene scale ``s`` (uniform)."""
CF_RATIO = 1.25
"""Ratio between the scales of a ground_depth sample and its counterfactuals."""
CLIP_SIZE = (224, 168)
"""frames_crop clip (width, height): within the env's default budget, so the frame tools return full
frames."""
FPS = 10
"""frames_crop frames per second."""
_CELL = 28  # frames_crop squares sit one per cell of a 8 x 6 grid of 28-px cells
_CLIP_LEVELS = {0: (4, (12, 18), 16, 2, 1), 1: (6, (8, 14), 12, 1, 2), 2: (8, (4, 8), 10, 1, 3)}
"""Per difficulty: clip seconds, marker frames (min, max), marker side (px), line width (px), distractors."""
_PALETTE = ((220, 40, 40), (40, 90, 230), (30, 160, 60), (200, 40, 200), (230, 130, 20), (20, 150, 170))
"""Pattern colours (RGB, on white)."""
_RENDER_VERSION = 0  # bump when the clip pictures change, so cached clips are rewritten under new names
_CROP_MARGIN = 4  # pixels around the marker in the oracle's crop


@dataclass(frozen=True)
class MultiToolConfig:
    """Question settings."""

    difficulty: int = 0
    """0, 1 or 2: depth_3d's difficulty for ground_depth; shorter marker intervals, smaller markers and more
    distractors for frames_crop (see the module docstring)."""
    kind: str | None = None
    """One of KINDS, or None to alternate them by sample index (even: ground_depth, odd: frames_crop)."""
    depth_rel_tol: float = 0.1
    """Relative tolerance of ground_depth answers, in [0.02, 0.2): below 0.2 a counterfactual scale (25%
    apart) is always wrong, and at 0.02 or more the tool's 2-decimal reading (a quarter of the tolerance off
    at most) passes."""
    overview_frames: int = 2
    """frames_crop: frames of the clip in ``Sample.images`` (1 to 3), spread evenly; the oracle adds 2 frames
    and a crop, well within the env's default 20 images."""
    clip_dir: str | None = None
    """Folder of the cached frames_crop clips; None means ``<tempfile.gettempdir()>/vgym-clips``."""

    def __post_init__(self) -> None:
        if self.difficulty not in (0, 1, 2):
            raise InvalidConfigError(f"difficulty must be 0, 1 or 2, got {self.difficulty!r}")
        if self.kind is not None and self.kind not in KINDS:
            raise InvalidConfigError(f"kind must be one of {KINDS} or None (alternate), got {self.kind!r}")
        if not 0.02 <= self.depth_rel_tol < 0.2:
            raise InvalidConfigError(f"depth_rel_tol must be in [0.02, 0.2), got {self.depth_rel_tol!r}")
        if self.overview_frames not in (1, 2, 3):
            raise InvalidConfigError(f"overview_frames must be 1, 2 or 3, got {self.overview_frames!r}")


class MultiToolTask(Task):
    """Answer questions that need one tool's output as the next tool's input (see the module docstring)."""

    name = TASK_NAME
    config_cls = MultiToolConfig
    default_tools = ("ground", "depth", "sample_frames", "crop")
    necessary_tools = ("depth", "sample_frames")
    """depth for ground_depth (the scale), sample_frames for frames_crop (the marker is in no shown frame).
    Not crop: the sampled frames reach the model at full resolution, so the crop only zooms (see the module
    docstring)."""
    config: MultiToolConfig

    def __init__(self, config: Any = None) -> None:
        """Args:
        config: a :class:`MultiToolConfig`, a mapping of its fields, or None for defaults.
        """
        super().__init__(config)
        self._depth_task = Depth3dTask(Depth3dConfig(difficulty=self.config.difficulty))

    def kind_of(self, index: int) -> str:
        """The kind of item ``index``: the configured one, else alternating by index."""
        return self.config.kind or KINDS[index % 2]

    def sample(self, split: str, index: int, seed: int) -> Sample:
        if self.kind_of(index) == "ground_depth":
            return self._ground_depth(split, index, seed)
        return self._frames_crop(self.plan(split, index, seed), split, index, seed)

    # ------------------------------------------------------------------------------------------ ground_depth

    def layout(self, split: str, index: int, seed: int) -> tuple[Scene, list[dict], float]:
        """The ground_depth scene of item ``index`` (whatever the configured kind): depth_3d's accepted layout
        and per-solid metadata at unit scale, and the drawn scale ``s``. Cheap (no rendering), so tests can
        hash thousands."""
        scene, objects = self._depth_task.scene(split, index, seed)
        rng = sample_seed(seed, split, index).spawn(2)[0]  # streams of their own: scene() used the parent's
        return scene, objects, float(rng.uniform(*SCALE_RANGE))

    def _ground_depth(self, split: str, index: int, seed: int, scale: float | None = None) -> Sample:
        """Item ``index`` as a ground_depth question; ``scale`` replaces the drawn scale (counterfactuals)."""
        cfg, dcfg = self.config, self._depth_task.config
        scene, objects, drawn = self.layout(split, index, seed)
        rng = sample_seed(seed, split, index).spawn(2)[1]
        s = drawn if scale is None else scale
        rgb, unit_depth, ids = render_view(dcfg, scene.solids)
        right, _, _ = render_view(dcfg, scene.solids, right=True)
        # Objects whose box median (what the depth tool reports) is near the gold; decided at s = 1, so every
        # scale asks the same object.
        candidates = []
        for k, obj in enumerate(objects):
            x1, y1, x2, y2 = obj["box"]
            gold_unit, box_unit = np.median(unit_depth[ids == k]), np.median(unit_depth[y1:y2, x1:x2])
            if abs(box_unit - gold_unit) <= cfg.depth_rel_tol / 4 * gold_unit:
                candidates.append(k)
        if not candidates:  # never seen in 3,000 scenes per difficulty; a bug or a changed renderer
            raise RuntimeError(f"no object of {TASK_NAME} scene {split}/{seed}/{index} has a usable box")
        target = candidates[int(rng.integers(len(candidates)))]
        depth = (unit_depth * s).astype(np.float32)
        gold = float(np.median(depth[ids == target]))
        scaled = [
            {
                **o,
                "depth": o["depth"] * s,
                "size_m": o["size_m"] * s,
                "centre_m": [v * s for v in o["centre_m"]],
            }
            for o in objects
        ]
        name = objects[target]["name"]
        fx, fy, cx, cy = dcfg.intrinsics
        metadata = {"kind": "ground_depth", "seed": seed, "objects": scaled, "target": name,
                    "box": list(objects[target]["box"]), "scale": s, "distance_m": gold,
                    "camera": {"fx": fx, "fy": fy, "cx": cx, "cy": cy},
                    "stereo": {"focal_px": fx, "baseline_m": dcfg.baseline_m * s}}
        masks = ids[None] == np.arange(len(objects))[:, None, None]
        question = (
            f"How far from the camera is the {name}? Give its depth along the camera's viewing direction, "
            "the median over its visible pixels, in metres."
        )
        suffix = "" if scale is None or scale == drawn else f"/scale-{scale:.4f}"
        return Sample(
            id=f"{TASK_NAME}/{split}/{seed}/{index}{suffix}",
            task=TASK_NAME,
            split=split,
            index=index,
            question=question,
            images=(rgb,),
            answer=f"{gold:.2f}",
            metadata=metadata,
            arrays={"depth": depth, "masks": masks, "right": right},
        )

    # ------------------------------------------------------------------------------------------ frames_crop

    def _overview(self, num_frames: int) -> list[int]:
        """The overview frames: those ``sample_frames`` picks for ``overview_frames`` frames over the whole
        clip."""
        return overview_indices(num_frames, FPS, self.config.overview_frames)

    def plan(self, split: str, index: int, seed: int) -> dict[str, Any]:
        """The frames_crop clip of item ``index`` (whatever the configured kind), a pure function of the
        arguments.

        Returns:
            ``{"background": [r, g, b], "squares": [...], "start": i0, "end": i1, "num_frames": n, "side": px,
            "stripe": px}``: squares are ``{"box": [x1, y1, x2, y2], "pattern", "colour": [r, g, b]}``, the
                first
            being the marker (shown in frames ``i0 .. i1 - 1``), the rest distractors (always shown).
            JSON-serialisable and cheap, so tests can hash thousands.
        """
        rng = sample_seed(seed, split, index)
        seconds, (lo, hi), side, stripe, n_distractors = _CLIP_LEVELS[self.config.difficulty]
        num_frames = seconds * FPS
        # The non-empty gaps between overview frames, which the marker must keep to.
        gaps = [
            (a, b) for a, b in overview_timeline(num_frames, FPS, self.config.overview_frames).gaps if b > a
        ]
        length = min(int(rng.integers(lo, hi + 1)), max(b - a for a, b in gaps))
        fitting = [(a, b) for a, b in gaps if b - a >= length]
        a, b = fitting[int(rng.integers(len(fitting)))]
        start = int(rng.integers(a, b - length + 1))
        columns, rows = CLIP_SIZE[0] // _CELL, CLIP_SIZE[1] // _CELL
        cells = rng.permutation(columns * rows)[: 1 + n_distractors]
        squares = []
        for cell in cells.tolist():
            # the 1-px frame stays in the cell
            x = cell % columns * _CELL + int(rng.integers(2, _CELL - side - 1))
            y = cell // columns * _CELL + int(rng.integers(2, _CELL - side - 1))
            squares.append(
                {
                    "box": [x, y, x + side, y + side],
                    "pattern": PATTERNS[int(rng.integers(len(PATTERNS)))],
                    "colour": list(_PALETTE[int(rng.integers(len(_PALETTE)))]),
                }
            )
        return {"background": [int(v) for v in rng.integers(20, 90, 3)], "squares": squares, "start": start,
                "end": start + length, "num_frames": num_frames, "side": side, "stripe": stripe}

    def clip_path(self, plan: dict[str, Any]) -> str:
        """Where the clip of ``plan`` is cached: ``clip_dir / multi_tool-<hash>.mp4``, the hash of the task,
        its version, the renderer's version and the plan (which fixes every pixel;
        :func:`vgym.data.clips.clip_path`)."""
        return clip_path(TASK_NAME, [self.version, _RENDER_VERSION, plan], clip_dir=self.config.clip_dir)

    def _frames_crop(
        self, plan: dict[str, Any], split: str, index: int, seed: int, suffix: str = ""
    ) -> Sample:
        path = self.clip_path(plan)
        ensure_clip(path, lambda: [render_clip_frame(plan, i) for i in range(plan["num_frames"])], FPS)
        overview = self._overview(plan["num_frames"])
        marker = plan["squares"][0]
        gold = PATTERNS.index(marker["pattern"])
        question = ("What pattern does the marker show while it is visible? "
                    + " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(OPTIONS)))
        metadata = {
            "kind": "frames_crop",
            "seed": seed,
            "plan": plan,
            "pattern": marker["pattern"],
            "box": marker["box"],
            "options": list(OPTIONS),
            "gold_index": gold,
            "start_s": plan["start"] / FPS,
            "end_s": plan["end"] / FPS,
            "duration_s": plan["num_frames"] / FPS,
            "fps": FPS,
            "overview_frames": overview,
        }
        return Sample(
            id=f"{TASK_NAME}/{split}/{seed}/{index}{suffix}",
            task=TASK_NAME,
            split=split,
            index=index,
            question=question,
            images=tuple(render_clip_frame(plan, i) for i in overview),
            answer=chr(65 + gold),
            metadata=metadata,
            video=path,
        )

    # ------------------------------------------------------------------------------------------ the contract

    def counterfactuals(self, sample: Sample) -> list[Sample]:
        """ground_depth: the same scene at the scales ``s · 1.25^k`` (k ≠ 0) inside :data:`SCALE_RANGE` (one
        at least: the range spans a factor 2). frames_crop: the marker with each other pattern (clips
        written)."""
        split, index, seed = sample.split, sample.index, sample.metadata["seed"]
        if sample.metadata["kind"] == "ground_depth":
            s, lo, hi = sample.metadata["scale"], *SCALE_RANGE
            scales = [s * CF_RATIO**k for k in range(-4, 5) if k and lo <= s * CF_RATIO**k <= hi]
            return [self._ground_depth(split, index, seed, scale=x) for x in scales]
        out = []
        for pattern in PATTERNS:
            if pattern != sample.metadata["pattern"]:
                plan = json.loads(json.dumps(sample.metadata["plan"]))
                plan["squares"][0]["pattern"] = pattern
                out.append(self._frames_crop(plan, split, index, seed, suffix=f"/cf-{pattern}"))
        return out

    def score(self, sample: Sample, answer: str) -> float:
        meta = sample.metadata
        if meta["kind"] == "ground_depth":
            return numeric_reward(answer, meta["distance_m"], rel_tol=self.config.depth_rel_tol)
        return multiple_choice_reward(answer, meta["options"], meta["gold_index"])

    def answer_choices(self) -> tuple[str, ...] | None:
        return ("A", "B", "C") if self.config.kind == "frames_crop" else None

    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        meta = sample.metadata
        if meta["kind"] == "ground_depth":
            return sample.question + " Answer with one number in metres."
        n = len(sample.images)
        return (
            f"{sample.question} The images are {n} evenly spaced frame{'s' if n > 1 else ''} of a "
            f"{meta['duration_s']:g} s video, taken while the marker is not visible. Answer with the letter."
        )

    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        """ground_depth: ground the object, then the depth of its box (the answer is the tool's 2-decimal
        median). frames_crop: 2 frames over the marker's interval, then a crop of the first around the
        marker."""
        if not tools_enabled:
            return Solution(tool_calls=(), answer=sample.answer)
        meta = sample.metadata
        if meta["kind"] == "ground_depth":
            x1, y1, x2, y2 = meta["box"]
            reading = float(np.median(sample.arrays["depth"][y1:y2, x1:x2]))  # as the depth tool computes it
            return Solution(
                tool_calls=(("ground", {"query": meta["target"]}), ("depth", {"box": meta["box"]})),
                answer=f"{reading:.2f}",
            )
        x1, y1, x2, y2 = meta["box"]
        m, (width, height) = _CROP_MARGIN, CLIP_SIZE
        box = [max(0, x1 - m), max(0, y1 - m), min(width, x2 + m), min(height, y2 + m)]
        frames = {"start_s": meta["start_s"], "end_s": meta["end_s"], "num_frames": 2}
        crop = {"image_index": len(sample.images), "box": box}  # the first frame sample_frames appends
        return Solution(tool_calls=(("sample_frames", frames), ("crop", crop)), answer=sample.answer)


def render_clip_frame(plan: dict[str, Any], index: int) -> np.ndarray:
    """Frame ``index`` of the frames_crop clip ``plan`` (see :meth:`MultiToolTask.plan`): RGB uint8 (H, W, 3).

    Every square has a 1-px black frame; the marker (``squares[0]``) is drawn only in frames ``[start, end)``.
    """
    image = np.empty((CLIP_SIZE[1], CLIP_SIZE[0], 3), np.uint8)
    image[:] = plan["background"]
    for k, square in enumerate(plan["squares"]):
        if k == 0 and not plan["start"] <= index < plan["end"]:
            continue
        x1, y1, x2, y2 = square["box"]
        image[y1 - 1 : y2 + 1, x1 - 1 : x2 + 1] = 0
        image[y1:y2, x1:x2] = pattern_tile(
            square["pattern"], x2 - x1, tuple(square["colour"]), plan["stripe"]
        )
    return image


register_task(MultiToolTask)
