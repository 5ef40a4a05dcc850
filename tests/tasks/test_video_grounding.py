"""Tests of tasks/video_grounding.py (``vgym.tasks.video_grounding``): env contract, determinism, split
disjointness, the clip cache, pixel ground truth of every event kind, the decoded clip, scoring, balance,
config validation, and oracle episodes through :class:`vgym.env.VisualToolEnv` with the real frame tools.

Event timing is checked from pixels (colours at fixed places, centroids of a colour), not by replaying the
planner, so a wrong boundary in the metadata or the renderer fails.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import tempfile

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from split_checks import assert_disjoint_splits

import vgym  # noqa: F401  (registers the tools and tasks)
from vgym.data.shape_scenes import COLOURS, FLASH_COLOURS, render_frame
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError
from vgym.protocol import HermesProtocol
from vgym.task import SPLITS, env_id
from vgym.tasks.video_grounding import KINDS, TASK_NAME, VideoGroundingConfig, VideoGroundingTask
from vgym.data.media import DECODERS

DIFFICULTIES = (0, 1, 2)
CELL = 56  # default width 224 / 4 columns
TOL = 40  # colour tolerance (L-inf) for anti-aliased edges; palette colours are >= 60 apart on some channel


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module", params=DIFFICULTIES, ids=lambda d: f"difficulty{d}")
def task(request: pytest.FixtureRequest, clip_dir: str) -> VideoGroundingTask:
    return VideoGroundingTask({"difficulty": request.param, "clip_dir": clip_dir})


def _near(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return (np.abs(pixels.astype(int) - np.array(colour)).max(axis=-1) <= TOL)


# ---------------------------------------------------------------- env contract


def test_env_id_and_check_env(clip_dir: str) -> None:
    assert env_id(VideoGroundingTask) == "vgym/VideoGrounding-v0"
    env = gymnasium.make("vgym/VideoGrounding-v0", task_config={"clip_dir": clip_dir})
    try:
        check_env(env.unwrapped)
    finally:
        env.close()


# ---------------------------------------------------------------- determinism, splits, cache


def test_same_arguments_give_the_same_sample(task: VideoGroundingTask, tmp_path) -> None:
    a = task.sample("train", 5, 0)
    other = VideoGroundingTask({**vars(task.config), "clip_dir": str(tmp_path)})  # fresh task, fresh folder
    b = other.sample("train", 5, 0)
    assert [im.tobytes() for im in a.images] == [im.tobytes() for im in b.images]
    assert (a.id, a.question, a.answer, a.metadata) == (b.id, b.question, b.answer, b.metadata)
    assert os.path.basename(a.video) == os.path.basename(b.video) and a.video != b.video
    with open(a.video, "rb") as fa, open(b.video, "rb") as fb:  # the encoder is deterministic too
        assert fa.read() == fb.read()


@pytest.mark.parametrize("other", [("train", 5, 1), ("train", 6, 0), ("val", 5, 0), ("test", 5, 0)],
                         ids=["seed", "index", "val", "test"])
def test_changing_seed_index_or_split_changes_the_sample(task: VideoGroundingTask, other: tuple) -> None:
    a, b = task.sample("train", 5, 0), task.sample(*other)
    assert a.id != b.id and a.video != b.video
    assert task.plan("train", 5, 0) != task.plan(*other)
    assert [im.tobytes() for im in a.images] != [im.tobytes() for im in b.images]


def _plan_digest(task: VideoGroundingTask, split: str, index: int) -> str:
    return hashlib.sha1(json.dumps(task.plan(split, index, 0), sort_keys=True).encode()).hexdigest()


def test_splits_are_disjoint_over_1000_plans_and_plans_determine_images(task: VideoGroundingTask) -> None:
    """Rendering 3,000 clips is too slow, so plans (the complete scene description) are hashed; the plan fixes
    the pixels (re-rendering gives the sample's images, and distinct plans give distinct clips)."""
    digests = {split: {_plan_digest(task, split, i) for i in range(1000)} for split in SPLITS}
    assert_disjoint_splits(digests, 1000)
    cfg = task.config
    for i in range(3):
        sample = task.sample("val", i, 0)
        plan = task.plan("val", i, 0)
        assert plan == sample.metadata["plan"]
        rendered = [render_frame(plan, k, cfg) for k in sample.metadata["overview_frames"]]
        assert [im.tobytes() for im in rendered] == [im.tobytes() for im in sample.images]
    clips = {hashlib.sha1(open(task.sample("val", i, 0).video, "rb").read()).hexdigest() for i in range(3)}
    assert len(clips) == 3


def test_clip_is_written_once_atomically_and_reused(tmp_path) -> None:
    task = VideoGroundingTask({"clip_dir": str(tmp_path / "new")})  # the folder is created on demand
    sample = task.sample("train", 0, 0)
    assert sample.video == task.clip_path("train", 0, 0) and os.path.isfile(sample.video)
    assert os.listdir(tmp_path / "new") == [os.path.basename(sample.video)]  # no temporary file left behind
    stat = os.stat(sample.video)
    os.utime(sample.video, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**9))  # age it, then sample again
    assert task.sample("train", 0, 0).video == sample.video
    again = os.stat(sample.video)
    assert again.st_ino == stat.st_ino  # reused, not rewritten (an atomic rewrite is a new inode)
    assert again.st_mtime_ns > stat.st_mtime_ns - 10**9  # but marked as used, so the cache prunes it last


