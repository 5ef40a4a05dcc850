"""Tests of tasks/geometry.py (``vgym.tasks.geometry``): env contract, determinism, split disjointness, the
scene against its metadata, values through the real ``measure`` tool, answerability from the whole pixels the
``point`` tool returns, oracle episodes, scoring edge cases, answer balance and config validation.

Values are checked through the ``measure`` tool and against formulas written here, not the generator's
helpers; drawn points and segments are checked in the pixels.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from split_checks import assert_disjoint_splits, image_digest

import vgym  # noqa: F401  (registers the tools)
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError
from vgym.protocol import HermesProtocol
from vgym.task import SPLITS, Sample
from vgym.tasks.geometry import KINDS, LEVELS, TASK_NAME, GeometryConfig, GeometryTask

DIFFICULTIES = (0, 1, 2)  # every difficulty GeometryConfig accepts (test_invalid_config: 3 is rejected)
PROTOCOL = HermesProtocol()


@pytest.fixture(scope="module", params=DIFFICULTIES, ids=lambda d: f"difficulty{d}")
def task(request: pytest.FixtureRequest) -> GeometryTask:
    return GeometryTask({"difficulty": request.param})


def _angle(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    """Angle at ``b`` by the law of cosines (a different formula from the generator's atan2)."""
    ab, cb, ac = np.linalg.norm(a - b), np.linalg.norm(c - b), np.linalg.norm(a - c)
    return math.degrees(math.acos(np.clip((ab**2 + cb**2 - ac**2) / (2 * ab * cb), -1, 1)))


def _area(pts: np.ndarray) -> float:
    """Fan of triangles from vertex 0 (cross products), valid for the convex polygons the task draws."""
    def cross(u: np.ndarray, v: np.ndarray) -> float:
        return float(u[0] * v[1] - u[1] * v[0])

    return sum(abs(cross(pts[i] - pts[0], pts[i + 1] - pts[0])) / 2 for i in range(1, len(pts) - 1))


def _points(sample: Sample) -> np.ndarray:
    return np.array([sample.metadata["points"][lab] for lab in sample.metadata["labels"]], dtype=np.float64)


def _episode(env: VisualToolEnv, index: int, split: str = "test") -> tuple[float, list[str]]:
    """Play the task's oracle solution; returns the final reward and each tool response text."""
    env.reset(options={"split": split, "index": index})
    solution = env.task.solution(env.sample, env.tools_enabled)
    texts = []
    for name, arguments in solution.tool_calls:
        obs, reward, terminated, truncated, info = env.step(PROTOCOL.format_tool_call(name, arguments))
        assert all(r["ok"] for r in info["tool_calls"]), info["tool_calls"]
        assert not (terminated or truncated)
        texts.append(obs["text"])
    obs, reward, terminated, truncated, info = env.step(PROTOCOL.format_answer(solution.answer))
    assert terminated and not truncated
    return float(reward), texts


def _measured(text: str) -> float:
    """The value in a measure tool response ("distance: 123.45 px", "angle at (x, y): 45.6 degrees", ...)."""
    return float(re.search(r": ([\d.]+) (?:px|degrees)", text)[1])


# ---------------------------------------------------------------- env contract, determinism and splits


def test_check_env() -> None:
    env = gymnasium.make("vgym/Geometry-v0")
    try:
        check_env(env.unwrapped)
    finally:
        env.close()


def test_same_arguments_give_the_same_sample(task: GeometryTask) -> None:
    a, b = task.sample("train", 5, 0), GeometryTask(task.config).sample("train", 5, 0)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    assert (a.id, a.question, a.answer, a.metadata) == (b.id, b.question, b.answer, b.metadata)
    assert json.loads(json.dumps(a.metadata)) == a.metadata  # JSON-serialisable, tuples included nowhere


@pytest.mark.parametrize(
    "other",
    [("train", 5, 1), ("train", 6, 0), ("val", 5, 0), ("test", 5, 0)],
    ids=["seed", "index", "val", "test"],
)
def test_changing_seed_index_or_split_changes_the_sample(
    task: GeometryTask, other: tuple[str, int, int]
) -> None:
    a, b = task.sample("train", 5, 0), task.sample(*other)
    assert a.id != b.id
    assert image_digest(a) != image_digest(b)
    assert a.metadata["points"] != b.metadata["points"]


def test_splits_are_disjoint_over_a_thousand_samples() -> None:
    task = GeometryTask()  # difficulty 0: the least clutter, so the likeliest to repeat a scene
    digests = {split: {image_digest(task.sample(split, i, 0)) for i in range(1000)} for split in SPLITS}
    assert_disjoint_splits(digests, 1000)


def test_sample_id() -> None:
    assert GeometryTask().sample("val", 7, 3).id == "geometry/val/3/7"


# ---------------------------------------------------------------- the scene against its metadata


@pytest.mark.parametrize("index", range(6))
def test_scene_draws_every_point_and_segment(task: GeometryTask, index: int) -> None:
    cfg, level = task.config, LEVELS[task.config.difficulty]
    sample = task.sample("test", index, 0)
    (image,) = sample.images
    assert image.shape == (cfg.height, cfg.width, 3) and image.dtype == np.uint8
    grey = image.min(axis=-1).astype(int)
    points = sample.metadata["points"]
    assert len(points) == len(sample.metadata["labels"]) + level.extra_points
    for x, y in points.values():
        assert cfg.margin <= x <= cfg.width - cfg.margin and cfg.margin <= y <= cfg.height - cfg.margin
        assert grey[int(round(y)), int(round(x))] < 60  # the dot is ink
        assert (x == int(x) and y == int(y)) != level.subpixel
    for a, b in sample.metadata["segments"]:
        p, q = np.array(points[a]), np.array(points[b])
        along = [p + t * (q - p) for t in np.linspace(0.1, 0.9, 30)]  # off the dots at either end
        # Anti-aliased 1-pixel lines can straddle two pixels at ~50% ink, so the darkest of the 3x3 is
        # checked.
        assert all(grey[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2].min() < 160 for x, y in along)
    # The question's figure: its edges are drawn, and its labels are the question's letters.
    names = sample.metadata["labels"]
    drawn = {frozenset(s) for s in sample.metadata["segments"]}
    assert {frozenset(e) for e in zip(names, names[1:])} <= drawn
    assert "".join(names) in sample.question
    # Clutter points keep min_gap (40) from every point and half of it from the figure's sides.
    for label, p in points.items():
        assert all(math.dist(p, q) >= cfg.min_gap for other, q in points.items() if other != label)
    sides = list(zip(names, names[1:])) + (
        [(names[-1], names[0])] if sample.metadata["kind"] == "area" else []
    )
    figure_sides = [(np.array(points[a]), np.array(points[b])) for a, b in sides]
    for label in set(points) - set(names):
        p = np.array(points[label])
        for a, b in figure_sides:
            t = np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0, 1)
            assert np.linalg.norm(p - (a + t * (b - a))) >= cfg.min_gap / 2
    assert len(sample.metadata["clutter_lines"]) == level.clutter_lines
    assert (grey > 250).mean() > 0.8  # a white page, mostly


