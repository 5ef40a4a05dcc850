"""Tests of tasks/visual_search.py (``vgym.tasks.visual_search``): determinism, split disjointness, scene ground
truth, scoring, and the proof that the default budget makes the crop tool necessary.

Marker positions are recovered from the pixels (connected runs of exact marker colours) instead of replaying the
generator, so the checks are independent of the code that drew the scene.
"""

from __future__ import annotations

import hashlib
import math

import cv2
import numpy as np
import pytest

from vgym.env import EnvConfig
from vgym.errors import InvalidConfigError
from vgym.task import SPLITS, Sample
from vgym.tasks.visual_search import COLOURS, TASK_NAME, VisualSearchConfig, VisualSearchTask
from vgym.tooling import fit_to_budget

DIFFICULTIES = [0, 1]
MAX_PIXELS = EnvConfig(task=TASK_NAME).max_pixels  # the env's default image budget (224 * 224)
PALETTE = np.array(list(COLOURS.values()), dtype=np.float64)
NAMES = list(COLOURS)
VIT_PATCH = 14  # pixels per side of one ViT patch (Qwen2.5-VL)


@pytest.fixture(scope="module", params=DIFFICULTIES, ids=lambda d: f"difficulty{d}")
def task(request: pytest.FixtureRequest) -> VisualSearchTask:
    return VisualSearchTask({"difficulty": request.param})


def _digest(sample: Sample) -> str:
    return hashlib.sha1(sample.images[0].tobytes()).hexdigest()