def test_default_clip_dir_is_under_the_temp_folder() -> None:
    path = VideoGroundingTask().clip_path("train", 0, 0)
    assert os.path.dirname(path) == os.path.join(tempfile.gettempdir(), "vgym-clips")
    assert VideoGroundingTask({"difficulty": 1}).clip_path("train", 0, 0) != path  # config is in the name


# ---------------------------------------------------------------- ground truth from pixels


def _frames(task: VideoGroundingTask, plan: dict) -> np.ndarray:
    return np.stack([render_frame(plan, i, task.config) for i in range(task.config.num_frames)])


def _active_frames(task: VideoGroundingTask, plan: dict, event: dict, frames: np.ndarray) -> list[int]:
    """Frames where the event shows, read from pixels: flash = the corner pixel has the flash colour; appear =
    the object's colour at its cell centre; move = the object's colour centroid (inside its two cells) is
    strictly between its rest position and one cell on, widened by the rest frames that bound it (within the
    clip)."""
    if event["kind"] == "flash":
        return [i for i in range(len(frames)) if _near(frames[i, 1, 1], FLASH_COLOURS[event["colour"]])]
    obj = plan["objects"][event["object"]]
    col, row = obj["cell"]
    colour = COLOURS[obj["colour"]]
    if event["kind"] == "appear":
        cy, cx = (row * CELL + CELL // 2, col * CELL + CELL // 2)
        return [i for i in range(len(frames)) if _near(frames[i, cy, cx], colour)]
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[event["direction"]]
    x1, x2 = sorted((col, col + dx))
    y1, y2 = sorted((row, row + dy))
    box = frames[:, y1 * CELL : (y2 + 1) * CELL, x1 * CELL : (x2 + 1) * CELL]
    centroids = []
    for f in box:
        ys, xs = np.nonzero(_near(f, colour))
        centroids.append(xs.mean() * abs(dx) + ys.mean() * abs(dy))
    rest, goal = centroids[0], centroids[0] + CELL * (dx + dy)  # at rest in frame 0; the goal is one cell on
    between = [i for i, c in enumerate(centroids) if min(rest, goal) + 1 < c < max(rest, goal) - 1]
    after = centroids[between[-1] + 1 :]
    assert all(abs(c - goal) <= 1 for c in after)  # at rest on the goal after the move (if the clip goes on)
    return list(range(max(0, between[0] - 1), min(len(frames) - 1, between[-1] + 1) + 1))


@pytest.mark.parametrize("index", range(6))
def test_every_event_shows_exactly_in_its_frames(task: VideoGroundingTask, index: int) -> None:
    plan = task.plan("test", index, 0)
    frames = _frames(task, plan)
    for event in plan["events"]:
        active = _active_frames(task, plan, event, frames)
        if event["kind"] == "move":  # rest at frames <= start and >= end, moving strictly between
            expected = list(range(max(0, event["start"]), min(len(frames) - 1, event["end"]) + 1))
            assert active == expected, event
        else:
            assert active == list(range(event["start"], event["end"])), event


@pytest.mark.parametrize("index", range(6))
def test_metadata_and_question_match_the_queried_event(task: VideoGroundingTask, index: int) -> None:
    cfg = task.config
    sample = task.sample("test", index, 0)
    meta, plan = sample.metadata, sample.metadata["plan"]
    event = plan["events"][0]
    assert (meta["start_s"], meta["end_s"]) == (event["start"] / cfg.fps, event["end"] / cfg.fps)
    assert meta["fps"] == 10 and meta["num_frames"] == {0: 60, 1: 80, 2: 100}[cfg.difficulty]
    assert sample.answer == f"[{meta['start_s']:.2f}, {meta['end_s']:.2f}]"
    json.dumps(dict(meta))  # JSON-serialisable
    assert len(plan["events"]) == {0: 2, 1: 4, 2: 6}[cfg.difficulty]
    # Exactly one occurrence: identities and flash colours are unique, one event per object.
    identities = [(o["colour"], o["shape"]) for o in plan["objects"]]
    assert len(set(identities)) == len(identities)
    flashes = [e["colour"] for e in plan["events"] if e["kind"] == "flash"]
    assert len(set(flashes)) == len(flashes)
    owners = [e["object"] for e in plan["events"] if "object" in e]
    assert len(set(owners)) == len(owners)
    if event["kind"] == "flash":
        assert sample.question == f"When does the screen flash {event['colour']}?"
    else:
        obj = plan["objects"][event["object"]]
        assert f"the {obj['colour']} {obj['shape']} " in sample.question
        assert ("visible" in sample.question) == (event["kind"] == "appear")
    for im in sample.images:
        assert im.shape == (168, 224, 3) and im.dtype == np.uint8


def test_decoded_clip_matches_the_rendered_frames(task: VideoGroundingTask) -> None:
    sample = task.sample("train", 1, 0)
    clip = DECODERS["pyav"](sample.video)
    try:
        assert len(clip.info.times) == sample.metadata["num_frames"] and clip.info.fps == 10
        np.testing.assert_allclose(clip.info.times, np.arange(len(clip.info.times)) / 10, atol=1e-6)
        plan = sample.metadata["plan"]
        for frame, time in clip.read([0, 17, len(clip.info.times) - 1]):
            rendered = render_frame(plan, round(time * 10), task.config)
            assert np.abs(frame.astype(int) - rendered).mean() < 8  # mp4v is lossy: measured <= 3.5
    finally:
        clip.close()


def test_overview_frames_usually_miss_short_events() -> None:
    task = VideoGroundingTask({"difficulty": 2})
    # frames of 1.25 s, 3.75 s, ...
    assert task.sample("train", 0, 0).metadata["overview_frames"] == [12, 37, 62, 87]
    hits = 0
    for i in range(300):
        plan = task.plan("train", i, 0)
        e = plan["events"][0]
        hits += any(e["start"] <= k < e["end"] for k in (12, 37, 62, 87))  # the 4 overview frames of 100
    assert hits / 300 < 0.35  # measured 0.24


# ---------------------------------------------------------------- scoring, prompt, balance


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("[2.0, 4.0]", 1.0),
        ("  [ 2 , 4 ]  ", 1.0),
        ("from 2.00 s to 4.00 s", 1.0),
        ("[2.0s, 4.0s]", 1.0),
        ("[3.0, 4.0]", 0.5),  # inside: 1 / 2
        ("[3.0, 5.0]", 1 / 3),  # overlap 1 s, union 3 s
        ("[0.0, 1.0]", 0.0),  # disjoint
        ("[4.0, 2.0]", 0.0),  # reversed
        ("[2.0]", 0.0),
        ("[1, 2, 4]", 0.0),
        ("", 0.0),
        ("the green flash", 0.0),
    ],
)
def test_score_is_temporal_iou(answer: str, expected: float) -> None:
    task = VideoGroundingTask()
    sample = task.sample("train", 0, 0)
    sample = dataclasses.replace(sample, metadata={**sample.metadata, "start_s": 2.0, "end_s": 4.0})
    assert task.score(sample, answer) == pytest.approx(expected)


