"""Tests of tasks/video_qa.py (``vgym.tasks.video_qa``): env contract, determinism, split disjointness, the
answer read from the decoded clip's pixels, the counterfactual (tool-necessity) claim, scoring, config
validation, answer balance, and oracle episodes through :class:`vgym.env.VisualToolEnv` with the real frame
tools, whose returned frames are read back to the answer.

Answers are recovered from pixels with a small classifier of our own (the screen colour in the top-left
corner, which no object reaches; objects as connected blobs of one palette colour, shape told by how much of
its bounding box it fills), not by replaying the planner, so a wrong answer in the metadata, the renderer or
the oracle's frames fails.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
import tempfile

import cv2
import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from oracle_play import oracle_input
from split_checks import assert_disjoint_splits

import vgym  # noqa: F401  (registers the tools and tasks)
from vgym.data.shape_scenes import COLOURS, FLASH_COLOURS
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError
from vgym.policies.oracle import OraclePolicy
from vgym.task import SPLITS, Sample, env_id
from vgym.tasks.video_qa import AT_TIME_OPTIONS, QUESTIONS, TASK_NAME, VideoQaConfig, VideoQaTask
from vgym.tooling import fit_to_budget

DIFFICULTIES = (0, 1, 2)
TOL = 40  # colour tolerance (L-inf); palette, flash and background colours are >= 90 apart on some channel
EPISODES = 36  # oracle episodes per difficulty (12 of each question kind on average)
LETTERS = "ABCDE"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module", params=DIFFICULTIES, ids=lambda d: f"difficulty{d}")
def task(request: pytest.FixtureRequest, clip_dir: str) -> VideoQaTask:
    return VideoQaTask({"difficulty": request.param, "clip_dir": clip_dir})


# ---------------------------------------------------------------- the pixel classifier


def _near(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """uint8 mask (255 = within ``TOL`` of ``colour`` on every channel) of an (..., 3) uint8 array."""
    low, high = np.clip(np.array(colour) - TOL, 0, 255), np.clip(np.array(colour) + TOL, 0, 255)
    return cv2.inRange(np.ascontiguousarray(pixels.reshape(-1, 1, 3)), low, high).reshape(pixels.shape[:-1])


def _screen(image: np.ndarray) -> str:
    """The flash colour of the frame (median of a corner patch no object reaches), or "no flash"."""
    h, w = image.shape[:2]
    patch = np.median(image[h // 60 : h // 20, w // 80 : w // 30].reshape(-1, 3), axis=0)
    hits = [name for name, rgb in FLASH_COLOURS.items() if np.abs(patch - np.array(rgb)).max() <= TOL]
    return hits[0] if hits else "no flash"


def _shapes(image: np.ndarray, colour: str) -> list[str]:
    """Shapes of the blobs of ``colour``: a blob fills ~1 of its bounding box (square), ~pi/4 (ball) or
    ~1/2."""
    mask, smallest = _near(image, COLOURS[colour]), image.shape[0] * image.shape[1] // 200
    if cv2.countNonZero(mask) < smallest:  # no object of that colour (saves the labelling)
        return []
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    found = []
    for x, y, w, h, area in stats[1:]:
        if area < smallest:  # anti-aliased edges, not objects (a ball fills ~1/35 of the frame)
            continue
        fill = area / (w * h)
        found.append("square" if fill > 0.9 else "ball" if fill > 0.65 else "triangle")
    return found


def _shows(image: np.ndarray, subject: dict) -> bool:
    if subject["kind"] == "flash":
        return _screen(image) == subject["colour"]
    return subject["shape"] in _shapes(image, subject["colour"])


def _runs(flags: list[bool]) -> int:
    """Maximal runs of True."""
    return sum(f and (i == 0 or not flags[i - 1]) for i, f in enumerate(flags))


def _answer_from_frames(sample: Sample, frames: list[np.ndarray], times: list[float]) -> str:
    """The answer read from time-ordered ``frames``: runs of the subject (count), which option shows first
    (order), the screen colour of the frame at the asked time (at_time)."""
    meta = sample.metadata
    query = meta["plan"]["query"]  # only what the question says: subject / options / time
    if meta["question_kind"] == "count":
        return str(_runs([_shows(f, query["subject"]) for f in frames]))
    if meta["question_kind"] == "order":
        firsts = [min(t for f, t in zip(frames, times) if _shows(f, s)) for s in query["options"]]
        return "A" if firsts[0] < firsts[1] else "B"
    [frame] = [f for f, t in zip(frames, times) if abs(t - meta["time_s"]) < 0.5 / meta["fps"]]
    return LETTERS[AT_TIME_OPTIONS.index(_screen(frame))]


def _decode(path: str) -> list[np.ndarray]:
    """Every frame of the clip, decoded by OpenCV (the tools use decord or PyAV), RGB."""
    capture, frames = cv2.VideoCapture(path), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def _answer_from_clip(sample: Sample) -> str:
    frames = _decode(sample.video)  # type: ignore[arg-type]
    assert len(frames) == sample.metadata["num_frames"]
    return _answer_from_frames(sample, frames, [i / sample.metadata["fps"] for i in range(len(frames))])


# ---------------------------------------------------------------- env contract, determinism, splits


def test_env_id_and_check_env(clip_dir: str) -> None:
    assert env_id(VideoQaTask) == "vgym/VideoQa-v0"
    env = gymnasium.make("vgym/VideoQa-v0", task_config={"clip_dir": clip_dir})
    try:
        check_env(env.unwrapped)
    finally:
        env.close()


def test_same_arguments_give_the_same_sample(task: VideoQaTask, tmp_path) -> None:
    a = task.sample("train", 5, 0)
    b = VideoQaTask({**vars(task.config), "clip_dir": str(tmp_path)}).sample("train", 5, 0)  # fresh folder
    assert [im.tobytes() for im in a.images] == [im.tobytes() for im in b.images]
    assert (a.id, a.question, a.answer, a.metadata) == (b.id, b.question, b.answer, b.metadata)
    assert os.path.basename(a.video) == os.path.basename(b.video) and a.video != b.video
    with open(a.video, "rb") as fa, open(b.video, "rb") as fb:  # the encoder is deterministic too
        assert fa.read() == fb.read()


@pytest.mark.parametrize("other", [("train", 5, 1), ("train", 6, 0), ("val", 5, 0), ("test", 5, 0)],
                         ids=["seed", "index", "val", "test"])
def test_changing_seed_index_or_split_changes_the_sample(task: VideoQaTask, other: tuple) -> None:
    a, b = task.sample("train", 5, 0), task.sample(*other)
    assert a.id != b.id and a.video != b.video and task.plan("train", 5, 0) != task.plan(*other)
    assert [im.tobytes() for im in a.images] != [im.tobytes() for im in b.images]


def test_splits_are_disjoint_over_1000_plans(task: VideoQaTask) -> None:
    """Plans (the complete description of clip and question) are hashed; the plan fixes the sample."""
    def digest(split: str, index: int) -> str:
        return hashlib.sha1(json.dumps(task.plan(split, index, 0), sort_keys=True).encode()).hexdigest()

    assert_disjoint_splits({split: {digest(split, i) for i in range(1000)} for split in SPLITS}, 1000)
    assert task.sample("val", 3, 0).metadata["plan"] == task.plan("val", 3, 0)


# ---------------------------------------------------------------- ground truth from pixels


def test_the_decoded_clip_gives_the_answer_and_the_overview_shows_no_event(task: VideoQaTask) -> None:
    kinds = collections.Counter()
    for index in range(15):
        sample = task.sample("test", index, 0)
        meta = sample.metadata
        kinds[meta["question_kind"], meta["plan"]["query"].get("subject", {}).get("kind")] += 1
        assert _answer_from_clip(sample) == sample.answer, (index, sample.question)
        # flashes never touch: one colour at a time
        screens = [_screen(frame) for frame in _decode(sample.video)]
        assert all("no flash" in pair or pair[0] == pair[1] for pair in zip(screens, screens[1:])), screens
        query = meta["plan"]["query"]
        subjects = [query["subject"]] if "subject" in query else query.get("options", [])
        for image in sample.images:  # no flash and no subject in any frame the model is shown
            assert image.shape == (168, 224, 3) and _screen(image) == "no flash"
            assert not any(_shows(image, s) for s in subjects)
        json.dumps(dict(meta))
    assert {k for k, _ in kinds} == set(QUESTIONS), kinds  # every kind was checked


def test_every_question_kind_and_subject_reads_back(clip_dir: str) -> None:
    """Both count subjects (flash and appear) and both order subject kinds, from pixels, at difficulty 2."""
    seen = set()
    for question in ("count", "order"):
        task = VideoQaTask({"difficulty": 2, "question": question, "clip_dir": clip_dir})
        for index in range(6):
            sample = task.sample("train", index, 0)
            query = sample.metadata["plan"]["query"]
            seen.update(s["kind"] for s in ([query["subject"]] if question == "count" else query["options"]))
            assert _answer_from_clip(sample) == sample.answer, (index, sample.question)
    assert seen == {"flash", "appear"}


# ---------------------------------------------------------------- counterfactuals (tool necessity)


def test_counterfactuals_look_the_same_without_tools_but_have_other_answers(task: VideoQaTask) -> None:
    assert task.necessary_tools == ("sample_frames", "get_frame")
    samples = [task.sample("val", i, 0) for i in range(12)]
    with_evidence = 0
    for sample in samples:
        kind = sample.metadata["question_kind"]
        overview = [fit_to_budget(im, 224 * 224).tobytes() for im in sample.images]
        cfs = task.counterfactuals(sample)
        for k, cf in enumerate(cfs):
            assert cf.id == f"{sample.id}/cf{k}" and cf.question == sample.question
            assert os.path.dirname(cf.video) == task.config.clip_dir
            assert [fit_to_budget(im, 224 * 224).tobytes() for im in cf.images] == overview
            assert task.score(sample, cf.answer) == 0.0  # another answer
            assert _answer_from_clip(cf) == cf.answer, (cf.id, cf.question)  # the clip really has that answer
        assert len({sample.video, *(cf.video for cf in cfs)}) == 1 + len(cfs)  # each its own clip
        # One member per answer: the whole answer set of the kind, the same when computed from a member.
        answers = [sample.answer, *(cf.answer for cf in cfs)]
        assert sorted(answers) == sorted(VideoQaTask({"question": kind}).answer_choices())
        member = cfs[-1]
        assert sorted([member.answer, *(cf.answer for cf in task.counterfactuals(member))]) == sorted(answers)
        # a swap or a recolouring undone gives the sample back (the same plan, the same clip)
        if kind != "count":
            back = [cf for cf in task.counterfactuals(member) if cf.answer == sample.answer]
            assert back[0].metadata["plan"] == sample.metadata["plan"] and back[0].video == sample.video
        with_evidence += bool(cfs)
    assert with_evidence / len(samples) >= 0.9  # measured 1.0: every sample has them


def test_clips_are_written_once_and_reused(tmp_path) -> None:
    task = VideoQaTask({"clip_dir": str(tmp_path / "new")})  # the folder is created on demand
    sample = task.sample("train", 0, 0)
    assert sample.video == task.clip_path("train", 0, 0)
    assert os.listdir(tmp_path / "new") == [os.path.basename(sample.video)]  # no temporary file left behind
    inode = os.stat(sample.video).st_ino
    assert task.sample("train", 0, 0).video == sample.video
    assert os.stat(sample.video).st_ino == inode  # reused, not rewritten (an atomic rewrite is a new inode)
    assert (
        VideoQaTask().clip_path("train", 0, 0).startswith(os.path.join(tempfile.gettempdir(), "vgym-clips"))
    )


# ---------------------------------------------------------------- scoring, prompt, config, balance


def _with(kind: str, answer: str, options: list[str] | None, gold: int | None, clip_dir: str) -> Sample:
    sample = VideoQaTask({"question": kind, "clip_dir": clip_dir}).sample("train", 0, 0)
    meta = {**sample.metadata, "options": options, "gold_index": gold}
    return dataclasses.replace(sample, answer=answer, metadata=meta)


ORDER = ["the red ball appears", "the screen flashes white"]


@pytest.mark.parametrize(
    "kind, gold, options, answer, expected",
    [
        ("count", "3", None, "3", 1.0),
        ("count", "3", None, "  3 \n", 1.0),
        ("count", "3", None, "3 times", 1.0),
        ("count", "3", None, "3.0", 1.0),
        ("count", "3", None, "three", 0.0),  # numerals only
        ("count", "3", None, "2", 0.0),
        ("count", "3", None, "2 or 3", 0.0),  # ambiguous
        ("count", "0", None, "0", 1.0),
        ("count", "3", None, "", 0.0),
        ("order", "A", ORDER, "A", 1.0),
        ("order", "A", ORDER, " (A) ", 1.0),
        ("order", "A", ORDER, "a.", 1.0),
        ("order", "A", ORDER, "the red ball appears", 1.0),
        ("order", "A", ORDER, "A. The red ball appears", 1.0),
        ("order", "A", ORDER, "B", 0.0),
        ("order", "A", ORDER, "the screen flashes white", 0.0),
        ("order", "A", ORDER, "A or B", 0.0),
        ("at_time", "E", list(AT_TIME_OPTIONS), "E", 1.0),
        ("at_time", "E", list(AT_TIME_OPTIONS), "no flash", 1.0),
        ("at_time", "E", list(AT_TIME_OPTIONS), "(E) no flash", 1.0),
        ("at_time", "E", list(AT_TIME_OPTIONS), "green", 0.0),
        ("at_time", "E", list(AT_TIME_OPTIONS), "A", 0.0),
    ],
)
def test_score(
    kind: str, gold: str, options: list | None, answer: str, expected: float, clip_dir: str
) -> None:
    sample = _with(kind, gold, options, None if options is None else LETTERS.index(gold), clip_dir)
    assert VideoQaTask().score(sample, answer) == expected


def test_prompt_solution_and_answer_choices(clip_dir: str) -> None:
    for kind, how, choices in [("count", "a number", ("0", "1", "2", "3")), ("order", "letter", ("A", "B")),
                               ("at_time", "letter", tuple(LETTERS))]:
        task = VideoQaTask({"question": kind, "clip_dir": clip_dir})
        sample = task.sample("train", 1, 0)
        prompt = task.prompt(sample, tools_enabled=True)
        assert prompt.startswith(sample.question) and how in prompt and "6 s video" in prompt
        assert task.answer_choices() == choices and sample.answer in choices
        assert task.chance_accuracy() == pytest.approx(1 / len(choices))
        assert task.solution(sample, tools_enabled=False).tool_calls == ()
        assert task.score(sample, task.solution(sample, tools_enabled=True).answer) == 1.0
    assert set(VideoQaTask().answer_choices()) == {"0", "1", "2", "3", *LETTERS}
    assert VideoQaTask({"overview_frames": 3}).answer_choices() == ("0", "1", "2", "A", "B", "C", "D", "E")


def test_at_time_question_names_the_frame_time(clip_dir: str) -> None:
    task = VideoQaTask({"question": "at_time", "clip_dir": clip_dir, "difficulty": 1})
    for index in range(5):
        sample = task.sample("train", index, 0)
        t = sample.metadata["time_s"]
        assert re.search(rf"at {t:g} s\? \(A\) green, \(B\) white, \(C\) purple, \(D\) pink, \(E\) no flash$",
                         sample.question)
        assert round(t * 10) not in sample.metadata["overview_frames"]


@pytest.mark.parametrize(
    "config, message",
    [
        ({"difficulty": 3}, "difficulty must be 0, 1 or 2, got 3"),
        (
            {"question": "when"},
            r"question must be one of \('count', 'order', 'at_time'\) or None .*got 'when'",
        ),
        ({"fps": 1}, "fps must be an int from 2 to 60 .*got 1"),
        ({"fps": 7.5}, "got 7.5"),
        ({"overview_frames": 2}, "overview_frames must be 3 or 4 .*got 2"),
        ({"overview_frames": 5}, "got 5"),
        ({"width": 160}, "height = 3/4 of it .*got width=160, height=168"),
    ],
)
def test_invalid_config(config: dict, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        VideoQaConfig(**config)


@pytest.mark.parametrize("config", [{"fps": 2, "overview_frames": 3}, {"fps": 3, "difficulty": 2},
                                    {"width": 96, "height": 72}])
def test_small_configs_still_hold_the_answer(config: dict, tmp_path) -> None:
    task = VideoQaTask({**config, "clip_dir": str(tmp_path)})
    for index in range(6):
        sample = task.sample("train", index, 0)
        assert sample.images[0].shape == (task.config.height, task.config.width, 3)
        assert _answer_from_clip(sample) == sample.answer, (config, index, sample.question)


def _plan_answer(plan: dict) -> str:
    """The answer from a plan's events (for balance over many plans; pixels back it in the tests above)."""
    query, events, objects = plan["query"], plan["events"], plan["objects"]

    def hits(subject: dict) -> list[dict]:
        return [
            e
            for e in events
            if e["kind"] == subject["kind"]
            and (
                e.get("colour") == subject["colour"]
                if e["kind"] == "flash"
                else (objects[e["object"]]["colour"], objects[e["object"]]["shape"])
                == (subject["colour"], subject["shape"])
            )
        ]

    if query["kind"] == "count":
        return str(len(hits(query["subject"])))
    if query["kind"] == "order":
        a, b = (hits(s)[0]["start"] for s in query["options"])
        return "A" if a < b else "B"
    covering = [
        e["colour"] for e in events if e["kind"] == "flash" and e["start"] <= query["frame"] < e["end"]
    ]
    return LETTERS[AT_TIME_OPTIONS.index(covering[0] if covering else "no flash")]