def _marker_boxes(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x1, y1, x2, y2)`` of every solid run of an exact marker colour (speckles practically never hit one
    of the six RGB triples, and a one-pixel speckle that did would show up as a wrongly sized box)."""
    packed = image.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32)
    palette = PALETTE.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32)
    mask = np.isin(packed, palette).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    return [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in stats[1:n]]


def _inside(inner: list[int] | tuple[int, ...], outer: list[int] | tuple[int, ...]) -> bool:
    return outer[0] <= inner[0] < inner[2] <= outer[2] and outer[1] <= inner[1] < inner[3] <= outer[3]


# ---------------------------------------------------------------- determinism and splits


def test_same_arguments_give_the_same_sample(task: VisualSearchTask) -> None:
    a, b = task.sample("train", 5, 0), VisualSearchTask(task.config).sample("train", 5, 0)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    assert (a.id, a.question, a.answer, dict(a.metadata)) == (b.id, b.question, b.answer, dict(b.metadata))


@pytest.mark.parametrize(
    "other", [("train", 5, 1), ("train", 6, 0), ("val", 5, 0), ("test", 5, 0)], ids=["seed", "index", "val", "test"]
)
def test_changing_seed_index_or_split_changes_the_sample(task: VisualSearchTask, other: tuple[str, int, int]) -> None:
    a, b = task.sample("train", 5, 0), task.sample(*other)
    assert a.id != b.id
    assert _digest(a) != _digest(b)


def test_splits_are_disjoint() -> None:
    task = VisualSearchTask()
    digests = {split: {_digest(task.sample(split, i, 0)) for i in range(50)} for split in SPLITS}
    assert all(len(d) == 50 for d in digests.values())  # no repeats inside a split either
    assert not digests["train"] & digests["val"]
    assert not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]


def test_sample_id() -> None:
    assert VisualSearchTask().sample("val", 7, 3).id == "visual_search/val/3/7"


# ---------------------------------------------------------------- scene ground truth


@pytest.mark.parametrize("index", range(12))
def test_scene_matches_its_metadata(task: VisualSearchTask, index: int) -> None:
    cfg = task.config
    sample = task.sample("test", index, 0)
    (image,) = sample.images
    size = cfg.grid * cfg.cell  # 24 * 56 = 1344 by default
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert sample.answer in COLOURS and sample.metadata["colour"] == sample.answer
    rx1, ry1, rx2, ry2 = sample.metadata["region"]
    assert sample.question == f"What colour is the square in the region [{rx1}, {ry1}, {rx2}, {ry2}]?"

    x1, y1, x2, y2 = sample.metadata["target_box"]
    side = 8 if cfg.difficulty == 0 else 6  # marker_size, or 3/4 of it at difficulty 1
    assert (x2 - x1, y2 - y1) == (side, side)
    # The target's pixels really are the answer's colour, inside a 1-pixel black frame.
    assert (image[y1:y2, x1:x2] == COLOURS[sample.answer]).all()
    framed = image[y1 - 1 : y2 + 1, x1 - 1 : x2 + 1].copy()
    framed[1:-1, 1:-1] = 0
    assert not framed.any()

    region = sample.metadata["region"]
    assert _inside(sample.metadata["target_box"], region)
    assert _inside(region, (0, 0, size, size))
    rw, rh = region[2] - region[0], region[3] - region[1]
    if cfg.difficulty == 0:
        r, c = sample.metadata["cell"]
        assert region == [c * cfg.cell, r * cfg.cell, (c + 1) * cfg.cell, (r + 1) * cfg.cell]
    else:
        assert cfg.cell // 2 <= rw < cfg.cell and cfg.cell // 2 <= rh < cfg.cell


@pytest.mark.parametrize("index", range(25))
def test_region_holds_exactly_one_marker_centre(task: VisualSearchTask, index: int) -> None:
    sample = task.sample("train", index, 0)
    boxes = _marker_boxes(sample.images[0])
    side = 8 if task.config.difficulty == 0 else 6
    assert len(boxes) == task.config.grid**2  # one marker per cell, all found
    assert all((x2 - x1, y2 - y1) == (side, side) for x1, y1, x2, y2 in boxes)
    x1, y1, x2, y2 = sample.metadata["region"]
    centres = [((bx1 + bx2) / 2, (by1 + by2) / 2) for bx1, by1, bx2, by2 in boxes]
    inside = [b for b, (cx, cy) in zip(boxes, centres) if x1 <= cx < x2 and y1 <= cy < y2]
    assert inside == [tuple(sample.metadata["target_box"])]


# ---------------------------------------------------------------- scoring and oracle


@pytest.mark.parametrize("index", range(4))
def test_oracle_answer_scores_one_and_every_other_colour_zero(task: VisualSearchTask, index: int) -> None:
    sample = task.sample("val", index, 0)
    solution = task.solution(sample, tools_enabled=True)
    assert task.score(sample, solution.answer) == 1.0
    assert task.score(sample, f" The {sample.answer.upper()}. ") == 1.0  # normalised
    for wrong in set(COLOURS) - {sample.answer}:
        assert task.score(sample, wrong) == 0.0
    assert task.score(sample, f"{sample.answer} or blue") == 0.0
    assert task.score(sample, "") == 0.0


def test_solution_crops_the_region_only_when_tools_are_on() -> None:
    task = VisualSearchTask()
    sample = task.sample("train", 0, 0)
    assert task.solution(sample, tools_enabled=True).tool_calls == (("crop", {"box": sample.metadata["region"]}),)
    assert task.solution(sample, tools_enabled=False).tool_calls == ()


def test_prompt_holds_the_question() -> None:
    task = VisualSearchTask()
    sample = task.sample("train", 0, 0)
    assert task.prompt(sample, tools_enabled=True).startswith(sample.question)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"difficulty": 2}, "difficulty must be 0 or 1, got 2"),
        ({"cell": 31, "marker_size": 8}, r"cell >= 4 \* marker_size"),
        ({"grid": 1}, "need grid >= 2"),
        ({"marker_size": 1}, "marker_size >= 2"),
    ],
)
def test_invalid_config(config: dict, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        VisualSearchConfig(**config)


def test_task_rejects_a_foreign_config() -> None:
    with pytest.raises(InvalidConfigError, match="visual_search expects a VisualSearchConfig, got int"):
        VisualSearchTask(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- tool necessity


@pytest.mark.parametrize("index", range(3))
def test_marker_is_sub_patch_at_the_budget_and_a_patch_wide_in_the_zoomed_crop(index: int) -> None:
    task = VisualSearchTask()  # the default config the env uses
    sample = task.sample("test", index, 0)
    full = sample.images[0]
    x1, _, x2, _ = sample.metadata["target_box"]
    side = x2 - x1
    # Whole scene at the budget: 8 px * 224 / 1344 = 1.33 px, less than two pixels.
    shown = fit_to_budget(full, MAX_PIXELS)
    assert shown.shape[:2] == (224, 224)
    assert side * shown.shape[1] / full.shape[1] < 2
    # The oracle crop (one cell) zoomed to the budget: 8 px * 224 / 56 = 32 px (with the older 112 px cells,
    # 16 px), at least one 14 px ViT patch either way.
    rx1, ry1, rx2, ry2 = sample.metadata["region"]
    crop = full[ry1:ry2, rx1:rx2]
    zoomed = fit_to_budget(crop, MAX_PIXELS, upscale=True)
    assert side * zoomed.shape[1] / crop.shape[1] >= VIT_PATCH


def _read_colour(image: np.ndarray, box: tuple[float, float, float, float]) -> str:
    """The COLOURS entry nearest to the mean colour of every pixel that ``box`` touches."""
    x1, y1, x2, y2 = box
    patch = image[math.floor(y1) : math.ceil(y2), math.floor(x1) : math.ceil(x2)].reshape(-1, 3)
    distances = ((PALETTE - patch.mean(axis=0)) ** 2).sum(axis=1)
    return NAMES[int(np.argmin(distances))]


READOUT_SAMPLES = 200


@pytest.fixture(scope="module")
def readout_accuracy() -> dict[str, float]:
    """Colour read-out accuracy of a reader that knows exactly where the target is, on (a) the whole scene fitted
    to the budget and (b) the oracle crop zoomed to the budget."""
    task = VisualSearchTask()
    hits = {"budget": 0, "crop": 0}
    for index in range(READOUT_SAMPLES):
        sample = task.sample("test", index, 0)
        full = sample.images[0]
        tx1, ty1, tx2, ty2 = sample.metadata["target_box"]

        shown = fit_to_budget(full, MAX_PIXELS)
        sx, sy = shown.shape[1] / full.shape[1], shown.shape[0] / full.shape[0]
        hits["budget"] += _read_colour(shown, (tx1 * sx, ty1 * sy, tx2 * sx, ty2 * sy)) == sample.answer

        rx1, ry1, rx2, ry2 = sample.metadata["region"]
        crop = full[ry1:ry2, rx1:rx2]
        zoomed = fit_to_budget(crop, MAX_PIXELS, upscale=True)
        zx, zy = zoomed.shape[1] / crop.shape[1], zoomed.shape[0] / crop.shape[0]
        box = ((tx1 - rx1) * zx, (ty1 - ry1) * zy, (tx2 - rx1) * zx, (ty2 - ry1) * zy)
        hits["crop"] += _read_colour(zoomed, box) == sample.answer
    return {k: v / READOUT_SAMPLES for k, v in hits.items()}


def test_colour_reads_out_reliably_from_the_zoomed_crop(readout_accuracy: dict[str, float]) -> None:
    assert readout_accuracy["crop"] >= 0.99


@pytest.mark.xfail(
    strict=True,
    reason=(
        "Known task-design gap: the nearest-palette read-out at the target's known location in the budget image "
        "measured 0.965 (crop: 1.00) over 200 test samples (0.95 with the older 12x112 grid), so at the default "
        "budget the crop is not yet necessary for a reader that can locate the target. Remove this mark when the "
        "task is made harder."
    ),
)
def test_colour_does_not_read_out_from_the_budget_image(readout_accuracy: dict[str, float]) -> None:
    # Chance is 1/6; the claim is that the budget image leaves the reader well short of the crop's ~100%.
    assert readout_accuracy["budget"] <= 0.5
