"""Tests of tasks/spatial_2d.py (``vgym.tasks.spatial_2d``): env contract, determinism, split disjointness,
answer balance, scene ground truth read back from the pixels, the gold answer re-derived from those pixels,
oracle episodes, scoring, config validation and :func:`shape_mask`.

Objects are recovered from the image (connected components of exact palette colours, the shape told apart by
how much of its box it fills), and relations and distances are recomputed here from those components with
other formulas (angles from ``atan2``, squared distances), so the checks do not replay the generator.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import cv2
import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from split_checks import assert_disjoint_splits, image_digest

import vgym  # noqa: F401  (registers the core envs first)
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError
from vgym.protocol import HermesProtocol
from vgym.task import SPLITS, Sample
from vgym.tasks.spatial_2d import (
    COLOURS,
    LETTERS,
    PALETTES,
    RELATIONS,
    SHAPES,
    SIMILAR,
    TASK_NAME,
    Spatial2dConfig,
    Spatial2dTask,
    shape_mask,
)

DIFFICULTIES = (0, 1, 2)  # every difficulty Spatial2dConfig accepts (test_invalid_config: 3 is rejected)
SIDES = {0: (36, 52), 1: (25, 36), 2: (17, 24)}  # object_size 52 times 1, 0.7, 0.46; the smallest 0.7 of that
# objects 8 * (2 + d) // 2, 3 fewer at least; difficulty 2 +2 twins
COUNTS = {0: (6, 8), 1: (9, 12), 2: (13, 18)}
BALANCE_SAMPLES = 1000  # per split (~0.6 ms a render)
PROTOCOL = HermesProtocol()


@pytest.fixture(scope="module", params=DIFFICULTIES, ids=lambda d: f"difficulty{d}")
def task(request: pytest.FixtureRequest) -> Spatial2dTask:
    return Spatial2dTask({"difficulty": request.param})


@pytest.fixture(scope="module")
def many() -> dict[str, list[Sample]]:
    """BALANCE_SAMPLES difficulty-0 samples of every split (seed 0)."""
    task = Spatial2dTask()
    return {split: [task.sample(split, i, 0) for i in range(BALANCE_SAMPLES)] for split in SPLITS}


def _objects_in_pixels(image: np.ndarray) -> dict[str, tuple[int, int, int, int]]:
    """``{name: box}`` of every 8-connected blob of one exact palette colour; the shape from the share of its
    box it fills (square 1, circle ~pi/4, triangle ~1/2)."""
    found = {}
    for colour, rgb in COLOURS.items():
        mask = (image == rgb).all(axis=-1).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for x, y, w, h, area in stats[1:n]:
            fill = area / (w * h)
            shape = "square" if fill > 0.97 else "circle" if fill > 0.68 else "triangle"
            name = f"{colour} {shape}"
            assert name not in found, f"{name} occurs twice"
            found[name] = (int(x), int(y), int(x + w), int(y + h))
    return found


def _centre(box: tuple[int, ...]) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _gold_text(sample: Sample) -> str:
    return sample.metadata["options"][sample.metadata["gold_index"]]


# ---------------------------------------------------------------- env contract, determinism and splits


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_check_env(difficulty: int) -> None:
    env = gymnasium.make("vgym/Spatial2d-v0", task_config={"difficulty": difficulty})
    try:
        check_env(env.unwrapped)
    finally:
        env.close()


def test_same_arguments_give_the_same_sample(task: Spatial2dTask) -> None:
    a, b = task.sample("train", 5, 0), Spatial2dTask(task.config).sample("train", 5, 0)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    assert (a.id, a.question, a.answer, a.metadata) == (b.id, b.question, b.answer, b.metadata)


@pytest.mark.parametrize(
    "other",
    [("train", 5, 1), ("train", 6, 0), ("val", 5, 0), ("test", 5, 0)],
    ids=["seed", "index", "val", "test"],
)
def test_changing_seed_index_or_split_changes_the_sample(
    task: Spatial2dTask, other: tuple[str, int, int]
) -> None:
    a, b = task.sample("train", 5, 0), task.sample(*other)
    assert a.id != b.id
    assert image_digest(a) != image_digest(b)


def test_splits_are_disjoint(many: dict[str, list[Sample]]) -> None:
    digests = {split: {image_digest(s) for s in samples} for split, samples in many.items()}
    assert_disjoint_splits(digests, BALANCE_SAMPLES)


def test_sample_id() -> None:
    assert Spatial2dTask().sample("val", 7, 3).id == "spatial_2d/val/3/7"


def test_answers_are_balanced(many: dict[str, list[Sample]]) -> None:
    """Letters, kinds and relations are each close to uniform (bound: 1/len + 0.15 for the letters)."""
    for split, samples in many.items():
        letters = Counter(s.answer for s in samples)
        assert set(letters) == set(LETTERS)
        # measured 0.286 on train
        assert max(letters.values()) / len(samples) <= 0.25 + 0.15, (split, letters)
        assert max(letters.values()) / len(samples) <= 0.32, (split, letters)  # a tighter, measured bound
        kinds = Counter(s.metadata["kind"] for s in samples)
        assert set(kinds) == {"relation", "nearest"} and min(kinds.values()) >= 0.4 * len(samples)
        relations = Counter(_gold_text(s) for s in samples if s.metadata["kind"] == "relation")
        assert set(relations) == set(RELATIONS) and min(relations.values()) >= 0.18 * kinds["relation"]


# ---------------------------------------------------------------- scene ground truth and the gold answer


@pytest.mark.parametrize("index", range(12))
def test_scene_matches_its_metadata(task: Spatial2dTask, index: int) -> None:
    sample = task.sample("test", index, 0)
    (image,) = sample.images
    assert image.shape == (448, 448, 3) and image.dtype == np.uint8
    found = _objects_in_pixels(image)
    objects = sample.metadata["objects"]
    assert {o["name"]: tuple(o["box"]) for o in objects} == found
    assert COUNTS[task.config.difficulty][0] <= len(objects) <= COUNTS[task.config.difficulty][1]
    palette = set(PALETTES[task.config.difficulty])
    lo, hi = SIDES[task.config.difficulty]
    for obj in objects:
        colour, shape = obj["name"].split()
        assert colour in palette and shape in SHAPES
        x1, y1, x2, y2 = obj["box"]
        assert x2 - x1 == y2 - y1 and lo <= x2 - x1 <= hi
        x, y = obj["point"]
        assert (image[y, x] == COLOURS[colour]).all()  # the point is on the object
    # Boxes keep 4 px apart (gap) and 4 px from the edge, so grounding a name can never pick up a neighbour.
    boxes = np.array([o["box"] for o in objects])
    assert boxes[:, :2].min() >= 4 and boxes[:, 2:].max() <= 448 - 4
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            assert max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3]) >= 4


def _relation_here(a: np.ndarray, b: np.ndarray, side: float) -> str | None:
    """Where centre ``a`` lies from ``b`` in image coordinates (y down), by its angle: within atan(0.4) =
    21.8° of an axis and at least one object side away along it, else None."""
    dx, dy = a - b
    angle = math.degrees(math.atan2(-dy, dx)) % 360  # 0 right, 90 up (the image's y axis points down)
    limit = math.degrees(math.atan(0.4)) + 1e-9  # the generator allows exactly 0.4 (e.g. dx 16, dy -40)
    for centre, name, along in ((180, "to the left", dx), (0, "to the right", dx), (90, "above", dy),
                                (270, "below", dy)):
        if min(abs(angle - centre), 360 - abs(angle - centre)) <= limit and abs(along) >= side:
            return name
    return None


@pytest.mark.parametrize("index", range(40))
def test_gold_option_is_the_only_true_one_in_the_pixels(task: Spatial2dTask, index: int) -> None:
    sample = task.sample("val", index, 0)
    found = _objects_in_pixels(sample.images[0])
    options = sample.metadata["options"]
    assert sample.answer == LETTERS[sample.metadata["gold_index"]]
    assert sample.question.endswith("\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, options)))
    if sample.metadata["kind"] == "relation":
        a, b = re.match(
            r"Where is the (\w+ \w+) relative to the (\w+ \w+), comparing", sample.question
        ).groups()
        side = max(found[a][2] - found[a][0], found[b][2] - found[b][0])
        assert sorted(options) == sorted(RELATIONS)
        assert _relation_here(_centre(found[a]), _centre(found[b]), side) == _gold_text(sample)
    else:
        pattern = r"Which of these (\w+)s is nearest to the (\w+ \w+), comparing"
        shape, anchor = re.match(pattern, sample.question).groups()
        assert len(set(options)) == 4 and all(o.endswith(" " + shape) and o != anchor for o in options)
        squared = [float(((_centre(found[o]) - _centre(found[anchor])) ** 2).sum()) for o in options]
        order = np.argsort(squared)
        assert order[0] == sample.metadata["gold_index"]
        near, runner_up = math.sqrt(squared[order[0]]), math.sqrt(squared[order[1]])
        largest = max(found[n][2] - found[n][0] for n in (anchor, *options))
        assert runner_up >= 1.3 * near and runner_up - near >= largest


def test_difficulty2_shows_look_alike_twins_of_the_questions_objects() -> None:
    task = Spatial2dTask({"difficulty": 2})
    with_twin = 0
    for index in range(100):
        sample = task.sample("train", index, 0)
        names = {o["name"] for o in sample.metadata["objects"]}
        anchor = sample.metadata["queries"][0]  # the subject or the anchor
        colour, shape = anchor.split()
        with_twin += f"{SIMILAR[colour]} {shape}" in names
    assert with_twin == 100  # a free spot is always found at the default sizes


def test_names_never_contain_one_another() -> None:
    """Single-word colours and shapes: the oracle ground backend matches a name's words, so "red circle" must
    not also match another object (it would if e.g. "dark red circle" existed)."""
    words = [c for c in COLOURS] + list(SHAPES)
    assert all(len(w.split()) == 1 for w in words) and len(set(words)) == len(words)
    # a shape word then grounds <= 10 objects, the tool's limit
    assert all(len(p) <= 10 for p in PALETTES.values())
    assert all(SIMILAR[SIMILAR[c]] == c and SIMILAR[c] in PALETTES[2] for c in PALETTES[2])


# ---------------------------------------------------------------- oracle episodes


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
@pytest.mark.parametrize("tools", [None, ()], ids=["default-tools", "tools-off"])
def test_oracle_episode_earns_full_reward(difficulty: int, tools: tuple[str, ...] | None) -> None:
    env = VisualToolEnv(TASK_NAME, task_config={"difficulty": difficulty}, tools=tools, split="val")
    assert tuple(env.tools) == (("ground",) if tools is None else ())
    try:
        for index in range(50):
            env.reset(options={"index": index})
            sample = env.sample
            boxes = {o["name"]: o["box"] for o in sample.metadata["objects"]}
            solution = env.task.solution(sample, tools_enabled=env.tools_enabled)
            assert len(solution.tool_calls) == (2 if tools is None else 0)
            grounded = []
            for name, arguments in solution.tool_calls:
                obs, reward, terminated, truncated, info = env.step(
                    PROTOCOL.format_tool_call(name, arguments)
                )
                assert not (terminated or truncated) and info["tool_calls"][0]["ok"]
                listed, _ = json.JSONDecoder().raw_decode(obs["text"].split("best first:\n")[1])
                grounded.append([d["box"] for d in listed])
            if tools is None:  # the responses hold every box the question needs
                assert grounded[0] == [boxes[solution.tool_calls[0][1]["query"]]]
                wanted = sample.metadata["options"] if sample.metadata["kind"] == "nearest" else [
                    solution.tool_calls[1][1]["query"]]
                assert all(boxes[n] in grounded[1] for n in wanted)
            obs, reward, terminated, truncated, info = env.step(PROTOCOL.format_answer(solution.answer))
            assert terminated and reward >= 0.99, (index, info)
            assert info["reward_parts"]["accuracy"] == 1.0
    finally:
        env.close()


def test_solution_grounds_the_named_objects_only_when_tools_are_on(many: dict[str, list[Sample]]) -> None:
    task = Spatial2dTask()
    relation = next(s for s in many["train"] if s.metadata["kind"] == "relation")
    nearest = next(s for s in many["train"] if s.metadata["kind"] == "nearest")
    a, b = re.match(r"Where is the (\w+ \w+) relative to the (\w+ \w+),", relation.question).groups()
    assert task.solution(relation, True).tool_calls == (("ground", {"query": a}), ("ground", {"query": b}))
    shape, anchor = re.match(r"Which of these (\w+)s is nearest to the (\w+ \w+),", nearest.question).groups()
    assert task.solution(nearest, True).tool_calls == (
        ("ground", {"query": anchor}),
        ("ground", {"query": shape}),
    )
    for sample in (relation, nearest):
        assert task.solution(sample, False).tool_calls == ()
        assert task.solution(sample, False).answer == sample.answer


# ---------------------------------------------------------------- scoring


@pytest.mark.parametrize("index", range(6))
def test_score_accepts_the_letter_or_the_option_text_and_nothing_else(index: int) -> None:
    task = Spatial2dTask()
    sample = task.sample("test", index, 0)
    letter, text = sample.answer, _gold_text(sample)
    for good in (letter, letter.lower(), f" {letter} \n", f"({letter})", f"{letter}.", f"{letter})", text,
                 text.upper(), f"The {text}."):
        assert task.score(sample, good) == 1.0, good
    others = [x for x in LETTERS if x != letter]
    for bad in (
        *others,
        *(o for o in sample.metadata["options"] if o != text),
        "",
        "E",
        f"{letter} or {others[0]}",
        f"{letter}{others[0]}",
        "left",
        f"{letter}. {text} or {others[0]}",
    ):
        assert task.score(sample, bad) == 0.0, bad


def test_answer_choices_and_chance() -> None:
    assert Spatial2dTask().answer_choices() == ("A", "B", "C", "D")
    assert Spatial2dTask().chance_accuracy() == pytest.approx(0.25)


def test_prompt_holds_the_question_and_the_answer_format() -> None:
    task = Spatial2dTask()
    sample = task.sample("train", 0, 0)
    for tools_enabled in (True, False):
        prompt = task.prompt(sample, tools_enabled)
        assert prompt.startswith(sample.question) and "letter (A, B, C or D)" in prompt


# ---------------------------------------------------------------- config validation and shape_mask


@pytest.mark.parametrize(
    "config, message",
    [
        ({"difficulty": 3}, "difficulty must be 0, 1 or 2, got 3"),
        ({"objects": 5}, "objects must be >= 6.*got 5"),
        ({"object_size": 19}, "object_size >= 20.*got object_size=19, gap=4"),
        ({"gap": 0}, "gap >= 1.*gap=0"),
        ({"axis_margin": 0.5}, "axis_margin >= 1.*got axis_margin=0.5,"),
        ({"off_axis_ratio": 1.0}, "0 <= off_axis_ratio < 1.*off_axis_ratio=1.0,"),
        ({"nearest_ratio": 1.0}, "nearest_ratio > 1.*nearest_ratio=1.0"),
        ({"size": 300}, "a 300-px scene is too small for 8 objects.*of up to 52 px"),
        ({"difficulty": 2, "objects": 40}, "too small for 80 objects .*of up to 24 px"),
    ],
)
def test_invalid_config_raises_with_the_bad_values(config: dict, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        Spatial2dConfig(**config)


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_smallest_valid_scene_still_renders(difficulty: int) -> None:
    """The tightest layout the size check allows (objects * 4 padded areas) still finds questions quickly."""
    size = {0: 363, 1: 308, 2: 246}[difficulty]  # smallest sizes with objects=8 that pass the room check
    Spatial2dConfig(difficulty=difficulty, size=size)
    with pytest.raises(InvalidConfigError):
        Spatial2dConfig(difficulty=difficulty, size=size - 1)
    task = Spatial2dTask({"difficulty": difficulty, "size": size})
    for index in range(5):
        sample = task.sample("train", index, 0)
        assert set(_objects_in_pixels(sample.images[0])) == {o["name"] for o in sample.metadata["objects"]}


def test_task_rejects_a_foreign_config() -> None:
    with pytest.raises(InvalidConfigError, match="spatial_2d expects a Spatial2dConfig, got int"):
        Spatial2dTask(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("side", [4, 5, 16, 17, 52])
def test_shape_masks_touch_every_edge_and_fill_as_expected(side: int) -> None:
    fills = {}
    for shape in SHAPES:
        mask = shape_mask(shape, side)
        assert mask.shape == (side, side) and mask.dtype == bool
        # tight box = square
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()
        assert mask[side // 2, side // 2]  # the box centre the metadata calls "point" is inside
        fills[shape] = mask.mean()
    assert fills["square"] == 1.0
    if side >= 16:  # pi/4 and 1/2 (plus the pixel rim) once shapes are big enough to tell apart
        assert 0.75 <= fills["circle"] <= 0.87 and 0.45 <= fills["triangle"] <= 0.6


def test_shape_mask_rejects_bad_arguments() -> None:
    with pytest.raises(
        ValueError, match=r"need a shape in \('circle', 'square', 'triangle'\).*'star', side=8"
    ):
        shape_mask("star", 8)
    with pytest.raises(ValueError, match="side=3"):
        shape_mask("circle", 3)