def test_objects_list_every_point_for_the_oracle_tools(task: GeometryTask) -> None:
    sample = task.sample("train", 3, 0)
    objects, points = sample.metadata["objects"], sample.metadata["points"]
    assert [o["name"] for o in objects] == [f"point {lab}" for lab in sorted(points)]
    assert "A" not in points  # "a" is a filler word to the grounders, so "point A" would name every point
    for obj in objects:
        x, y = obj["point"]
        x1, y1, x2, y2 = obj["box"]
        assert points[obj["name"][-1]] == [x, y]
        assert x1 <= x < x2 and y1 <= y < y2


@pytest.mark.parametrize("index", range(10))
def test_value_matches_formulas_written_here(task: GeometryTask, index: int) -> None:
    sample = task.sample("val", index, 0)
    pts, kind, value = _points(sample), sample.metadata["kind"], sample.metadata["value"]
    expected = {"length": lambda: float(np.linalg.norm(pts[1] - pts[0])), "angle": lambda: _angle(*pts),
                "area": lambda: _area(pts)}[kind]()
    assert value == pytest.approx(expected, rel=1e-9)
    assert float(sample.answer) == pytest.approx(value, abs=0.005)  # the answer is the value to 2 decimals
    if kind == "length":
        assert value >= task.config.min_length and sample.question.startswith("How long is segment")
    elif kind == "angle":
        assert 15 <= value <= 165 and sample.question.startswith("What is angle")
    else:
        assert sample.question.startswith(
            f"What is the area of {'triangle' if len(pts) == 3 else 'quadrilateral'}"
        )


