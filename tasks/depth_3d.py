"""3D spatial reasoning with depth: which object is nearer, the depth order of three, or how far apart two
are.

Contents: :data:`TASK_NAME`, :data:`QUESTIONS`, :data:`COLOURS`, :data:`SHAPES`, :class:`Depth3dConfig`,
:class:`Solid`, :class:`Scene`, :class:`Depth3dTask`, :func:`render_view`.

A checkered ground plane and back wall (``WALL_Z_M`` ahead) with solids standing on the ground: spheres, cubes
and upright cylinders, each of its own colour, so names such as "red sphere" are unique. A pinhole camera
(``fx = fy = focal_px``, ``cx = (W - 1) / 2``, ``cy = (H - 1) / 2``; pixel ``(x, y)`` at depth ``Z`` is the
camera point ``((x - cx) Z / fx, (y - cy) Z / fy, Z)``) ``CAMERA_HEIGHT_M`` up and pitched ``PITCH_DEG`` down
sees it. Rendering is numpy ray casting (ray–sphere, ray–box slabs, ray–cylinder) with Lambert shading and
mild checker textures (for stereo matching). Arrays: ``depth`` (exact, metres along the optical axis),
``masks`` (visible pixels per object) and ``right``, the right view of a rectified pair (camera shifted
``baseline_m`` along its x axis).

Questions (``Depth3dConfig.question``): closer — "Which is closer to the camera, the red sphere or the blue
box?" (A/B or the name; chance 1/2); order — three named objects from nearest to farthest (six lettered
orders, chance 1/6); distance — metres between two objects' centres (numeric, within ``distance_rel_tol``).

Relations are unambiguous: any two solids' centre depths differ by ``min_gap_m`` (1.5 / 1.0 / 0.5 m by
difficulty), and their centres' ranges and the depths at their ``metadata["objects"]`` points (visible pixels)
agree in order, the latter by half the gap. For distance questions the tool estimate (both points
back-projected with their depths) is within half the tolerance. Difficulty: 0 — only the asked objects, one
size, fully visible; 1 — one or two more, sizes 0.25–0.45 m, 70% visible; 2 — two or three more, sizes 0.2–0.6
m (apparent size misleads), 40%.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np

from vgym.errors import InvalidConfigError
from vgym.rewards import multiple_choice_reward, numeric_reward
from vgym.task import Sample, Solution, Task, register_task, sample_seed

__all__ = ["TASK_NAME", "QUESTIONS", "COLOURS", "SHAPES", "Depth3dConfig", "Solid", "Scene", "Depth3dTask",
           "render_view"]

TASK_NAME = "depth_3d"
QUESTIONS: tuple[str, ...] = ("closer", "order", "distance")
"""Question kinds; see the module docstring."""
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 70, 230),
    "yellow": (235, 215, 30),
    "magenta": (215, 40, 215),
    "cyan": (30, 210, 220),
}
"""Object colours (RGB albedo); each appears at most once per scene."""
SHAPES: tuple[str, ...] = ("sphere", "box", "cylinder")
"""Solid kinds; ``size`` is a sphere's radius, half a cube's side, a cylinder's radius and half its height."""

CAMERA_HEIGHT_M, PITCH_DEG, WALL_Z_M = 1.6, 10.0, 14.0
"""Camera height above the ground, downward pitch, and the back wall's distance (world z) from the camera."""
Z_RANGE_M = (3.0, 11.0)
"""Range of the solids' world z (ground distance ahead of the camera)."""
MIN_PIXELS = 40
"""Fewest pixels a solid covers (unoccluded) in the left view."""
_LEVELS = {
    0: ((0, 0), 1.5, (0.35, 0.35), 0.9),
    1: ((1, 2), 1.0, (0.25, 0.45), 0.7),
    2: ((2, 3), 0.5, (0.2, 0.6), 0.4),
}
"""Per difficulty: extra solids (min, max), min centre-depth gap (m), size range (m), min visible fraction."""
_LIGHT, _MAX_TRIES = np.array([-0.5, 1.0, -0.6]) / np.linalg.norm([-0.5, 1.0, -0.6]), 200


