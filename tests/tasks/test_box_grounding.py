"""Tests of tasks/box_grounding.py (``vgym.tasks.box_grounding``): env contract, determinism, split
disjointness, scene ground truth read back from the pixels, the unambiguity of every question, the oracle
episode, IoU scoring, answer balance and config validation.

Objects are recovered from the pixels (connected components of each palette colour) and the question is parsed
with a regex, instead of trusting the generator's metadata, so the checks are independent of the code that
drew the scene.
"""

from __future__ import annotations

import re
from collections import Counter

import cv2
import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from split_checks import assert_disjoint_splits, image_digest

import vgym  # noqa: F401  (registers the core tools before the task module)
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError
from vgym.protocol import HermesProtocol
from vgym.task import SPLITS
from vgym.tasks.box_grounding import COLOURS, SHAPES, TASK_NAME, BoxGroundingConfig, BoxGroundingTask

DIFFICULTIES = (0, 1, 2)
QUESTION = re.compile(
    r"Give the box of the (\w+ \w+)(?: (left of|right of|above|below) the (\w+ \w+))?\.")
# Share of its box a shape fills: square 1, circle ~pi/4 = 0.785, upward triangle ~1/2 (pixelisation widens
# these).
FILL = {"square": (1.0, 1.0), "circle": (0.70, 0.86), "triangle": (0.45, 0.62)}


@pytest.fixture(scope="module", params=DIFFICULTIES, ids=lambda d: f"difficulty{d}")
def task(request: pytest.FixtureRequest) -> BoxGroundingTask:
    return BoxGroundingTask({"difficulty": request.param})


def _objects_in_pixels(image: np.ndarray) -> list[tuple[str, list[int], float]]:
    """``(colour, box, fill)`` of every 8-connected blob of one exact palette colour (the canvas is grey)."""
    found = []
    for name, rgb in COLOURS.items():
        mask = (image == rgb).all(axis=-1).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for x, y, w, h, area in stats[1:n]:
            found.append((name, [int(x), int(y), int(x + w), int(y + h)], area / (w * h)))
    return found


def _holds(relation: str, a: list[int], b: list[int]) -> bool:
    holds = {"left of": a[2] <= b[0], "right of": a[0] >= b[2], "above": a[3] <= b[1], "below": a[1] >= b[3]}
    return holds[relation]


# ---------------------------------------------------------------- env contract and determinism


def test_check_env() -> None:
    env = gymnasium.make("vgym/BoxGrounding-v0")
    try:
        check_env(env.unwrapped)
    finally:
        env.close()


def test_same_arguments_give_the_same_sample(task: BoxGroundingTask) -> None:
    a, b = task.sample("train", 5, 0), BoxGroundingTask(task.config).sample("train", 5, 0)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    assert (a.id, a.question, a.answer, a.metadata) == (b.id, b.question, b.answer, b.metadata)


@pytest.mark.parametrize(
    "other",
    [("train", 5, 1), ("train", 6, 0), ("val", 5, 0), ("test", 5, 0)],
    ids=["seed", "index", "val", "test"],
)
def test_changing_seed_index_or_split_changes_the_sample(
    task: BoxGroundingTask, other: tuple[str, int, int]
) -> None:
    a, b = task.sample("train", 5, 0), task.sample(*other)
    assert a.id != b.id and image_digest(a) != image_digest(b) and a.answer != b.answer


def test_splits_are_disjoint_over_a_thousand_samples() -> None:
    task = BoxGroundingTask()  # difficulty 0 (448²) renders in ~0.5 ms, so hash the real images
    digests = {split: {image_digest(task.sample(split, i, 0)) for i in range(1000)} for split in SPLITS}
    assert_disjoint_splits(digests, 1000)


def test_sample_id() -> None:
    assert BoxGroundingTask().sample("val", 7, 3).id == "box_grounding/val/3/7"


# ---------------------------------------------------------------- scene ground truth