@pytest.mark.parametrize("question, bound", [("count", 0.4), ("order", 0.55), ("at_time", 0.3), (None, 0.3)])
def test_answers_are_balanced(question: str | None, bound: float) -> None:
    task = VideoQaTask({"question": question, "difficulty": 1})
    answers = collections.Counter(_plan_answer(task.plan("train", i, 0)) for i in range(1000))
    assert set(answers) == set(task.answer_choices())
    # measured: count 0.264, order 0.505 (two classes: 0.5 + sampling noise), at_time 0.215, mix 0.236
    assert max(answers.values()) / 1000 <= bound, answers


# ---------------------------------------------------------------- oracle episodes


@pytest.fixture(scope="module")
def episodes(clip_dir: str) -> dict[int, list[tuple[Sample, list, list, str, float]]]:
    """``EPISODES`` oracle episodes per difficulty: (sample, overview images, tool images, tool text,
    reward)."""
    oracle, out = OraclePolicy(), {}
    for difficulty in DIFFICULTIES:
        env = VisualToolEnv(TASK_NAME, task_config={"clip_dir": clip_dir, "difficulty": difficulty})
        out[difficulty] = []
        try:
            for index in range(EPISODES):
                obs, _ = env.reset(options={"split": "test", "index": index})
                overview, shown, text, reward = list(obs["images"]), [], "", 0.0
                for turn in range(env.config.max_turns):
                    item = oracle_input(env, turn)
                    obs, reward, terminated, truncated, info = env.step(oracle.act([item])[0].text)
                    if terminated or truncated:
                        break
                    assert all(call["ok"] for call in info["tool_calls"]), info["tool_calls"]
                    shown += obs["images"]
                    text += obs["text"]
                out[difficulty].append((env.sample, overview, shown, text, float(reward)))
        finally:
            env.close()
    return out


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_oracle_episodes_earn_full_reward(episodes: dict, difficulty: int) -> None:
    rewards = [reward for *_, reward in episodes[difficulty]]
    assert len(rewards) >= 30 and np.mean(rewards) >= 0.99, rewards
    kinds = collections.Counter(sample.metadata["question_kind"] for sample, *_ in episodes[difficulty])
    assert set(kinds) == set(QUESTIONS)


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_the_oracle_tool_frames_show_the_answer(episodes: dict, difficulty: int) -> None:
    """Read the answer from the frames the oracle's call returned (and, for counts, the overview frames
    between them, which show nothing): the tool output contains the answer."""
    for sample, overview, shown, text, _ in episodes[difficulty]:
        meta = sample.metadata
        assert len(overview) + len(shown) <= 8 and len(shown) == (
            1 if meta["question_kind"] == "at_time" else 3
        )
        stamps = re.search(r"at \[?([\d., ]+?)\]? s", text)
        assert stamps, text
        times = [float(t) for t in stamps.group(1).split(",")]
        n, duration = len(overview), meta["duration_s"]
        frames = [(t, im) for t, im in zip(times, shown)]
        if meta["question_kind"] == "count":  # the overview frames separate the probed gaps
            frames += [((k + 0.5) * duration / n, im) for k, im in enumerate(overview)]
        frames.sort(key=lambda pair: pair[0])
        got = _answer_from_frames(sample, [im for _, im in frames], [t for t, _ in frames])
        assert got == sample.answer, (sample.id, sample.question, text)