@dataclass(frozen=True)
class Depth3dConfig:
    """Scene and question settings."""

    difficulty: int = 0
    """0, 1 or 2: more distractors, smaller depth gaps, varied sizes and occlusion (see the module
    docstring)."""
    question: str = "closer"
    """One of QUESTIONS: "closer" (A/B), "order" (A–F) or "distance" (metres)."""
    width: int = 320
    """Image width in pixels (160..1280)."""
    height: int = 240
    """Image height in pixels (``width / 2`` .. ``width``)."""
    focal_px: float = 260.0
    """Focal length fx = fy in pixels, from ``0.5 * width`` (horizontal field of view 90°) to ``1.5 * height``
    (vertical field of view 37°, so the ground from 3 m to the far solids stays in view)."""
    baseline_m: float = 0.2
    """Stereo baseline in metres (0, 1]: disparity = focal_px * baseline_m / depth (17 px at 3 m by
    default)."""
    distance_rel_tol: float = 0.1
    """Relative tolerance of distance answers, in (0, 0.5)."""

    def __post_init__(self) -> None:
        w, h, f = self.width, self.height, self.focal_px
        if self.difficulty not in (0, 1, 2):
            raise InvalidConfigError(f"difficulty must be 0, 1 or 2, got {self.difficulty}")
        if self.question not in QUESTIONS:
            raise InvalidConfigError(f"question must be one of {QUESTIONS}, got {self.question!r}")
        if not (160 <= w <= 1280 and w / 2 <= h <= w):
            raise InvalidConfigError(
                f"need 160 <= width <= 1280 and width / 2 <= height <= width, got {w}x{h}"
            )
        if not w / 2 <= f <= 1.5 * h:
            raise InvalidConfigError(f"focal_px must be between 0.5 * width ({w / 2:g}) and 1.5 * height "
                                     f"({1.5 * h:g}), got {f}")
        if not (0 < self.baseline_m <= 1 and 0 < self.distance_rel_tol < 0.5):
            raise InvalidConfigError(f"need baseline_m in (0, 1] and distance_rel_tol in (0, 0.5), got "
                                     f"{self.baseline_m} and {self.distance_rel_tol}")

    @property
    def min_gap_m(self) -> float:
        """Smallest difference between two solids' centre depths at this difficulty, in metres."""
        return _LEVELS[self.difficulty][1]

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)`` in pixels."""
        return self.focal_px, self.focal_px, (self.width - 1) / 2, (self.height - 1) / 2


@dataclass(frozen=True)
class Solid:
    """One object standing on the ground: its kind, colour, world centre ``(x, y, z)`` (y up) and size (m)."""

    shape: str
    colour: str
    centre: tuple[float, float, float]
    size: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """An accepted layout: the solids and the indices of the asked ones, in the order the question names
    them."""

    solids: tuple[Solid, ...]
    asked: tuple[int, ...]


def _camera(cfg: Depth3dConfig, right: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The camera's world origin and its basis rows (right, down, forward) for the left or right view."""
    s, c = math.sin(math.radians(PITCH_DEG)), math.cos(math.radians(PITCH_DEG))
    basis = np.array([[1.0, 0.0, 0.0], [0.0, -c, -s], [0.0, -s, c]])
    origin = np.array([cfg.baseline_m if right else 0.0, CAMERA_HEIGHT_M, 0.0])
    return origin, basis


@functools.lru_cache(maxsize=8)
def _rays(cfg: Depth3dConfig) -> np.ndarray:
    """(H, W, 3) world ray directions with unit forward component, so the ray parameter t is the depth
    (read-only, cached per config: both views share them)."""
    fx, fy, cx, cy = cfg.intrinsics
    _, basis = _camera(cfg)
    xs, ys = (np.arange(cfg.width) - cx) / fx, (np.arange(cfg.height) - cy) / fy
    rays = xs[None, :, None] * basis[0] + ys[:, None, None] * basis[1] + basis[2]
    rays.flags.writeable = False  # cached: shared by every call
    return rays