@pytest.mark.parametrize("index", range(12))
def test_pixels_match_the_metadata_objects(task: BoxGroundingTask, index: int) -> None:
    cfg = task.config
    sample = task.sample("test", index, 0)
    (image,) = sample.images
    side = cfg.image_sizes[cfg.difficulty]
    assert image.shape == (side, side, 3) and image.dtype == np.uint8
    assert sample.metadata["image_size"] == [side, side]
    objects = sample.metadata["objects"]
    assert len(objects) == cfg.distractors[cfg.difficulty] + 1
    found = _objects_in_pixels(image)
    # Every drawn blob is one metadata object with exactly its box (so the gold box is the tight pixel box)
    # ...
    assert sorted((c, b) for c, b, _ in found) == sorted((o["name"].split()[0], o["box"]) for o in objects)
    lo, hi = cfg.object_sizes[cfg.difficulty]
    by_box = {tuple(b): fill for _, b, fill in found}
    for obj in objects:
        colour, shape = obj["name"].split()
        x1, y1, x2, y2 = obj["box"]
        assert lo - 1 <= x2 - x1 <= hi and lo - 1 <= y2 - y1 <= hi  # a circle of even side drops one pixel
        # ... whose pixels have the named shape (how much of the box they fill) ...
        low, high = FILL[shape]
        assert low <= by_box[(x1, y1, x2, y2)] <= high, (obj, by_box[(x1, y1, x2, y2)])
        # ... and whose point is one of its own pixels.
        px, py = obj["point"]
        assert tuple(image[py, px]) == COLOURS[colour]
        assert x1 <= px < x2 and y1 <= py < y2
    gap = cfg.gap  # boxes never touch: each blob is separate even with 8-connectivity, and gap pixels apart
    boxes = [o["box"] for o in objects]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


@pytest.mark.parametrize("index", range(40))
def test_question_names_exactly_one_object_among_confusers(task: BoxGroundingTask, index: int) -> None:
    sample = task.sample("train", index, 0)
    match = QUESTION.fullmatch(sample.question)
    assert match, sample.question
    name, relation, anchor_name = match.groups()
    objects = sample.metadata["objects"]
    names = Counter(o["name"] for o in objects)
    colour, shape = name.split()
    # Confusers: the target's colour on another shape, and the target's shape in another colour.
    assert any(n.split()[0] == colour and n.split()[1] != shape for n in names)
    assert any(n.split()[1] == shape and n.split()[0] != colour for n in names)
    if relation is None:
        assert task.config.difficulty < 2 or sample.metadata["relation"] is None
        assert names[name] == 1
        (gold,) = [o["box"] for o in objects if o["name"] == name]
    else:
        assert task.config.difficulty == 2
        assert names[name] == 2 and names[anchor_name] == 1  # the name alone is ambiguous, the anchor is not
        (anchor,) = [o["box"] for o in objects if o["name"] == anchor_name]
        opposites = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        opposite = opposites[relation]
        pair = [o["box"] for o in objects if o["name"] == name]
        (gold,) = [b for b in pair if _holds(relation, b, anchor)]
        (twin,) = [b for b in pair if _holds(opposite, b, anchor)]  # the twin is clearly on the other side
    assert sample.answer == f"[{gold[0]}, {gold[1]}, {gold[2]}, {gold[3]}]"


def test_difficulty_two_mixes_plain_and_relational_questions() -> None:
    task = BoxGroundingTask({"difficulty": 2})
    relations = Counter(QUESTION.fullmatch(task.sample("val", i, 0).question).group(2) for i in range(200))
    assert 0.35 <= relations[None] / 200 <= 0.65  # relation_rate 0.5
    assert set(relations) == {None, "left of", "right of", "above", "below"}


def test_objects_shrink_to_a_few_budget_pixels_at_difficulty_two() -> None:
    """At the default 224² budget a 1344² scene shrinks 6x: an object is 4-8 pixels wide, and one budget pixel
    spans 6 image pixels, so a box read off the budget image misses the exact box (IoU 1.0) by up to 3 px a
    side."""
    cfg = BoxGroundingConfig(difficulty=2)
    lo, hi = cfg.object_sizes[2]
    scale = cfg.image_sizes[2] / 224
    assert (lo / scale, hi / scale) == (4.0, 8.0)


# ---------------------------------------------------------------- oracle episode


