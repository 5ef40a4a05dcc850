"""Tests of tasks/multi_tool.py (``vgym.tasks.multi_tool``): env contract, determinism, split disjointness,
ground truth from pixels (rendered arrays and decoded mp4 frames), the counterfactual claim, the tool chain,
scoring, config validation, answer balance and oracle episodes through :class:`vgym.env.VisualToolEnv` with
the real tools.

Ground truth is read back, not replayed: ground_depth's scale from where the depth map puts the ground plane,
the asked object from its mask's colour; frames_crop's interval and pattern from frames decoded with PyAV and
a gradient classifier written here (row versus column energy), never from the planner's fields alone.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import re

import av
import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from oracle_play import oracle_input
from split_checks import assert_disjoint_splits

import vgym  # noqa: F401  (registers the tools and tasks)
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError
from vgym.policies.oracle import OraclePolicy
from vgym.task import SPLITS, Sample, env_id
from vgym.tasks.depth_3d import CAMERA_HEIGHT_M, COLOURS, PITCH_DEG
from vgym.tasks.multi_tool import (
    CLIP_SIZE,
    FPS,
    KINDS,
    OPTIONS,
    PATTERNS,
    SCALE_RANGE,
    TASK_NAME,
    MultiToolConfig,
    MultiToolTask,
    render_clip_frame,
)
from vgym.tooling import TOOLS, ToolContext, fit_to_budget

DIFFICULTIES = (0, 1, 2)
BUDGET = 224 * 224


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("clips"))


def _task(kind: str | None, difficulty: int, clip_dir: str) -> MultiToolTask:
    return MultiToolTask({"kind": kind, "difficulty": difficulty, "clip_dir": clip_dir})


def _decode(path: str) -> list[np.ndarray]:
    """Every frame of the clip, decoded by PyAV (not the frame tool's code path)."""
    with av.open(path) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _classify(patch: np.ndarray, min_energy: float) -> str | None:
    """The pattern of an RGB patch from its mean absolute grey difference down columns (``ey``, high for
    horizontal stripes) and along rows (``ex``, high for vertical ones); None for a flat patch or an unclear
    ratio."""
    grey = patch.astype(np.float64).mean(axis=-1)
    ey, ex = np.abs(np.diff(grey, axis=0)).mean(), np.abs(np.diff(grey, axis=1)).mean()
    if max(ex, ey) < min_energy:
        return None
    if ey > 3 * ex:
        return "horizontal"
    if ex > 3 * ey:
        return "vertical"
    return "checkered" if 0.5 < ey / ex < 2 else None


def _inside(box: list[int], image: np.ndarray) -> np.ndarray:
    """The box's pixels less a 1-px rim (compression smears the black frame into it)."""
    x1, y1, x2, y2 = box
    return image[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1]


# ---------------------------------------------------------------- contract, determinism, splits


def test_env_id_and_check_env(clip_dir: str) -> None:
    assert env_id(MultiToolTask) == "vgym/MultiTool-v0"
    env = gymnasium.make("vgym/MultiTool-v0", task_config={"clip_dir": clip_dir})
    try:
        check_env(env.unwrapped)
    finally:
        env.close()


def _fingerprint(sample: Sample) -> str:
    parts = [im.tobytes() for im in sample.images] + [a.tobytes() for a in sample.arrays.values()]
    if sample.video:
        parts.append(open(sample.video, "rb").read())
    # JSON-safe
    text = json.dumps([sample.id, sample.question, sample.answer, sample.metadata], sort_keys=True)
    return hashlib.sha1(b"".join(parts) + text.encode()).hexdigest()


@pytest.mark.parametrize("kind", KINDS)
def test_same_arguments_give_the_same_sample_and_others_differ(kind: str, clip_dir: str, tmp_path) -> None:
    a = _fingerprint(_task(kind, 1, clip_dir).sample("train", 5, 0))
    # fresh task, fresh clip folder
    assert _fingerprint(_task(kind, 1, str(tmp_path)).sample("train", 5, 0)) == a
    for other in [("train", 5, 1), ("train", 6, 0), ("val", 5, 0), ("test", 5, 0)]:
        assert _fingerprint(_task(kind, 1, clip_dir).sample(*other)) != a, other


def test_kind_none_alternates_and_gives_the_same_samples(clip_dir: str) -> None:
    mixed = _task(None, 0, clip_dir)
    for index in range(4):
        sample = mixed.sample("val", index, 3)
        assert sample.metadata["kind"] == KINDS[index % 2]
        other = _task(KINDS[index % 2], 0, clip_dir).sample("val", index, 3)
        assert _fingerprint(other) == _fingerprint(sample)


def test_splits_are_disjoint_over_1000_scenes_and_1000_plans() -> None:
    """Rendering 6,000 samples is too slow, so the cheap descriptions are hashed: the depth_3d layout plus the
    scale (which with the seed fix the sample) and the clip plan (which fixes every pixel, see the next
    test)."""
    task = MultiToolTask()

    def layout_digest(split: str, index: int) -> str:
        scene, _, scale = task.layout(split, index, 0)
        return hashlib.sha1(repr((scene, scale)).encode()).hexdigest()

    def plan_digest(split: str, index: int) -> str:
        return hashlib.sha1(json.dumps(task.plan(split, index, 0), sort_keys=True).encode()).hexdigest()

    assert_disjoint_splits({s: {layout_digest(s, i) for i in range(1000)} for s in SPLITS}, 1000)
    assert_disjoint_splits({s: {plan_digest(s, i) for i in range(1000)} for s in SPLITS}, 1000)


def test_the_plan_fixes_the_pictures_and_the_clip(clip_dir: str) -> None:
    task = _task("frames_crop", 2, clip_dir)
    sample = task.sample("test", 1, 0)
    plan = task.plan("test", 1, 0)
    assert plan == sample.metadata["plan"] and sample.video == task.clip_path(plan)
    rendered = [render_clip_frame(plan, i) for i in sample.metadata["overview_frames"]]
    assert [im.tobytes() for im in rendered] == [im.tobytes() for im in sample.images]


# ---------------------------------------------------------------- ground truth from pixels: ground_depth


def _ground_height(sample: Sample) -> float:
    """Camera height above the ground as the depth map says it: the bottom row's background pixels (no
    object), back-projected with the intrinsics and the documented pitch, lie on a plane this far below the
    camera."""
    cam, depth = sample.metadata["camera"], sample.arrays["depth"].astype(np.float64)
    row = depth.shape[0] - 1
    xs = np.nonzero(~sample.arrays["masks"][:, row].any(axis=0))[0]
    z = depth[row, xs]
    points = np.stack(
        [(xs - cam["cx"]) * z / cam["fx"], np.full_like(z, (row - cam["cy"]) / cam["fy"]) * z, z], 1
    )
    s, c = math.sin(math.radians(PITCH_DEG)), math.cos(math.radians(PITCH_DEG))
    heights = -(points @ np.array([0.0, -c, -s]))  # the world's up direction in camera coordinates
    assert heights.size > 50 and np.ptp(heights) < 1e-3 * heights.mean()  # one plane
    return float(heights.mean())


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_ground_depth_gold_scale_and_object_from_pixels(difficulty: int, clip_dir: str) -> None:
    task = _task("ground_depth", difficulty, clip_dir)
    for index in range(8):
        sample = task.sample("train", index, 0)
        meta = sample.metadata
        assert not re.search(r"\d", sample.question)  # nothing metric (or otherwise numeric) leaks
        (k,) = [i for i, o in enumerate(meta["objects"]) if o["name"] == meta["target"]]
        mask, rgb = sample.arrays["masks"][k], sample.images[0]
        ys, xs = np.nonzero(mask)
        # the visible pixels' bounding box
        assert meta["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert meta["distance_m"] == pytest.approx(float(np.median(sample.arrays["depth"][mask])), rel=1e-6)
        chroma = rgb[mask].astype(np.float64).mean(0)
        chroma /= chroma.sum()
        named = {c: np.array(v, np.float64) / sum(v) for c, v in COLOURS.items()}
        nearest = min(named, key=lambda c: np.abs(named[c] - chroma).sum())
        assert meta["target"].split()[0] == nearest  # the asked object shows the asked colour
        assert SCALE_RANGE[0] <= meta["scale"] <= SCALE_RANGE[1]
        assert _ground_height(sample) == pytest.approx(CAMERA_HEIGHT_M * meta["scale"], rel=1e-4)


# ---------------------------------------------------------------- ground truth from pixels: frames_crop


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_frames_crop_interval_and_pattern_from_decoded_frames(difficulty: int, clip_dir: str) -> None:
    task = _task("frames_crop", difficulty, clip_dir)
    for index in range(6):
        sample = task.sample("val", index, 0)
        meta, box = sample.metadata, sample.metadata["box"]
        frames = _decode(sample.video)
        assert len(frames) == meta["duration_s"] * FPS and frames[0].shape == (CLIP_SIZE[1], CLIP_SIZE[0], 3)
        # The marker's inside is half white: bright while shown; the background is at most 90.
        shown = [i for i, f in enumerate(frames) if _inside(box, f).mean() > 130]
        assert shown == list(range(round(meta["start_s"] * FPS), round(meta["end_s"] * FPS))), (index, shown)
        for i in shown:  # readable from every decoded frame at full resolution, despite mp4v
            assert _classify(_inside(box, frames[i]), min_energy=20) == meta["pattern"], (index, i)
        background = np.array(meta["plan"]["background"], np.uint8)
        for image in sample.images:  # the overview frames show background where the marker will be
            x1, y1, x2, y2 = box
            assert (image[y1 - 1 : y2 + 1, x1 - 1 : x2 + 1] == background).all()
        assert sample.answer == "ABC"[PATTERNS.index(meta["pattern"])]


def test_crop_of_a_sampled_frame_reads_the_pattern_and_an_overview_crop_does_not(clip_dir: str) -> None:
    """The oracle's two calls run directly on the tools: sample_frames over the interval, then crop of a
    returned frame, read by the classifier; the same crop of an overview frame (no first call) shows
    nothing."""
    for index in range(12):
        task = _task("frames_crop", index % 3, clip_dir)
        sample = task.sample("train", index, 0)
        (_, frames_args), (_, crop_args) = task.solution(sample, tools_enabled=True).tool_calls
        ctx = ToolContext(
            list(sample.images), sample.metadata, np.random.default_rng(0), BUDGET, video=sample.video
        )
        frames = TOOLS.get("sample_frames")(ctx, frames_args)
        times = [float(t) for t in re.search(r"at \[([^\]]*)\] s", frames.text).group(1).split(",")]
        start, end = sample.metadata["start_s"], sample.metadata["end_s"]
        assert len(frames.images) == 2 and all(start <= t < end for t in times)
        # full frames, not shrunk
        assert all(im.shape == (CLIP_SIZE[1], CLIP_SIZE[0], 3) for im in frames.images)
        ctx.images.extend(frames.images)
        crop = TOOLS.get("crop")(ctx, crop_args).images[0]
        x1, y1, x2, y2 = sample.metadata["box"]
        ox, oy = crop_args["box"][:2]  # the marker sits at its box less the crop's corner
        marker = _inside([x1 - ox, y1 - oy, x2 - ox, y2 - oy], crop)
        assert _classify(marker, min_energy=20) == sample.metadata["pattern"]
        shown = fit_to_budget(crop, BUDGET, upscale=True)  # what the env shows: the crop zoomed to the budget
        factor = shown.shape[1] / crop.shape[1]
        bx1, by1 = (x1 - ox + 1) * factor, (y1 - oy + 1) * factor
        side = (x2 - x1 - 2) * factor
        zoomed = shown[math.ceil(by1) : math.floor(by1 + side), math.ceil(bx1) : math.floor(bx1 + side)]
        assert _classify(zoomed, min_energy=3) == sample.metadata["pattern"]
        overview = TOOLS.get("crop")(ctx, {**crop_args, "image_index": 0}).images[0]
        assert _classify(overview, min_energy=3) is None


# ---------------------------------------------------------------- the counterfactual claim


@pytest.mark.parametrize("kind", KINDS)
def test_counterfactuals_look_the_same_at_the_budget_and_answer_otherwise(kind: str, clip_dir: str) -> None:
    supported = 0
    n = 24 if kind == "ground_depth" else 12
    for index in range(n):
        task = _task(kind, index % 3, clip_dir)
        sample = task.sample("test", index, 0)
        shown = [fit_to_budget(im, BUDGET).tobytes() for im in sample.images]
        counterfactuals = task.counterfactuals(sample)
        for cf in counterfactuals:  # every one offered must hold, as vgym diagnose checks each
            assert [fit_to_budget(im, BUDGET).tobytes() for im in cf.images] == shown
            assert task.score(cf, sample.answer) == 0.0 and task.score(sample, cf.answer) == 0.0
            assert task.score(cf, cf.answer) == 1.0 and cf.id != sample.id
            if kind == "ground_depth":  # the same picture of a scene this much larger, as its depth map says
                assert SCALE_RANGE[0] <= cf.metadata["scale"] <= SCALE_RANGE[1]
                ratio = cf.metadata["scale"] / sample.metadata["scale"]
                assert _ground_height(cf) == pytest.approx(_ground_height(sample) * ratio, rel=1e-4)
            elif index < 3:  # its own clip shows its own pattern
                frames = _decode(cf.video)
                i = round((cf.metadata["start_s"] + cf.metadata["end_s"]) / 2 * FPS)
                assert _classify(_inside(cf.metadata["box"], frames[i]), 20) == cf.metadata["pattern"]
        supported += len(counterfactuals) > 0
    assert supported >= 0.9 * n


# ---------------------------------------------------------------- the tool chain, through the env


def _ground_boxes(text: str) -> list[list[int]]:
    """The boxes of a ground reply: its JSON list ``[{"box": [...], "score": s}, ...]``."""
    return [d["box"] for d in json.loads(re.search(r"\[\{.*\}\]", text).group(0))]


def test_ground_depth_chain_the_depth_box_is_the_ground_box_and_its_reading_the_answer(clip_dir: str) -> None:
    env = VisualToolEnv(
        TASK_NAME, task_config={"kind": "ground_depth", "difficulty": 2, "clip_dir": clip_dir}
    )
    try:
        for index in range(10):
            env.reset(options={"index": index})
            sample, protocol = env.sample, env.protocol
            (ground, depth) = env.task.solution(sample, tools_enabled=True).tool_calls
            obs, *_ = env.step(protocol.format_tool_call(*ground))
            boxes = _ground_boxes(obs["text"])
            assert boxes == [depth[1]["box"]]  # the depth call asks about exactly the box ground returned
            obs, *_ = env.step(protocol.format_tool_call(*depth))
            reading = re.search(r"box \[[\d, ]+\]: median ([\d.]+) m", obs["text"]).group(1)
            assert reading == env.task.solution(sample, True).answer
            assert (
                abs(float(reading) - sample.metadata["distance_m"])
                <= 0.3 * 0.1 * sample.metadata["distance_m"]
            )
    finally:
        env.close()


# ---------------------------------------------------------------- scoring, config, balance


def test_scoring_edge_cases(clip_dir: str) -> None:
    depth = _task("ground_depth", 0, clip_dir).sample("train", 0, 0)
    frames = _task("frames_crop", 0, clip_dir).sample("train", 0, 0)
    task, gold = MultiToolTask(), depth.metadata["distance_m"]
    assert task.score(depth, f"{gold:.2f}") == 1.0 and task.score(depth, f"about {gold * 1.09:.3f} m") == 1.0
    assert task.score(depth, f"{gold * 1.12:.3f}") == 0.0 and task.score(depth, f"{gold * 0.88:.3f}") == 0.0
    assert task.score(depth, f"{gold:.2f} or {gold:.2f}") == 0.0  # two numbers are ambiguous
    assert task.score(depth, "") == 0.0 and task.score(depth, "far") == 0.0
    strict = MultiToolTask({"depth_rel_tol": 0.02})
    assert (
        strict.score(depth, f"{gold * 1.05:.3f}") == 0.0 and strict.score(depth, f"{gold * 1.01:.3f}") == 1.0
    )
    letter, option = frames.answer, OPTIONS[frames.metadata["gold_index"]]
    for right in (letter, f"({letter})", f"{letter}.", option, f"{letter}. {option}"):
        assert task.score(frames, right) == 1.0, right
    wrong = next(x for x in "ABC" if x != letter)
    for bad in (wrong, "", "D", "stripes", f"{letter} {wrong}"):
        assert task.score(frames, bad) == 0.0, bad
    assert MultiToolTask({"kind": "frames_crop"}).answer_choices() == ("A", "B", "C")
    assert task.answer_choices() is None and MultiToolTask({"kind": "ground_depth"}).chance_accuracy() is None


@pytest.mark.parametrize(("config", "message"), [
    ({"difficulty": 3}, "difficulty"), ({"kind": "depth"}, "kind"), ({"depth_rel_tol": 0.2}, "depth_rel_tol"),
    ({"depth_rel_tol": 0.01}, "depth_rel_tol"), ({"overview_frames": 0}, "overview_frames"),
    ({"overview_frames": 4}, "overview_frames"),
])
def test_invalid_config(config: dict, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        MultiToolConfig(**config)
    with pytest.raises(InvalidConfigError, match="MultiToolConfig"):
        MultiToolTask(object())


@pytest.mark.parametrize("overview", [1, 3])
def test_overview_frames_never_fall_in_the_interval(overview: int) -> None:
    for difficulty in DIFFICULTIES:
        task = MultiToolTask({"difficulty": difficulty, "overview_frames": overview})
        for index in range(200):
            plan = task.plan("train", index, 0)
            assert plan["end"] - plan["start"] >= 2  # room for the oracle's two frames
            assert not any(plan["start"] <= i < plan["end"] for i in task._overview(plan["num_frames"]))


def test_answers_are_balanced() -> None:
    task = MultiToolTask({"difficulty": 1})
    patterns = collections.Counter(task.plan("train", i, 0)["squares"][0]["pattern"] for i in range(900))
    assert set(patterns) == set(PATTERNS) and all(240 <= c <= 360 for c in patterns.values()), patterns
    depth = MultiToolTask({"kind": "ground_depth", "difficulty": 1})
    samples = [depth.sample("train", i, 0) for i in range(120)]
    names = collections.Counter(s.metadata["target"].split()[1] for s in samples)
    assert all(names[shape] >= 20 for shape in ("sphere", "box", "cylinder")), names
    distances = np.array([s.metadata["distance_m"] for s in samples])
    assert (
        distances.min() < 4.0 and distances.max() > 10.0 and np.ptp(np.percentile(distances, [25, 75])) > 2.0
    )


# ---------------------------------------------------------------- oracle episodes


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
@pytest.mark.parametrize("tools", [None, ()], ids=["default-tools", "tools-off"])
def test_oracle_policy_earns_full_reward(difficulty: int, tools: tuple | None, clip_dir: str) -> None:
    env = VisualToolEnv(TASK_NAME, task_config={"difficulty": difficulty, "clip_dir": clip_dir}, tools=tools,
                        split="val")
    oracle, rewards = OraclePolicy(), collections.defaultdict(list)
    try:
        for index in range(60 if difficulty == 0 else 20):  # kinds alternate: 30 + 10 + 10 episodes per kind
            env.reset(seed=index, options={"index": index})
            done, turn, reward, records = False, 0, 0.0, []
            while not done:
                item = oracle_input(env, turn)
                _, reward, terminated, truncated, info = env.step(oracle.act([item])[0].text)
                assert all(r["ok"] for r in info["tool_calls"]), info["tool_calls"]
                records += info["tool_calls"]
                done, turn = terminated or truncated, turn + 1
            assert len(records) == (2 if tools is None else 0) and info["answer"] is not None
            # the crop reads the first frame returned
            if records and env.sample.metadata["kind"] == "frames_crop":
                assert records[0]["name"] == "sample_frames" and len(records[0]["image_indices"]) == 2
                assert records[1]["arguments"]["image_index"] == records[0]["image_indices"][0]
            rewards[env.sample.metadata["kind"]].append(float(reward))
    finally:
        env.close()
    assert all(np.mean(r) >= 0.99 for r in rewards.values()) and len(rewards) == 2, rewards