# ---------------------------------------------------------------- tools and the oracle


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
@pytest.mark.parametrize("tools", [None, ()], ids=["default-tools", "tools-off"])
def test_oracle_earns_full_reward_in_the_default_env(difficulty: int, tools: tuple | None) -> None:
    env = VisualToolEnv(TASK_NAME, task_config={"difficulty": difficulty}, tools=tools)
    try:
        rewards = [_episode(env, i)[0] for i in range(50)]
    finally:
        env.close()
    assert np.mean(rewards) >= 0.99 and min(rewards) == pytest.approx(1.0)


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_full_plan_points_at_each_label_then_measures_the_value(difficulty: int) -> None:
    """With room for 5 calls the plan points at every label (whole pixels back) and measures the exact points;
    the measured text equals the gold value, and the same measurement from the returned whole pixels is within
    the tolerance (what a model that copies the point tool's output would get)."""
    task_config = {"difficulty": difficulty, "oracle_calls": 5}
    env = VisualToolEnv(TASK_NAME, task_config=task_config, max_turns=6)
    probe = VisualToolEnv(TASK_NAME, task_config=task_config, max_turns=6)  # measures the whole pixels
    worst = {kind: 0.0 for kind in KINDS}
    try:
        for index in range(40):
            reward, texts = _episode(env, index)
            sample = env.sample
            names, kind = sample.metadata["labels"], sample.metadata["kind"]
            assert reward == pytest.approx(1.0) and len(texts) == len(names) + 1
            returned = []
            for label, text in zip(names, texts):  # each point call found its own label
                x, y = sample.metadata["points"][label]
                px, py = json.loads(re.search(r"\[-?\d+, -?\d+\]", text)[0])
                assert (px, py) == (math.floor(x), math.floor(y))
                returned.append([px, py])
            assert _measured(texts[-1]) == pytest.approx(sample.metadata["value"], abs=0.006)
            # The measure tool on the whole pixels, in a second episode of the same sample.
            tool_kind = {"length": "distance"}.get(kind, kind)
            probe.reset(options={"split": "test", "index": index})
            obs, *_ = probe.step(
                PROTOCOL.format_tool_call("measure", {"kind": tool_kind, "points": returned})
            )
            from_pixels = _measured(obs["text"])
            assert env.task.score(sample, f"{from_pixels}") == 1.0, (
                sample.question,
                from_pixels,
                sample.answer,
            )
            value = sample.metadata["value"]
            err = abs(from_pixels - value) if kind == "angle" else abs(from_pixels - value) / value
            worst[kind] = max(worst[kind], err)
    finally:
        env.close()
        probe.close()
    # Integer points come back exactly; at difficulty 2 truncation costs well under the tolerances (2%, 2°,
    # 3%).
    if not LEVELS[difficulty].subpixel:
        assert max(worst.values()) < 0.01  # only the 2-decimal rounding of the tool's text
    else:
        assert worst["length"] < 0.02 and worst["angle"] < 2 and worst["area"] < 0.03
        assert max(worst.values()) > 0  # truncation did move something (the check can fail)