@pytest.mark.parametrize("tools", [None, ()], ids=["default-tools", "tools-off"])
def test_oracle_episode_reaches_full_reward(task: BoxGroundingTask, tools: tuple[str, ...] | None) -> None:
    env = VisualToolEnv(TASK_NAME, task_config={"difficulty": task.config.difficulty}, tools=tools)
    protocol = HermesProtocol()
    try:
        for index in range(50):
            obs, _ = env.reset(options={"split": "val", "index": index})
            sample = env.sample
            width, height = sample.metadata["image_size"]
            assert f"{width}x{height}" in obs["text"] and "[x1, y1, x2, y2]" in obs["text"]
            solution = env.task.solution(sample, env.tools_enabled)
            assert bool(solution.tool_calls) == env.tools_enabled
            for name, arguments in solution.tool_calls:
                obs, reward, terminated, truncated, info = env.step(
                    protocol.format_tool_call(name, arguments)
                )
                assert (reward, terminated, truncated) == (0.0, False, False)
                assert all(r["ok"] for r in info["tool_calls"]), info["tool_calls"]
            # the first ground call lists the gold box (alone, unless a twin shares the name)
            if env.tools_enabled:
                first = env.task.solution(sample, True).tool_calls[0][1]["query"]
                assert first in sample.question
            obs, reward, terminated, truncated, info = env.step(protocol.format_answer(solution.answer))
            assert reward >= 0.99 and info["reward_parts"]["accuracy"] == 1.0
            assert (terminated, truncated) == (True, False)
    finally:
        env.close()


def test_oracle_ground_call_returns_the_gold_box() -> None:
    env = VisualToolEnv(TASK_NAME, task_config={"difficulty": 2})
    protocol = HermesProtocol()
    try:
        for index in range(20):
            env.reset(options={"split": "test", "index": index})
            (name, arguments), *rest = env.task.solution(env.sample, True).tool_calls
            obs, *_ = env.step(protocol.format_tool_call(name, arguments))
            boxes = re.findall(r"\[(\d+), (\d+), (\d+), (\d+)\]", obs["text"].split("best first:")[1])
            assert env.sample.answer in [f"[{', '.join(b)}]" for b in boxes]
            assert len(boxes) == (2 if env.sample.metadata["relation"] else 1)
            assert len(rest) == (1 if env.sample.metadata["relation"] else 0)  # the anchor's ground call
    finally:
        env.close()


def test_prompt_gives_the_answer_format_and_image_size() -> None:
    task = BoxGroundingTask({"difficulty": 1})
    sample = task.sample("train", 0, 0)
    on, off = task.prompt(sample, tools_enabled=True), task.prompt(sample, tools_enabled=False)
    assert on.startswith(sample.question) and off.startswith(sample.question)
    assert "[image 0: 896x896]" in on and "[image 0:" not in off  # the env adds that line only with tools on
    assert all("[x1, y1, x2, y2]" in p and "896x896" in p and "exclusive" in p for p in (on, off))


# ---------------------------------------------------------------- scoring


def test_score_is_the_iou_with_the_gold_box() -> None:
    task = BoxGroundingTask()
    sample = task.sample("val", 0, 0)
    x1, y1, x2, y2 = sample.metadata["objects"][sample.metadata["target"]]["box"]
    w, _h = x2 - x1, y2 - y1
    assert task.score(sample, sample.answer) == 1.0
    for text in (
        f"[{x1},{y1},{x2},{y2}]",
        f"  ({x1}, {y1}, {x2}, {y2})\n",
        f"The box is [{x1}.0, {y1}, {x2}, {y2}].",
    ):
        assert task.score(sample, text) == 1.0, text
    # One pixel too wide on the right: IoU = w*h / ((w+1)*h) = w / (w + 1).
    assert task.score(sample, f"[{x1}, {y1}, {x2 + 1}, {y2}]") == pytest.approx(w / (w + 1))
    # Shifted right by half the width: intersection (w/2)*h over union 1.5*w*h = 1/3 (w may be odd: exact
    # form).
    half = w // 2
    assert task.score(sample, f"[{x1 + half}, {y1}, {x2 + half}, {y2}]") == pytest.approx(
        (w - half) / (w + half)
    )
    for bad in (
        "",
        "no idea",
        f"[{x1}, {y1}, {x2}]",
        f"[{x1}, {y1}, {x2}, {y2}, 7]",
        f"[{x2}, {y1}, {x1}, {y2}]",
    ):
        assert task.score(sample, bad) == 0.0, bad  # partial, extra, inverted or missing numbers earn nothing
    others = [o["box"] for i, o in enumerate(sample.metadata["objects"]) if i != sample.metadata["target"]]
    # a distractor's box never overlaps the gold
    assert all(task.score(sample, str(b)) == 0.0 for b in others)


