"""Tests of tasks/visual_search.py (``vgym.tasks.visual_search``): determinism, split disjointness, scene
ground truth, scoring, config validation, :func:`pattern_tile`, and the proof that the default budget makes
the crop tool necessary.

Markers and their patterns are recovered from the pixels (framed squares of exact white and palette pixels,
read against a mask built here) instead of replaying the generator, so the checks are independent of the code
that drew the scene. The necessity proof re-renders each scene with the target's pattern swapped for each of
the three and shows (1) the budget images are byte-identical, so the answer is not in what the model sees
without tools, and (2) the zoomed crop differs and a simple gradient read-out names the pattern from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from split_checks import assert_disjoint_splits, image_digest

from vgym.env import EnvConfig
from vgym.errors import InvalidConfigError
from vgym.task import SPLITS, Sample
from vgym.tasks.visual_search import (
    COLOURS,
    PATTERNS,
    TASK_NAME,
    VisualSearchConfig,
    VisualSearchTask,
    pattern_tile,
)
from vgym.tooling import fit_to_budget

DIFFICULTIES = (0, 1, 2)  # every difficulty VisualSearchConfig accepts (test_invalid_config: 3 is rejected)
MAX_PIXELS = EnvConfig(task=TASK_NAME).max_pixels  # the env's default image budget (224 * 224)
VIT_PATCH = 14  # pixels per side of one ViT patch (Qwen2.5-VL)
WHITE = (255, 255, 255)
SIDE = {0: 18, 1: 18, 2: 12}  # marker side per difficulty: marker_size 18, and 2/3 of it at difficulty 2


@pytest.fixture(scope="module", params=DIFFICULTIES, ids=lambda d: f"difficulty{d}")
def task(request: pytest.FixtureRequest) -> VisualSearchTask:
    return VisualSearchTask({"difficulty": request.param})


def _pack(rgb: np.ndarray) -> np.ndarray:
    """One int32 per RGB triple, so exact colours can be matched with ``np.isin``."""
    return np.asarray(rgb, dtype=np.int32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int32)


def _marker_boxes(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x1, y1, x2, y2)`` of every solid square of exact white and palette pixels inside an all-black
    1-pixel frame (speckles practically never hit one of those seven RGB triples, and never inside a black
    ring)."""
    allowed = _pack([*COLOURS.values(), WHITE])
    mask = np.isin(_pack(image), allowed).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    boxes = []
    for x, y, w, h, area in stats[1:n]:
        if area != w * h or x == 0 or y == 0:
            continue
        ring = image[y - 1 : y + h + 1, x - 1 : x + w + 1].copy()
        ring[1:-1, 1:-1] = 0
        if not ring.any():
            boxes.append((int(x), int(y), int(x + w), int(y + h)))
    return boxes