def _project(cfg: Depth3dConfig, origin: np.ndarray, basis: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 3) world points → (N, 3) pixel x, pixel y and depth."""
    fx, fy, cx, cy = cfg.intrinsics
    cam = (points - origin) @ basis.T
    return np.stack([cx + fx * cam[:, 0] / cam[:, 2], cy + fy * cam[:, 1] / cam[:, 2], cam[:, 2]], axis=1)


def _intersect(solid: Solid, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ray parameter of the first hit of rays ``o + t d`` (d: (..., 3)) with ``solid``; inf where they
    miss."""
    centre, s = np.asarray(solid.centre), solid.size
    with np.errstate(divide="ignore", invalid="ignore"):
        if solid.shape == "sphere":
            oc = o - centre
            a, b, c = (d * d).sum(-1), d @ oc, oc @ oc - s * s
            disc = b * b - a * c
            t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
            return np.where((disc >= 0) & (t > 0), t, np.inf)
        if solid.shape == "box":  # slab method
            t1, t2 = (centre - s - o) / d, (centre + s - o) / d
            near, far = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
            return np.where((far >= near) & (near > 0), near, np.inf)
        ox, oz = o[0] - centre[0], o[2] - centre[2]  # upright cylinder: side, then the top cap (y = 2 s)
        a, b, c = d[..., 0] ** 2 + d[..., 2] ** 2, d[..., 0] * ox + d[..., 2] * oz, ox * ox + oz * oz - s * s
        disc = b * b - a * c
        side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        y = o[1] + side * d[..., 1]
        side = np.where((disc >= 0) & (side > 0) & (y >= 0) & (y <= 2 * s), side, np.inf)
        top = (2 * s - o[1]) / d[..., 1]
        rx, rz = ox + top * d[..., 0], oz + top * d[..., 2]
        top = np.where((top > 0) & (rx * rx + rz * rz <= s * s), top, np.inf)
        return np.minimum(side, top)


_Traced = list[tuple[tuple[slice, slice], np.ndarray]]
"""Per solid: its screen rectangle (rows, columns) and the solid's own depth there (inf off it)."""


def _trace_solids(cfg: Depth3dConfig, solids: tuple[Solid, ...], right: bool = False) -> _Traced | None:
    """Each solid traced alone inside its projected bounding rectangle; None if one leaves the frame (2
    px)."""
    (origin, basis), rays, traced = _camera(cfg, right), _rays(cfg), []
    for solid in solids:
        corners = np.array(list(itertools.product(*[(c - solid.size, c + solid.size) for c in solid.centre])))
        px = _project(cfg, origin, basis, corners)
        x1, y1 = math.floor(px[:, 0].min()) - 1, math.floor(px[:, 1].min()) - 1
        x2, y2 = math.ceil(px[:, 0].max()) + 2, math.ceil(px[:, 1].max()) + 2
        if x1 < 2 or y1 < 2 or x2 > cfg.width - 2 or y2 > cfg.height - 2:
            return None
        traced.append(
            ((rows := slice(y1, y2), cols := slice(x1, x2)), _intersect(solid, origin, rays[rows, cols]))
        )
    return traced


def _composite(traced: _Traced, depth: np.ndarray, ids: np.ndarray) -> None:
    """Z-buffer the traced solids into ``depth`` and ``ids`` (solid k gets id k), in place."""
    for k, (rect, t) in enumerate(traced):
        closer = t < depth[rect]
        depth[rect][closer] = t[closer]
        ids[rect][closer] = k