def test_every_truncation_of_the_points_stays_within_the_tolerance() -> None:
    """Worst case over the whole-pixel truncations: the point tool may move each coordinate by anything in [0,
    1). Area is linear in each coordinate separately (shoelace terms pair distinct coordinates), so its
    extremes lie on the corners {0, 1}^(2n) of that box, which are all tried; for lengths and angles the
    corners are tried too."""
    task = GeometryTask({"difficulty": 2})
    worst = {kind: 0.0 for kind in KINDS}
    for index in range(300):
        sample = task.sample("train", index, 0)
        pts, kind, value = _points(sample), sample.metadata["kind"], sample.metadata["value"]
        n = len(pts)
        corners = np.array(np.meshgrid(*[[0.0, 1.0]] * (2 * n))).reshape(2 * n, -1).T.reshape(-1, n, 2)
        for shift in corners * (1 - 1e-9):
            moved = pts - shift
            got = {
                "length": lambda: float(np.linalg.norm(moved[1] - moved[0])),
                "angle": lambda: _angle(*moved),
                "area": lambda: _area(moved),
            }[kind]()
            worst[kind] = max(worst[kind], abs(got - value) if kind == "angle" else abs(got - value) / value)
    # Guaranteed by construction: < sqrt(2)/100 = 1.41%, < 2 * sqrt(2)/100 rad = 1.62 degrees and < 2.5% (the
    # tolerances are 2%, 2 degrees and 3%). Measured: 1.34%, 1.21 degrees, 1.64%; the area check is tighter
    # than
    # its guarantee so that it fails when the area bound is loosened (with _AREA_BOUND = 0.2 it measures
    # 2.35%).
    assert worst["length"] < 0.0142 and worst["angle"] < 1.63 and worst["area"] < 0.02
    assert min(worst.values()) > 0


def test_solution_uses_no_tools_when_they_are_off_and_measures_at_once_when_points_do_not_fit() -> None:
    task = GeometryTask()
    by_kind = {}
    for i in range(30):
        s = task.sample("train", i, 0)
        by_kind.setdefault((s.metadata["kind"], len(s.metadata["labels"])), s)
    assert set(by_kind) == {("length", 2), ("angle", 3), ("area", 3), ("area", 4)}
    for (kind, n), s in by_kind.items():
        assert task.solution(s, tools_enabled=False).tool_calls == ()
        names = [c[0] for c in task.solution(s, tools_enabled=True).tool_calls]
        assert names == (["point", "point", "measure"] if kind == "length" else ["measure"])
        full = GeometryTask({"oracle_calls": 5}).solution(s, tools_enabled=True).tool_calls
        assert [c[0] for c in full] == ["point"] * n + ["measure"]
        assert full[-1][1]["points"] == _points(s).tolist()


def test_prompt_gives_the_question_unit_and_tolerance() -> None:
    task = GeometryTask()
    seen = {}
    for i in range(20):
        s = task.sample("train", i, 0)
        seen[s.metadata["kind"]] = (s, task.prompt(s, tools_enabled=True))
    assert set(seen) == set(KINDS)
    for kind, (s, prompt) in seen.items():
        assert prompt.startswith(s.question) and "512x512 image" in prompt
    assert "degrees; answers within 2 degrees" in seen["angle"][1]
    assert "in pixels; answers within 2%" in seen["length"][1]
    assert "in square pixels; answers within 3%" in seen["area"][1]


# ---------------------------------------------------------------- scoring


def _with_kind(kind: str) -> Sample:
    task = GeometryTask()
    return next(s for s in (task.sample("test", i, 0) for i in range(50)) if s.metadata["kind"] == kind)