def test_answers_are_balanced_and_a_constant_guess_scores_near_zero(task: BoxGroundingTask) -> None:
    """Continuous answers: no answer choices (chance level None); the target's name, quadrant, index in the
    object list and size rank are spread evenly, and the best constant box (the mean gold box) earns ~0."""
    n = 1000 if task.config.difficulty == 0 else 300
    samples = [task.sample("train", i, 1) for i in range(n)]
    assert task.answer_choices() is None and task.chance_accuracy() is None
    side = task.config.image_sizes[task.config.difficulty]
    golds = np.array([s.metadata["objects"][s.metadata["target"]]["box"] for s in samples], dtype=float)
    centres = (golds[:, :2] + golds[:, 2:]) / 2
    quadrants = Counter(zip(*(centres >= side / 2).T.tolist()))
    assert max(quadrants.values()) / n <= 0.25 + 0.15
    names = Counter(s.metadata["objects"][s.metadata["target"]]["name"] for s in samples)
    assert len(names) == len(COLOURS) * len(SHAPES) and max(names.values()) / n <= 1 / 18 + 0.15
    slots = len(samples[0].metadata["objects"])
    positions = Counter(s.metadata["target"] for s in samples)
    assert max(positions.values()) / n <= 1 / slots + 0.15
    largest = sum(
        (golds[i, 2] - golds[i, 0]) >= max(o["box"][2] - o["box"][0] for o in s.metadata["objects"])
        for i, s in enumerate(samples)
    )
    assert largest / n <= 1 / slots + 0.15  # the target is not given away by its size
    mean_box = golds.mean(axis=0)
    guess = f"[{mean_box[0]}, {mean_box[1]}, {mean_box[2]}, {mean_box[3]}]"
    assert np.mean([task.score(s, guess) for s in samples]) < 0.05


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "config, message",
    [
        ({"difficulty": 3}, "difficulty must be 0, 1 or 2, got 3"),
        ({"image_sizes": (448, 896)}, r"one entry per difficulty \(3 each\), got 2, 3 and 3"),
        ({"relation_rate": 1.5}, r"relation_rate must be in \[0, 1\], got 1.5"),
        ({"gap": -1}, "gap must be >= 0, got -1"),
        ({"object_sizes": ((40, 64), (60, 50), (24, 48))}, r"difficulty 1 must satisfy.*got \(60, 50\)"),
        (
            {"object_sizes": ((4, 64), (32, 56), (24, 48))},
            r"difficulty 0 must satisfy.*got \(4, 64\) for a 448",
        ),
        ({"distractors": (1, 8, 14)}, "difficulty 0 needs at least 2 distractors.*got 1"),
        ({"distractors": (4, 8, 3)}, "difficulty 2 needs at least 4 distractors.*got 3"),
        ({"distractors": (40, 8, 14)}, "difficulty 0 is too crowded: 41 objects of up to 64 px"),
    ],
)
def test_invalid_config_raises_with_the_values(config: dict, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        BoxGroundingTask(config)


def test_valid_edge_configs() -> None:
    # Relations off lets difficulty 2 run with only the two confusers; every question is then plain.
    task = BoxGroundingTask({"difficulty": 2, "relation_rate": 0.0, "distractors": (2, 2, 2)})
    assert all(task.sample("train", i, 0).metadata["relation"] is None for i in range(20))
    # Every difficulty-2 question relational with the fewest distractors: 4 (twin, anchor and two confusers).
    task = BoxGroundingTask({"difficulty": 2, "relation_rate": 1.0, "distractors": (2, 2, 4)})
    samples = [task.sample("train", i, 0) for i in range(20)]
    assert all(s.metadata["relation"] is not None and len(s.metadata["objects"]) == 5 for s in samples)