def _shade(normal: np.ndarray, albedo: np.ndarray, checker: np.ndarray, strength: float) -> np.ndarray:
    """Lambert shading (ambient 0.35) of unit ``normal`` (..., 3) and RGB ``albedo`` in [0, 1], darkened by
    ``strength`` where the 0/1 ``checker`` is 1; returns uint8 RGB."""
    light = (0.35 + 0.65 * np.clip(normal @ _LIGHT, 0.0, 1.0)) * (1.0 - strength * checker)
    return np.clip(np.asarray(albedo) * light[..., None] * 255 + 0.5, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _background(cfg: Depth3dConfig, right: bool) -> tuple[np.ndarray, np.ndarray]:
    """The empty scene (checkered ground with 1 m squares, back wall with 0.5 m squares): RGB and depth."""
    (origin, _), rays = _camera(cfg, right), _rays(cfg)
    with np.errstate(divide="ignore"):
        ground = np.where(rays[..., 1] < 0, -origin[1] / rays[..., 1], np.inf)
    wall = (WALL_Z_M - origin[2]) / rays[..., 2]  # rays[..., 2] > 0: the vertical half-FOV (<= 45°) < 80°
    depth, on_ground = np.minimum(ground, wall), ground <= wall
    hit = origin + depth[..., None] * rays
    # Parities from the two in-plane coordinates only: float noise around y = 0 or z = WALL_Z_M would flip
    # them.
    ground_cells = (np.floor(hit[..., 0]) + np.floor(hit[..., 2])) % 2
    wall_cells = (np.floor(hit[..., 0] / 0.5) + np.floor(hit[..., 1] / 0.5)) % 2
    rgb = np.where(
        on_ground[..., None],
        _shade(np.array([0.0, 1.0, 0.0]), [150 / 255] * 3, ground_cells, 0.18),
        _shade(np.array([0.0, 0.0, -1.0]), [0.78, 0.76, 0.72], wall_cells, 0.18),
    )
    rgb.flags.writeable = depth.flags.writeable = False  # cached: shared by every call
    return rgb, depth


def render_view(cfg: Depth3dConfig, solids: tuple[Solid, ...], right: bool = False) -> tuple[np.ndarray, ...]:
    """Ray-cast the scene from the left (or right) camera.

    Returns:
        ``(rgb, depth, ids)``: (H, W, 3) uint8; (H, W) float32 metres along the optical axis; (H, W) int index
            of
        the solid seen at each pixel, -1 for the ground and the wall.

    Raises:
        ValueError: if a solid is not wholly in the frame.
    """
    traced = _trace_solids(cfg, solids, right)
    if traced is None:
        raise ValueError("a solid leaves the frame; render accepted scenes only")
    (origin, _), rays, (background, depth) = _camera(cfg, right), _rays(cfg), _background(cfg, right)
    rgb, depth, ids = background.copy(), depth.copy(), np.full(depth.shape, -1)
    _composite(traced, depth, ids)
    for k, (solid, (rect, _)) in enumerate(zip(solids, traced)):
        on = ids[rect] == k
        hit = origin + depth[rect][on][:, None] * rays[rect][on]
        rel = (hit - np.asarray(solid.centre)) / solid.size
        if solid.shape == "sphere":
            normal = rel
        elif solid.shape == "box":  # the face whose axis the hit point is farthest along
            normal = np.eye(3)[np.abs(rel).argmax(1)] * np.sign(rel)
        else:  # cylinder: top cap (y = 2 s, rel y = 1) or side
            normal = np.where((rel[:, 1] > 1 - 1e-6)[:, None], [0.0, 1.0, 0.0], rel * [1.0, 0.0, 1.0])
        normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        checker = np.floor(hit / 0.15).sum(1) % 2  # 0.15 m cells: texture for stereo matching
        rgb[rect][on] = _shade(normal, np.asarray(COLOURS[solid.colour]) / 255, checker, 0.08)
    return rgb, depth.astype(np.float32), ids


def _visible_point(mask: np.ndarray, target: tuple[float, float]) -> tuple[int, int]:
    """The pixel of ``mask`` nearest ``target``, preferring pixels whose 4 neighbours are in the mask too."""
    inner = mask.copy()
    inner[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    ys, xs = np.nonzero(inner if inner.any() else mask)
    i = int(np.argmin((xs - target[0]) ** 2 + (ys - target[1]) ** 2))
    return int(xs[i]), int(ys[i])


class Depth3dTask(Task):
    """Answer depth questions about a rendered 3D scene (see the module docstring)."""

    name = TASK_NAME
    config_cls = Depth3dConfig
    default_tools = ("ground", "depth")
    config: Depth3dConfig

    def _propose(self, rng: np.random.Generator) -> Scene | None:
        """Random solids and asked indices (before the visibility checks); None if two solids collide."""
        cfg, needed = self.config, 3 if self.config.question == "order" else 2
        (lo, hi), gap, (s_lo, s_hi), _ = _LEVELS[cfg.difficulty]
        n = needed + int(rng.integers(lo, hi + 1))
        spacing = gap + 0.15  # world-z spacing; centre depths are checked against ``gap`` afterwards
        zs = np.sort(rng.uniform(Z_RANGE_M[0], Z_RANGE_M[1] - (n - 1) * spacing, n)) + spacing * np.arange(n)
        colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:n]]
        shapes, sizes = rng.integers(0, len(SHAPES), n), rng.uniform(s_lo, s_hi, n)
        (fx, _, cx, _), solids = cfg.intrinsics, []
        for z, colour, shape, s in zip(zs, colours, shapes, sizes.tolist()):
            half = max(0.0, 0.85 * cx / fx * z - 1.5 * s)  # stay inside the horizontal field of view
            solids.append(Solid(SHAPES[shape], colour, (float(rng.uniform(-half, half)), s, float(z)), s))
        if any(math.dist(a.centre[::2], b.centre[::2]) < 1.42 * (a.size + b.size) + 0.1
               for a, b in itertools.combinations(solids, 2)):
            return None
        return Scene(tuple(solids), tuple(int(i) for i in rng.permutation(n)[:needed]))

    def _accept(self, scene: Scene) -> list[dict] | None:
        """Per-solid metadata (name, box, point, depth, ...) if ``scene`` meets every check, else None."""
        cfg, (_, gap, _, min_visible) = self.config, _LEVELS[self.config.difficulty]
        if (traced := _trace_solids(cfg, scene.solids)) is None:
            return None
        (origin, basis), centres = _camera(cfg), np.array([s.centre for s in scene.solids])
        proj = _project(cfg, origin, basis, centres)
        depth, ids, objects = (
            np.full((cfg.height, cfg.width), np.inf),
            np.full((cfg.height, cfg.width), -1),
            [],
        )
        _composite(traced, depth, ids)
        for k, (solid, (rect, t)) in enumerate(zip(scene.solids, traced)):
            mask = ids[rect] == k
            if np.isfinite(t).sum() < MIN_PIXELS or mask.sum() < min_visible * np.isfinite(t).sum():
                return None
            (x0, y0), (ys, xs) = (rect[1].start, rect[0].start), np.nonzero(mask)
            x, y = _visible_point(mask, (proj[k, 0] - x0, proj[k, 1] - y0))
            objects.append(
                {
                    "name": solid.name,
                    "box": [
                        int(xs.min()) + x0,
                        int(ys.min()) + y0,
                        int(xs.max()) + x0 + 1,
                        int(ys.max()) + y0 + 1,
                    ],
                    "point": [x + x0, y + y0],
                    "depth": float(t[y, x]),
                    "shape": solid.shape,
                    "colour": solid.colour,
                    "size_m": solid.size,
                    "centre_m": [float(v) for v in (centres[k] - origin) @ basis.T],
                }
            )
        ranges = np.linalg.norm(centres - origin, axis=1)
        for i, j in itertools.permutations(range(len(objects)), 2):
            if proj[i, 2] < proj[j, 2] and (proj[j, 2] - proj[i, 2] < gap or ranges[i] >= ranges[j]
                                             or objects[j]["depth"] - objects[i]["depth"] < gap / 2):
                return None
        if cfg.question == "distance":  # the tool estimate: the two points back-projected at their depths
            fx, fy, cx, cy = cfg.intrinsics
            a, b = (objects[i] for i in scene.asked)
            pa, pb = (
                [(o["point"][0] - cx) * o["depth"] / fx, (o["point"][1] - cy) * o["depth"] / fy, o["depth"]]
                for o in (a, b)
            )
            gold = math.dist(a["centre_m"], b["centre_m"])
            if abs(math.dist(pa, pb) - gold) > cfg.distance_rel_tol / 2 * gold:
                return None
        return objects

    def scene(self, split: str, index: int, seed: int) -> tuple[Scene, list[dict]]:
        """Item ``index``'s accepted layout and per-solid metadata (no shading, no right view); the first of
        up to ``_MAX_TRIES`` proposals that passes (at most 30 were needed in 1,000 scenes; RuntimeError
        beyond)."""
        rng = sample_seed(seed, split, index)
        for _ in range(_MAX_TRIES):
            if (scene := self._propose(rng)) is not None and (objects := self._accept(scene)) is not None:
                return scene, objects
        raise RuntimeError(f"no valid {TASK_NAME} scene in {_MAX_TRIES} tries for {self.config}")  # a bug

    def sample(self, split: str, index: int, seed: int) -> Sample:
        cfg, (scene, objects) = self.config, self.scene(split, index, seed)
        (rgb, depth, ids), (right, _, _) = (
            render_view(cfg, scene.solids),
            render_view(cfg, scene.solids, right=True),
        )
        names, (fx, fy, cx, cy) = [scene.solids[i].name for i in scene.asked], cfg.intrinsics
        metadata: dict = {"objects": objects, "asked": names, "question": cfg.question,
                          "camera": {"fx": fx, "fy": fy, "cx": cx, "cy": cy},
                          "stereo": {"focal_px": fx, "baseline_m": cfg.baseline_m}}
        if cfg.question == "distance":
            a, b = (objects[i] for i in scene.asked)
            metadata["distance_m"] = gold = math.dist(a["centre_m"], b["centre_m"])
            answer = f"{gold:.2f}"
            question = (
                f"How far apart are the centres of the {names[0]} and the {names[1]}, in metres? The "
                f"pinhole camera has fx = {fx:g}, fy = {fy:g}, cx = {cx:g}, cy = {cy:g} (pixels): pixel "
                "(x, y) at depth Z is the point ((x - cx) Z / fx, (y - cy) Z / fy, Z)."
            )
        else:  # lettered options: the two names, or the six orders in itertools.permutations order
            ranked = sorted(scene.asked, key=lambda i: objects[i]["depth"])
            if cfg.question == "closer":
                options, gold_text = names, scene.solids[ranked[0]].name
                question = f"Which is closer to the camera, the {names[0]} or the {names[1]}?"
            else:
                options = [", ".join(p) for p in itertools.permutations(names)]
                gold_text = ", ".join(scene.solids[i].name for i in ranked)
                question = (
                    f"Order the {names[0]}, the {names[1]} and the {names[2]} from nearest to farthest "
                    "from the camera."
                )
            question += " " + " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(options))
            metadata.update(options=options, gold_index=options.index(gold_text))
            answer = chr(65 + options.index(gold_text))
        masks = ids[None] == np.arange(len(scene.solids))[:, None, None]
        return Sample(id=f"{TASK_NAME}/{split}/{seed}/{index}", task=TASK_NAME, split=split, index=index,
                      question=question, images=(rgb,), answer=answer, metadata=metadata,
                      arrays={"depth": depth, "masks": masks, "right": right})

    def score(self, sample: Sample, answer: str) -> float:
        if self.config.question == "distance":
            return numeric_reward(answer, sample.metadata["distance_m"], rel_tol=self.config.distance_rel_tol)
        return multiple_choice_reward(answer, sample.metadata["options"], sample.metadata["gold_index"])

    def answer_choices(self) -> tuple[str, ...] | None:
        return {"closer": ("A", "B"), "order": tuple("ABCDEF"), "distance": None}[self.config.question]

    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        return sample.question + {"closer": " Answer with the letter (A or B) or the object's name.",
                                  "order": " Answer with the letter (A to F).",
                                  "distance": " Answer with one number in metres."}[self.config.question]

    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        """Ground each asked object, then read the depth at their points; for "order" (three objects, which
        with three ground calls would need five turns) the depth call alone, at the objects' visible
        points."""
        if not tools_enabled:
            return Solution(tool_calls=(), answer=sample.answer)
        by_name, asked = {o["name"]: o for o in sample.metadata["objects"]}, sample.metadata["asked"]
        grounds = () if len(asked) > 2 else tuple(("ground", {"query": nm}) for nm in asked)
        depth = ("depth", {"points": [list(by_name[nm]["point"]) for nm in asked]})
        return Solution(tool_calls=(*grounds, depth), answer=sample.answer)


register_task(Depth3dTask)