@pytest.mark.parametrize(
    "kind, answer, expected",
    [
        ("length", "{v:.2f}", 1.0),
        ("length", "  {v:.1f} px \n", 1.0),
        ("length", "about {v:.0f} pixels", 1.0),
        ("length", "{hi19}", 1.0),  # 1.9% over: inside rel_tol 0.02
        ("length", "{hi21}", 0.0),  # 2.1% over: outside
        ("length", "-{v:.2f}", 0.0),
        ("length", "{v:.1f} or {v:.0f}", 0.0),  # two numbers: ambiguous
        ("length", "", 0.0),
        ("length", "long", 0.0),
        ("angle", "{v:.1f}°", 1.0),
        ("angle", "{v:.1f} degrees", 1.0),
        ("angle", "{plus19}", 1.0),  # 1.9 degrees off: inside abs_tol 2
        ("angle", "{plus21}", 0.0),
        ("area", "{v:,.0f} square pixels", 1.0),  # thousands separator
        ("area", "{v:.0f} px^2", 1.0),  # the unit's exponent is not a second number
        ("area", "{v:.0f} px**2", 1.0),
        ("area", "{v:.0f} px²", 1.0),
        ("area", "{hi29}", 1.0),  # 2.9% over: inside rel_tol 0.03
        ("area", "{hi31}", 0.0),
    ],
)
def test_score(kind: str, answer: str, expected: float) -> None:
    sample = _with_kind(kind)
    v = sample.metadata["value"]
    text = answer.format(v=v, hi19=v * 1.019, hi21=v * 1.021, hi29=v * 1.029, hi31=v * 1.031, plus19=v + 1.9,
                         plus21=v + 2.1)
    assert GeometryTask().score(sample, text) == expected


def test_answer_choices_are_open() -> None:
    assert GeometryTask().answer_choices() is None and GeometryTask().chance_accuracy() is None


# ---------------------------------------------------------------- balance


def test_kinds_are_balanced_and_values_spread_over_a_thousand_samples() -> None:
    task = GeometryTask()
    samples = [task.sample("train", i, 0) for i in range(1000)]
    kinds = Counter(s.metadata["kind"] for s in samples)
    assert max(kinds.values()) / 1000 <= 1 / 3 + 0.05  # measured: 0.354
    answers = Counter(s.answer for s in samples)
    assert max(answers.values()) <= 3 and len(answers) >= 950  # measured: 987 distinct, the commonest twice
    values = {k: np.array([s.metadata["value"] for s in samples if s.metadata["kind"] == k]) for k in KINDS}
    # Angles are drawn uniformly in [15, 165]: each 30-degree bin holds 20% +- 7%.
    bins = np.histogram(values["angle"], bins=5, range=(15, 165))[0] / len(values["angle"])
    assert bins.min() > 0.13 and bins.max() < 0.27
    # Lengths are drawn uniformly in [100, 0.9 * 452 = 406.8]: each 61-pixel bin holds 20% +- 7%.
    assert values["length"].min() >= 100 and values["length"].max() <= 406.8 + 1  # +1: integer rounding
    bins = np.histogram(values["length"], bins=5, range=(100, 406.8))[0] / len(values["length"])
    assert bins.min() > 0.13 and bins.max() < 0.27
    shapes = Counter(len(s.metadata["labels"]) for s in samples if s.metadata["kind"] == "area")
    assert min(shapes.values()) / sum(shapes.values()) > 0.4  # triangles and quadrilaterals about equally


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "config, message",
    [
        ({"difficulty": 3}, "difficulty must be 0, 1 or 2, got 3"),
        ({"min_length": 99}, r"need min_length >= 100.*got min_length=99, min_gap=40"),
        ({"min_gap": 20}, r"min_gap >= 26.*min_gap=20"),
        ({"oracle_calls": 0}, "oracle_calls must be >= 1 .*got 0"),
        ({"margin": 10}, r"need margin >= 20.*margin=10"),
        ({"width": 250}, r"each canvas side >= 2 \* margin \+ 2 \* min_length.*width=250, height=512"),
        ({"height": 300, "min_length": 150}, r"height=300, margin=30, min_length=150"),
    ],
)
def test_invalid_config(config: dict, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        GeometryConfig(**config)


def test_smallest_valid_canvas_still_places_every_kind() -> None:
    task = GeometryTask({"width": 260, "height": 260, "difficulty": 2})  # 260 = 2 * 30 + 2 * 100
    kinds = {task.sample("train", i, 0).metadata["kind"] for i in range(12)}
    assert kinds == set(KINDS)