def test_prompt_and_tools_off_solution(clip_dir: str) -> None:
    task = VideoGroundingTask({"clip_dir": clip_dir})
    sample = task.sample("train", 0, 0)
    prompt = task.prompt(sample, tools_enabled=True)
    assert prompt.startswith(sample.question) and "[start, end]" in prompt and "6 s video" in prompt
    assert task.solution(sample, tools_enabled=False).tool_calls == ()
    assert task.answer_choices() is None and task.chance_accuracy() is None


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_queried_kinds_are_balanced_and_intervals_spread(difficulty: int) -> None:
    task = VideoGroundingTask({"difficulty": difficulty})
    plans = [task.plan("train", i, 0) for i in range(1000)]
    kinds = collections.Counter(p["events"][0]["kind"] for p in plans)
    assert set(kinds) == set(KINDS)
    assert max(kinds.values()) / 1000 <= 1 / 3 + 0.15  # measured ~0.35
    n = task.config.num_frames
    starts = np.array([p["events"][0]["start"] for p in plans]) / n
    lengths = np.array([p["events"][0]["end"] - p["events"][0]["start"] for p in plans])
    assert starts.min() < 0.05 and starts.max() > 0.6 and 0.2 < np.median(starts) < 0.5
    assert lengths.min() == task.config.min_event_frames and lengths.max() == task.config.max_event_frames