def _read_exact_pattern(tile: np.ndarray, stripe: int) -> tuple[str, tuple[int, int, int]] | None:
    """``(pattern, colour)`` if ``tile`` is exactly one palette colour and white laid out as ``stripe``-pixel
    horizontal lines, vertical lines or checker squares (either phase), else None."""
    coloured = ~(tile == WHITE).all(axis=-1)
    colours = {tuple(int(v) for v in p) for p in tile[coloured]}
    if len(colours) != 1 or not colours <= set(COLOURS.values()):
        return None
    side = tile.shape[0]
    bands = (np.arange(side) // stripe) % 2 == 0  # stripe-wide runs: True, False, True, ...
    expected = {
        "horizontal": np.repeat(bands[:, None], side, axis=1),
        "vertical": np.repeat(bands[None, :], side, axis=0),
        "checkered": bands[:, None] == bands[None, :],
    }
    found = [name for name, m in expected.items() if (coloured == m).all() or (coloured == ~m).all()]
    return (found[0], colours.pop()) if len(found) == 1 else None


def _inside(inner: list[int] | tuple[int, ...], outer: list[int] | tuple[int, ...]) -> bool:
    return outer[0] <= inner[0] < inner[2] <= outer[2] and outer[1] <= inner[1] < inner[3] <= outer[3]


# ---------------------------------------------------------------- determinism and splits


def test_same_arguments_give_the_same_sample(task: VisualSearchTask) -> None:
    a, b = task.sample("train", 5, 0), VisualSearchTask(task.config).sample("train", 5, 0)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    assert (a.id, a.question, a.answer, dict(a.metadata)) == (b.id, b.question, b.answer, dict(b.metadata))


@pytest.mark.parametrize(
    "other",
    [("train", 5, 1), ("train", 6, 0), ("val", 5, 0), ("test", 5, 0)],
    ids=["seed", "index", "val", "test"],
)
def test_changing_seed_index_or_split_changes_the_sample(
    task: VisualSearchTask, other: tuple[str, int, int]
) -> None:
    a, b = task.sample("train", 5, 0), task.sample(*other)
    assert a.id != b.id
    assert image_digest(a) != image_digest(b)


def test_splits_are_disjoint_and_answers_vary() -> None:
    task = VisualSearchTask()
    samples = {split: [task.sample(split, i, 0) for i in range(25)] for split in SPLITS}
    digests = {split: {image_digest(s) for s in ss} for split, ss in samples.items()}
    assert_disjoint_splits(digests, 25)
    # Every pattern is an answer somewhere, and colours vary independently of it (chance 1/3, not 1).
    assert {s.answer for ss in samples.values() for s in ss} == set(PATTERNS)
    assert len({s.metadata["colour"] for ss in samples.values() for s in ss}) == len(COLOURS)


def test_sample_id() -> None:
    assert VisualSearchTask().sample("val", 7, 3).id == "visual_search/val/3/7"


# ---------------------------------------------------------------- scene ground truth


@pytest.mark.parametrize("index", range(8))
def test_scene_matches_its_metadata(task: VisualSearchTask, index: int) -> None:
    cfg = task.config
    sample = task.sample("test", index, 0)
    (image,) = sample.images
    size = cfg.grid * cfg.cell  # 24 * 56 = 1344 by default
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert sample.answer in PATTERNS and sample.metadata["pattern"] == sample.answer
    assert sample.metadata["colour"] in COLOURS
    rx1, ry1, rx2, ry2 = region = sample.metadata["region"]
    assert sample.question == f"What pattern is on the square in the region [{rx1}, {ry1}, {rx2}, {ry2}]?"

    # The target box is a framed marker found in the pixels, on the align grid, and its pixels are the
    # answer's
    # pattern in the metadata's colour; every other marker holds some pattern in some palette colour.
    side = SIDE[cfg.difficulty]
    boxes = _marker_boxes(image)
    target = tuple(sample.metadata["target_box"])
    assert target in boxes
    assert target[2] - target[0] == target[3] - target[1] == side
    reads = {b: _read_exact_pattern(image[b[1] : b[3], b[0] : b[2]], cfg.stripe) for b in boxes}
    assert reads[target] == (sample.answer, COLOURS[sample.metadata["colour"]])
    assert None not in reads.values()

    r, c = sample.metadata["cell"]
    cell_box = (c * cfg.cell, r * cfg.cell, (c + 1) * cfg.cell, (r + 1) * cfg.cell)
    assert _inside(target, cell_box)
    assert _inside(target, region)
    assert _inside(region, (0, 0, size, size))
    if cfg.difficulty == 0:
        assert tuple(region) == cell_box
    elif cfg.difficulty == 1:  # the marker plus half its side on every side, clipped to the scene
        m = side // 2
        grown = (target[0] - m, target[1] - m, target[2] + m, target[3] + m)
        assert region == [max(0, grown[0]), max(0, grown[1]), min(size, grown[2]), min(size, grown[3])]
    else:  # a random box inside the cell around the target
        assert _inside(region, cell_box)


def test_difficulty1_region_is_clipped_to_the_scene() -> None:
    """A marker one align step (6 px) from the scene's edge is closer to it than the 9 px margin. On a 2x2
    board of the smallest cells every marker is in an edge cell and 1 in 3 sits at the edge on each axis."""
    task = VisualSearchTask({"grid": 2, "cell": 42, "difficulty": 1})
    regions = [task.sample("train", i, 0).metadata["region"] for i in range(30)]
    assert all(_inside(r, (0, 0, 84, 84)) for r in regions)
    # some were clipped (the margin alone never reaches 0 or 84)
    assert any(0 in r or 84 in r for r in regions)


@pytest.mark.parametrize("index", range(20))
def test_region_holds_exactly_one_marker_centre_and_markers_sit_on_the_align_grid(
    task: VisualSearchTask, index: int
) -> None:
    cfg = task.config
    sample = task.sample("train", index, 0)
    boxes = _marker_boxes(sample.images[0])
    side = SIDE[cfg.difficulty]
    assert len(boxes) == cfg.grid**2  # one marker per cell, all found
    assert all((x2 - x1, y2 - y1) == (side, side) for x1, y1, x2, y2 in boxes)
    assert all(x1 % cfg.align == 0 and y1 % cfg.align == 0 for x1, y1, _, _ in boxes)
    x1, y1, x2, y2 = sample.metadata["region"]
    centres = [((bx1 + bx2) / 2, (by1 + by2) / 2) for bx1, by1, bx2, by2 in boxes]
    inside = [b for b, (cx, cy) in zip(boxes, centres) if x1 <= cx < x2 and y1 <= cy < y2]
    assert inside == [tuple(sample.metadata["target_box"])]


# ---------------------------------------------------------------- pattern_tile


@pytest.mark.parametrize("stripe, side", [(1, 6), (1, 12), (3, 12), (3, 18)])
def test_pattern_tiles_cover_every_aligned_period_block_equally(stripe: int, side: int) -> None:
    colour = COLOURS["red"]
    coloured = {}
    for pattern in PATTERNS:
        tile = pattern_tile(pattern, side, colour, stripe)
        assert tile.shape == (side, side, 3) and tile.dtype == np.uint8
        is_colour, is_white = (tile == colour).all(axis=-1), (tile == WHITE).all(axis=-1)
        assert (is_colour | is_white).all()
        assert 2 * is_colour.sum() == side * side  # exactly half coloured
        assert _read_exact_pattern(tile, stripe) == (pattern, colour)
        coloured[pattern] = is_colour

    def block_counts(mask: np.ndarray, b: int) -> np.ndarray:
        return mask.reshape(side // b, b, side // b, b).sum(axis=(1, 3))

    # Blocks of one period (2 * stripe: 2x2 for 1-px lines, 6x6 for 3-px lines) and of 6x6 all hold the same
    # count for every pattern, which is what makes an align-fold area downscale erase the pattern ...
    for b in {2 * stripe, 6}:
        counts = [block_counts(m, b) for m in coloured.values()]
        assert all((c == b * b // 2).all() for c in counts)
    # ... while blocks of one stripe do not: horizontal and vertical differ there, so the check above can
    # fail.
    assert (block_counts(coloured["horizontal"], stripe) != block_counts(coloured["vertical"], stripe)).any()


def test_pattern_tile_rejects_an_unknown_pattern() -> None:
    with pytest.raises(ValueError, match=r"unknown pattern 'diagonal'; expected one of \('horizontal'"):
        pattern_tile("diagonal", 6, COLOURS["red"])


# ---------------------------------------------------------------- scoring and oracle


@pytest.mark.parametrize("index", range(4))
def test_oracle_answer_scores_one_and_every_other_pattern_zero(task: VisualSearchTask, index: int) -> None:
    sample = task.sample("val", index, 0)
    solution = task.solution(sample, tools_enabled=True)
    assert task.score(sample, solution.answer) == 1.0
    assert task.score(sample, f" The {sample.answer.upper()}. ") == 1.0  # normalised
    for wrong in set(PATTERNS) - {sample.answer}:
        assert task.score(sample, wrong) == 0.0
    assert task.score(sample, sample.metadata["colour"]) == 0.0  # the colour is not the answer
    assert task.score(sample, f"{sample.answer} or checkered lines") == 0.0
    assert task.score(sample, "") == 0.0


def test_chance_accuracy_is_one_in_three() -> None:
    assert VisualSearchTask().chance_accuracy() == pytest.approx(1 / 3)


def test_solution_crops_the_region_only_when_tools_are_on() -> None:
    task = VisualSearchTask()
    sample = task.sample("train", 0, 0)
    assert task.solution(sample, tools_enabled=True).tool_calls == (
        ("crop", {"box": sample.metadata["region"]}),
    )
    assert task.solution(sample, tools_enabled=False).tool_calls == ()


def test_prompt_holds_the_question_and_every_pattern() -> None:
    task = VisualSearchTask()
    sample = task.sample("train", 0, 0)
    prompt = task.prompt(sample, tools_enabled=True)
    assert prompt.startswith(sample.question)
    assert all(pattern in prompt for pattern in PATTERNS)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"difficulty": 3}, "difficulty must be 0, 1 or 2, got 3"),
        ({"grid": 1}, "need grid >= 2.*got grid=1,"),
        ({"align": 0}, "align must be >= 1.*got 0"),
        ({"marker_size": 20}, r"positive multiple of align.*side=20, align=6"),
        ({"marker_size": 0}, r"positive multiple of align.*side=0"),
        ({"cell": 41}, r"cell >= side \+ 4 \* align.*cell=41, side=18, align=6"),  # 18 + 4 * 6 = 42
        ({"difficulty": 2, "cell": 35}, r"cell >= side \+ 4 \* align.*cell=35, side=12"),  # 12 + 24 = 36
        ({"stripe": 2}, r"align a multiple of 2 \* stripe.*align=6, stripe=2"),
        ({"stripe": 0}, "stripe=0"),
    ],
)
def test_invalid_config(config: dict, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        VisualSearchConfig(**config)


@pytest.mark.parametrize("config", [{"grid": 3, "cell": 42}, {"grid": 3, "difficulty": 2, "cell": 36}])
def test_the_smallest_valid_cell_still_holds_a_framed_marker_on_the_align_grid(config: dict) -> None:
    task = VisualSearchTask(config)
    sample = task.sample("train", 0, 0)
    boxes = _marker_boxes(sample.images[0])
    assert len(boxes) == 9
    assert all(x1 % 6 == 0 and y1 % 6 == 0 for x1, y1, _, _ in boxes)
    assert tuple(sample.metadata["target_box"]) in boxes


def test_task_rejects_a_foreign_config() -> None:
    with pytest.raises(InvalidConfigError, match="visual_search expects a VisualSearchConfig, got int"):
        VisualSearchTask(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- tool necessity


@dataclass(frozen=True)
class Variants:
    """One sample's scene re-rendered with the target's pattern set to each of PATTERNS."""

    sample: Sample
    shown: dict[str, np.ndarray]  # whole scene fitted to the budget
    zoomed: dict[str, np.ndarray]  # the region's crop zoomed to the budget
    zoomed_box: tuple[float, float, float, float]  # the target box in zoomed-crop coordinates


def _variants(task: VisualSearchTask, index: int, *, with_budget: bool) -> Variants:
    sample = task.sample("test", index, 0)
    full = sample.images[0]
    tx1, ty1, tx2, ty2 = sample.metadata["target_box"]
    rx1, ry1, rx2, ry2 = sample.metadata["region"]
    colour = COLOURS[sample.metadata["colour"]]
    shown, zoomed = {}, {}
    for pattern in PATTERNS:
        tile = pattern_tile(pattern, tx2 - tx1, colour, task.config.stripe)
        if with_budget:
            scene = full.copy()
            scene[ty1:ty2, tx1:tx2] = tile
            shown[pattern] = fit_to_budget(scene, MAX_PIXELS)
        crop = full[ry1:ry2, rx1:rx2].copy()
        crop[ty1 - ry1 : ty2 - ry1, tx1 - rx1 : tx2 - rx1] = tile
        zoomed[pattern] = fit_to_budget(crop, MAX_PIXELS, upscale=True)
    crop_h, crop_w = ry2 - ry1, rx2 - rx1
    zx, zy = zoomed[PATTERNS[0]].shape[1] / crop_w, zoomed[PATTERNS[0]].shape[0] / crop_h
    box = ((tx1 - rx1) * zx, (ty1 - ry1) * zy, (tx2 - rx1) * zx, (ty2 - ry1) * zy)
    return Variants(sample, shown, zoomed, box)


PROOF_SAMPLES = 20


@pytest.fixture(scope="module")
def variants(task: VisualSearchTask) -> list[Variants]:
    return [_variants(task, i, with_budget=True) for i in range(PROOF_SAMPLES)]


def test_re_rendering_with_the_answer_reproduces_the_real_images(variants: list[Variants]) -> None:
    """The swap is faithful: with the true pattern it gives exactly what the env would show."""
    for v in variants:
        full = v.sample.images[0]
        rx1, ry1, rx2, ry2 = v.sample.metadata["region"]
        assert v.shown[v.sample.answer].tobytes() == fit_to_budget(full, MAX_PIXELS).tobytes()
        zoomed = fit_to_budget(full[ry1:ry2, rx1:rx2], MAX_PIXELS, upscale=True)
        assert v.zoomed[v.sample.answer].tobytes() == zoomed.tobytes()


def test_budget_image_is_byte_identical_for_every_pattern(variants: list[Variants]) -> None:
    """The proof that the answer is not in the budget image: whatever the target's pattern, the model sees the
    same bytes, so without the crop tool no policy beats chance (1/3)."""
    for v in variants:
        assert {a.tobytes() for a in v.shown.values()} == {v.shown[PATTERNS[0]].tobytes()}


def test_zoomed_crop_differs_between_patterns(variants: list[Variants]) -> None:
    for v in variants:
        assert len({a.tobytes() for a in v.zoomed.values()}) == len(PATTERNS)


def _read_pattern(image: np.ndarray, box: tuple[float, float, float, float]) -> str:
    """Pattern from neighbour differences inside ``box`` (less a 10% border, off the black frame): horizontal
    lines change between rows only, vertical lines between columns only, a checkerboard both ways about
    equally."""
    x1, y1, x2, y2 = box
    mx, my = 0.1 * (x2 - x1), 0.1 * (y2 - y1)
    patch = image[int(np.ceil(y1 + my)) : int(y2 - my), int(np.ceil(x1 + mx)) : int(x2 - mx)].astype(
        np.float64
    )
    down = np.abs(np.diff(patch, axis=0)).sum(axis=-1).mean()
    across = np.abs(np.diff(patch, axis=1)).sum(axis=-1).mean()
    if down > 2 * across:
        return "horizontal"
    if across > 2 * down:
        return "vertical"
    return "checkered"


READOUT_SAMPLES = {0: 200, 1: 30, 2: 30}  # the default difficulty in full, the others as a smaller check


@pytest.fixture(scope="module")
def readout_accuracy(task: VisualSearchTask) -> float:
    """Share of (sample, pattern) pairs whose zoomed crop the read-out names correctly; 1/3 would be
    chance."""
    hits = total = 0
    for index in range(READOUT_SAMPLES[task.config.difficulty]):
        v = _variants(task, index, with_budget=False)
        for pattern, zoomed in v.zoomed.items():
            hits += _read_pattern(zoomed, v.zoomed_box) == pattern
            total += 1
    return hits / total  # measured: 1.0 at every difficulty (3 * 200 pairs at difficulty 0)


def test_pattern_reads_out_reliably_from_the_zoomed_crop(readout_accuracy: float) -> None:
    assert readout_accuracy >= 0.99


@pytest.mark.parametrize("index", range(3))
def test_marker_pattern_is_sub_pixel_at_the_budget_and_a_patch_wide_in_the_zoomed_crop(
    task: VisualSearchTask, index: int
) -> None:
    cfg = task.config
    sample = task.sample("test", index, 0)
    full = sample.images[0]
    x1, y1, x2, y2 = sample.metadata["target_box"]
    side = x2 - x1
    # Whole scene at the budget: 1344 -> 224 is exactly an align-fold (6x) shrink, so one budget pixel
    # averages one
    # 6x6 period of the pattern; the 18-px marker becomes 3x3 budget pixels of one flat colour, halfway
    # between its
    # colour and white (within 1 for rounding), with no line left in it.
    shown = fit_to_budget(full, MAX_PIXELS)
    assert shown.shape[:2] == (224, 224)
    assert full.shape[1] == cfg.align * shown.shape[1]
    assert 2 * cfg.stripe * shown.shape[1] / full.shape[1] <= 1
    block = shown[y1 // cfg.align : y2 // cfg.align, x1 // cfg.align : x2 // cfg.align].astype(int)
    assert block.shape[:2] == (side // cfg.align,) * 2
    assert (block == block[0, 0]).all()
    assert np.abs(block[0, 0] - (np.array(COLOURS[sample.metadata["colour"]]) + 255) / 2).max() <= 1
    # The oracle crop zoomed to the budget: the marker is at least one 14 px ViT patch wide at every
    # difficulty
    # (difficulty 0: 18 px * 224 / 42 = 96 px), and at difficulty 0 so is each 3 px line (16 px).
    rx1, ry1, rx2, ry2 = sample.metadata["region"]
    crop = full[ry1:ry2, rx1:rx2]
    zoomed = fit_to_budget(crop, MAX_PIXELS, upscale=True)
    zoom = zoomed.shape[1] / crop.shape[1]
    assert side * zoom >= VIT_PATCH
    if cfg.difficulty == 0:
        assert cfg.stripe * zoom >= VIT_PATCH