@pytest.mark.parametrize(
    "config, message",
    [
        ({"difficulty": 3}, "difficulty must be 0, 1 or 2, got 3"),
        ({"fps": 1}, r"fps must be an int >= 2 \(10 by default\), got 1"),
        ({"fps": 7.5}, "got 7.5"),
        ({"width": 226, "height": 168}, "width a multiple of 4 .*got width=226, height=168"),
        ({"width": 160}, r"height = 3/4 of it .*got width=160, height=168"),
        ({"width": 92, "height": 69}, "got width=92, height=69"),
        ({"overview_frames": 5}, "overview_frames must be 1 to 4, got 5"),
        ({"overview_frames": 0}, "got 0"),
    ],
)
def test_invalid_config(config: dict, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        VideoGroundingConfig(**config)


@pytest.mark.parametrize("config", [{"fps": 2, "difficulty": 2}, {"width": 96, "height": 72}])
def test_smallest_valid_configs_render(config: dict, tmp_path) -> None:
    task = VideoGroundingTask({**config, "clip_dir": str(tmp_path)})
    sample = task.sample("train", 0, 0)
    assert sample.images[0].shape == (task.config.height, task.config.width, 3)
    assert task.config.min_event_frames >= 2  # a move needs an in-between frame


# ---------------------------------------------------------------- oracle episodes


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
@pytest.mark.parametrize("tools", [None, ()], ids=["default-tools", "tools-off"])
def test_oracle_episode_earns_full_reward(difficulty: int, tools: tuple | None, clip_dir: str) -> None:
    env = VisualToolEnv(TASK_NAME, task_config={"difficulty": difficulty, "clip_dir": clip_dir}, tools=tools)
    protocol = HermesProtocol()
    try:
        for index in range(50):
            obs, _ = env.reset(options={"index": index})
            assert len(obs["images"]) == 4
            sample = env.sample
            solution = env.task.solution(sample, tools_enabled=env.tools_enabled)
            assert len(solution.tool_calls) == (1 if tools is None else 0)
            for name, arguments in solution.tool_calls:
                obs, reward, terminated, truncated, info = env.step(
                    protocol.format_tool_call(name, arguments)
                )
                assert not (terminated or truncated) and info["tool_calls"][0]["ok"], info["tool_calls"]
                shown = obs["images"]
                assert 1 <= len(shown) <= 4
                # the window spans the event
                start, end = sample.metadata["start_s"], sample.metadata["end_s"]
                assert arguments["start_s"] <= max(0.0, start - 0.1) + 1e-9
                assert arguments["end_s"] >= min(sample.metadata["duration_s"], end + 0.1) - 1e-9
            _, reward, terminated, _, info = env.step(protocol.format_answer(solution.answer))
            assert terminated and info["reward_parts"]["accuracy"] >= 0.99 and reward >= 0.99, (index, info)
    finally:
        env.close()
