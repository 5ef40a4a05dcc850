"""Tests of tasks/local_data.py (``vgym.tasks.local_data``): each of the five loaders end to end on a tiny
fixture dataset in its real layout, written by :mod:`vgym.data.sample_data` (ChartQA folders, V*
``test_questions.jsonl`` in both option styles, the refer data folder of RefCOCO/RefCOCO+/RefCOCOg and the
RefCOCO JSONL lines, Charades-STA text lines with ``Charades_v1_480`` mp4 videos, the vgym JSONL format).
Checked: sample fields, images equal to the written pixels, video frames identified from the indices they
encode, scoring of gold, wrong and edge answers, splits, ``gymnasium.make`` + ``check_env``, oracle episodes
through the env, a ``crop`` and a ``get_frame`` call through the env, confinement and malformed-input errors,
and the layout checks at construction (missing root, annotation file, media folder). The RefCOCO release
itself is tested in ``test_refcoco_release.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from oracle_play import oracle_input

import vgym  # noqa: F401  (registers the tools)
import vgym.tasks.local_data  # noqa: F401  (registers the loaders)
from vgym.data.sample_data import (
    VSTAR_TEXT,
    vstar_image,
    write_charades_sta,
    write_chartqa,
    write_refcoco,
    write_refcoco_jsonl,
    write_sample_datasets,
    write_vgym_jsonl,
    write_vstar,
)
from vgym.data.sample_data import noise_image as _noise
from vgym.data.sample_data import write_jsonl as _jsonl
from vgym.env import VisualToolEnv
from vgym.errors import DatasetLayoutError, InvalidConfigError
from vgym.policies.oracle import OraclePolicy
from vgym.task import TASKS, env_id
from vgym.tasks.local_data import CharadesStaTask, ChartqaTask, RefcocoTask, VgymJsonlTask, VstarTask
from vgym.tooling import fit_to_budget

LOADERS = {
    "vgym_jsonl": "vgym/VgymJsonl-v0",
    "chartqa_dataset": "vgym/ChartqaDataset-v0",
    "vstar": "vgym/Vstar-v0",
    "refcoco": "vgym/Refcoco-v0",
    "charades_sta": "vgym/CharadesSta-v0",
}


def frame_index(frame: np.ndarray) -> int:
    """The index a synthetic clip frame shows: 12 cells across its top quarter, most significant bit left,
    white 1."""
    height, width = frame.shape[:2]
    bits = ["1" if frame[height // 8, int((b + 0.5) * width / 12)].mean() > 128 else "0" for b in range(12)]
    return int("".join(bits), 2)


# ---------------------------------------------------------------- fixtures: one tiny dataset per format


@pytest.fixture
def jsonl_root(tmp_path: Path) -> Path:
    return write_vgym_jsonl(tmp_path / "jsonl")


@pytest.fixture
def chartqa_root(tmp_path: Path) -> Path:
    return write_chartqa(tmp_path / "ChartQA Dataset")


@pytest.fixture
def vstar_root(tmp_path: Path) -> Path:
    root = write_vstar(tmp_path / "vstar_bench")
    np.save(root / "expected.npy", vstar_image())  # the JPEG's pixels before compression
    return root


@pytest.fixture
def refcoco_root(tmp_path: Path) -> Path:
    return write_refcoco(tmp_path / "refcoco")


@pytest.fixture
def refcoco_jsonl_root(tmp_path: Path) -> Path:
    return write_refcoco_jsonl(tmp_path / "refcoco_jsonl")


REFCOCO_JSONL = {"annotations": "refcoco.jsonl"}
"""The RefCOCO JSONL line format's config (beside ``root``; images stay in the default ``train2014``)."""


@pytest.fixture
def charades_root(tmp_path: Path) -> Path:
    return write_charades_sta(tmp_path / "charades")


@pytest.fixture
def roots(jsonl_root: Path, chartqa_root: Path, vstar_root: Path, refcoco_root: Path,
          charades_root: Path) -> dict[str, Path]:
    return {
        "vgym_jsonl": jsonl_root,
        "chartqa_dataset": chartqa_root,
        "vstar": vstar_root,
        "refcoco": refcoco_root,
        "charades_sta": charades_root,
    }


# ---------------------------------------------------------------- registration, env contract, oracle episodes


def test_loaders_are_registered_as_non_procedural_envs() -> None:
    for name, expected in LOADERS.items():
        cls = TASKS.get(name)
        assert env_id(cls) == expected and expected in gymnasium.registry and cls.procedural is False
        with pytest.raises(InvalidConfigError, match=rf"{name} reads a dataset from disk: set task_config="
                                                     r"\{'root': \.\.\.\}"):
            cls()
    assert RefcocoTask.default_tools == ("ground", "crop") and VstarTask.default_tools == ("crop",)
    assert CharadesStaTask.default_tools == ("sample_frames", "get_frame")


def test_make_and_check_env_on_a_vgym_jsonl_fixture(jsonl_root: Path) -> None:
    env = gymnasium.make("vgym/VgymJsonl-v0", task_config={"root": str(jsonl_root)})
    try:
        obs, info = env.reset(seed=0)
        assert info["sample_id"] in ("vgym_jsonl/t1", "vgym_jsonl/t2")  # the env's default split is train
        check_env(env.unwrapped)
    finally:
        env.close()


def _oracle_episode(env: VisualToolEnv, split: str, index: int) -> tuple[float, dict[str, Any]]:
    policy = OraclePolicy()
    env.reset(options={"split": split, "index": index})
    for turn in range(env.config.max_turns):
        item = oracle_input(env, turn)
        _, reward, terminated, truncated, info = env.step(policy.act([item])[0].text)
        if terminated or truncated:
            return float(reward), info
    raise AssertionError("the episode did not end")


@pytest.mark.parametrize("name", sorted(LOADERS))
@pytest.mark.parametrize("tools", [None, ()], ids=["default-tools", "tools-off"])
def test_oracle_episodes_earn_full_reward(roots: dict[str, Path], name: str, tools: tuple | None) -> None:
    env = VisualToolEnv(name, task_config={"root": str(roots[name])}, tools=tools)
    try:
        for split in ("train", "val", "test"):
            for index in range(len(env.task.split_records(split))):  # type: ignore[attr-defined]
                reward, info = _oracle_episode(env, split, index)
                assert reward >= 0.99 and info["reward_parts"]["accuracy"] == 1.0, (name, split, index, info)
    finally:
        env.close()


def test_sample_datasets_name_their_env_config_and_splits(tmp_path: Path) -> None:
    datasets = write_sample_datasets(tmp_path)
    assert {name: sample.env_id for name, sample in datasets.items()} == LOADERS
    for name, sample in datasets.items():
        assert sample.task_config == {"root": str(sample.root)}  # the released layout needs nothing else
        task: Any = TASKS.get(name)(sample.task_config)
        assert sample.splits == tuple(s for s in ("train", "val", "test") if task.split_records(s)), name


# ---------------------------------------------------------------- vgym JSONL


def test_vgym_jsonl_samples(jsonl_root: Path) -> None:
    task = VgymJsonlTask({"root": str(jsonl_root)})
    assert [r.id for r in task.split_records("train")] == ["t1", "t2"]
    assert [r.id for r in task.split_records("test")] == ["e1", "e2"] and task.split_records("val") == []
    choice = task.sample("train", 2, 0)  # index 2 of 2 records: record 0
    assert (
        choice.id == "vgym_jsonl/t1"
        and choice.question == "Which colour is the square?\nA. red\nB. green\nC. blue"
    )
    np.testing.assert_array_equal(choice.images[0], _noise(60, 80, 1))
    two = task.sample("train", 1, 0)
    np.testing.assert_array_equal(two.images[1], _noise(50, 50, 2))
    box = task.sample("test", 0, 0)
    assert box.metadata["record"] == {"source": "fixture"} and "(50x50)" in task.prompt(box, True)
    assert task.score(box, "[10, 5, 40, 30]") == 1.0
    assert task.score(box, "[10, 5, 25, 30]") == pytest.approx(0.5)
    video = task.sample("test", 1, 0)
    # 0.25, 0.75, 1.25, 1.75 s of 16 frames at 8 fps
    assert [frame_index(f) for f in video.images] == [2, 6, 10, 14]
    assert video.video == os.path.realpath(jsonl_root / "clip.mp4")
    assert video.metadata["tools"] == ["sample_frames"]


def test_vgym_jsonl_errors(tmp_path: Path, jsonl_root: Path) -> None:
    (tmp_path / "bad").mkdir()
    _jsonl(tmp_path / "bad" / "data.jsonl", [
        {"id": "a", "question": "q", "answer": "x", "answer_type": "exact", "images": ["a.png"]},
        {"id": "b", "question": "q", "answer": "x", "answer_type": "exact", "images": ["../outside.png"]}])
    with pytest.raises(
        InvalidConfigError, match=r"data.jsonl:2: path '../outside.png' leaves the dataset root"
    ):
        VgymJsonlTask({"root": str(tmp_path / "bad")})
    with pytest.raises(
        InvalidConfigError, match=r"path '../data.jsonl' resolves to .* outside the dataset root"
    ):
        VgymJsonlTask({"root": str(jsonl_root / "img"), "annotations": "../data.jsonl"})
    with pytest.raises(DatasetLayoutError, match=r"vgym_jsonl: the annotation file 'other.jsonl' is missing "
                                                 r"from the dataset root .*; set task_config 'annotations'"):
        VgymJsonlTask({"root": str(jsonl_root), "annotations": "other.jsonl"})
    with pytest.raises(InvalidConfigError, match=r"the dataset root '.*missing' is not a folder"):
        VgymJsonlTask({"root": str(tmp_path / "missing")})


def test_construction_decodes_no_image_and_bad_files_fail_in_sample(tmp_path: Path) -> None:
    root = tmp_path / "lazy"
    root.mkdir()
    (root / "a.png").write_text("this is not a PNG")
    (tmp_path / "secret.png").write_bytes((root / "a.png").read_bytes())
    os.symlink(tmp_path / "secret.png", root / "link.png")
    os.symlink(root / "a.png", root / "alias.png")  # a link inside the root is fine
    _jsonl(root / "data.jsonl", [
        {"id": name, "question": "q", "answer": "x", "answer_type": "exact", "images": [name]}
        for name in ("a.png", "link.png", "alias.png")])
    task = VgymJsonlTask({"root": str(root)})  # no image is opened here
    with pytest.raises(
        InvalidConfigError, match=r"vgym_jsonl record 'a.png': .*a.png: not an image Pillow can read"
    ):
        task.sample("test", 0, 0)
    with pytest.raises(
        InvalidConfigError,
        match=r"record 'link.png': path 'link.png' resolves to .*secret.png, "
        r"outside the dataset root",
    ):
        task.sample("test", 1, 0)
    # followed, inside
    with pytest.raises(InvalidConfigError, match=r"record 'alias.png': .*a.png: not an image"):
        task.sample("test", 2, 0)
    env = VisualToolEnv("vgym_jsonl", task_config={"root": str(root)}, split="test")
    with pytest.raises(InvalidConfigError, match=r"not an image Pillow can read"):  # reset propagates it
        env.reset(options={"index": 0})


# ---------------------------------------------------------------- ChartQA


def test_chartqa_layout_types_and_relaxed_accuracy(chartqa_root: Path) -> None:
    task = ChartqaTask({"root": str(chartqa_root)})
    test = task.split_records("test")
    assert [r.id for r in test] == ["test/human/0", "test/human/1", "test/augmented/0", "test/augmented/1"]
    assert [(r.answer_type, r.tolerance) for r in test] == [
        ("numeric", 0.05),
        ("exact", 0.0),
        ("numeric", 0.05),
        ("numeric", 0.05),
    ]
    assert [r.id for r in task.split_records("train")] == ["train/human/0"]
    sample = task.sample("test", 0, 0)
    assert sample.question == "What is the value of Peru in 2019?" and sample.answer == "45"
    np.testing.assert_array_equal(sample.images[0], _noise(200, 300, 3))
    assert sample.metadata["record"] == {"subset": "human", "imgname": "a.png"}
    assert task.prompt(sample, True).endswith("Answer with a single number.")
    # Relaxed accuracy: within 5 % of 45 is [42.75, 47.25].
    assert [task.score(sample, a) for a in ("45", "47.2", "47.3", "42.7", "45 and 46", "Peru")] == [
        1,
        1,
        0,
        0,
        0,
        0,
    ]
    chile = task.sample("test", 1, 0)
    assert [task.score(chile, a) for a in ("Chile", "chile.", "Peru")] == [1, 1, 0]
    share = task.sample("test", 2, 0)
    assert (
        task.score(share, "12.5") == 1.0
        and task.score(share, "12.5%") == 1.0
        and task.score(share, "13.2") == 0
    )
    assert task.sample("test", 3, 0).answer == "1200"  # a one-item label list is unwrapped
    assert task.sample("train", 0, 0).answer == "3"  # a number label becomes text
    human = ChartqaTask({"root": str(chartqa_root), "subsets": ["human"]})
    assert [r.id for r in human.split_records("test")] == ["test/human/0", "test/human/1"]


def test_crop_through_the_env_on_a_chartqa_image(chartqa_root: Path) -> None:
    env = VisualToolEnv("chartqa_dataset", task_config={"root": str(chartqa_root)}, split="test")
    try:
        obs, _ = env.reset(options={"index": 0})
        written = _noise(200, 300, 3)
        np.testing.assert_array_equal(obs["images"][0], fit_to_budget(written, 224 * 224))
        action = env.protocol.format_tool_call("crop", {"box": [10, 20, 110, 70]})
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["tool_calls"][0]["ok"] and not (terminated or truncated)
        expected = fit_to_budget(np.ascontiguousarray(written[20:70, 10:110]), 224 * 224, upscale=True)
        np.testing.assert_array_equal(obs["images"][0], expected)
    finally:
        env.close()


def test_chartqa_errors(tmp_path: Path, chartqa_root: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"chartqa_dataset: none of the annotation files "
                                                 r"\['train/train_human.json', 'train/train_augmented.json'"):
        ChartqaTask({"root": str(tmp_path / "empty")})
    with pytest.raises(
        InvalidConfigError, match=r"subsets must be a non-empty subset of \('human', 'augmented'\)"
    ):
        ChartqaTask({"root": str(chartqa_root), "subsets": ("human", "synthetic")})
    (chartqa_root / "test" / "test_human.json").write_text(json.dumps([{"imgname": "a.png", "query": "q"}]))
    with pytest.raises(
        InvalidConfigError,
        match=r"test_human.json\[0\]: expected an object with 'imgname', 'query' "
        r"and 'label'",
    ):
        ChartqaTask({"root": str(chartqa_root)})
    (chartqa_root / "test" / "test_human.json").write_text(json.dumps(
        [{"imgname": "../../../x.png", "query": "q", "label": "1"}]))
    with pytest.raises(
        InvalidConfigError,
        match=r"test_human.json\[0\]: path 'test/png/../../../x.png' leaves the "
        r"dataset root",
    ):
        ChartqaTask({"root": str(chartqa_root)})


# ---------------------------------------------------------------- V* Bench


def test_vstar_both_option_styles(vstar_root: Path) -> None:
    task = VstarTask({"root": str(vstar_root)})
    assert [r.id for r in task.split_records("test")] == ["0", "1", "3"]  # question_id, else the line number
    glove = task.sample("test", 0, 0)
    assert glove.question == "What is the material of the glove?\nA. rubber\nB. cotton\nC. kevlar\nD. leather"
    assert glove.answer == "A" and glove.metadata["options"] == ["rubber", "cotton", "kevlar", "leather"]
    assert glove.metadata["record"] == {"category": "direct_attributes", "question_id": 0, "instruction":
                                        "Answer with the option's letter from the given choices directly."}
    assert glove.images[0].shape == (1200, 1600, 3)  # full resolution: the env fits it to the budget
    assert np.abs(glove.images[0].astype(int) - np.load(vstar_root / "expected.npy")).mean() < 3  # JPEG q95
    assert task.prompt(glove, True).endswith("\nAnswer with the letter (A, B, C or D) of the correct option.")
    assert [task.score(glove, a) for a in ("A", "(a)", "rubber", "B", "cotton", "")] == [1, 1, 1, 0, 0, 0]
    side = task.sample("test", 1, 0)
    assert side.question == "Is the cup on the left or right side of the dog?\nA. left\nB. right"
    assert side.answer == "B" and task.score(side, "right") == 1.0  # label 1 is option index 1
    assert task.sample("test", 2, 0).answer == "B"  # "(B)"
    assert VstarTask({"root": str(vstar_root), "split": "train"}).split_records("test") == []


@pytest.mark.parametrize(
    "line, message",
    [
        (
            {"image": "a.jpg", "text": "No options here", "label": "A"},
            r"no options: expected an 'options' list or "
            r"'\(A\) \.\.\.' lines",
        ),
        ({"image": "a.jpg", "text": "Q?\n(A) x\n(C) y", "label": "A"}, r"needs 2 to 26 'options', got 1"),
        ({"image": "a.jpg", "text": VSTAR_TEXT, "label": "E"}, r"letter \(A to D\), got 'E'"),
        ({"image": "a.jpg", "text": VSTAR_TEXT, "label": 4}, r"letter \(A to D\), got 'E'"),
        ({"image": "a.jpg", "text": "Q?", "label": "A"} | {"options": "x"}, r"'options' must be a list"),
        (
            {"image": "a.jpg", "question": "Q?", "label": "A"},
            r"expected an object with 'image', 'text' and 'label'",
        ),
        ({"image": "/abs/a.jpg", "text": VSTAR_TEXT, "label": "A"}, r"absolute path '/abs/a.jpg'"),
    ],
)
def test_vstar_malformed_lines(tmp_path: Path, line: dict[str, Any], message: str) -> None:
    _jsonl(tmp_path / "test_questions.jsonl", [line])
    with pytest.raises(InvalidConfigError, match=rf"test_questions.jsonl:1: .*{message}"):
        VstarTask({"root": str(tmp_path)})


# ---------------------------------------------------------------- RefCOCO


def test_refcoco_jsonl_boxes_sentences_and_splits(refcoco_jsonl_root: Path) -> None:
    refcoco_root = refcoco_jsonl_root
    task = RefcocoTask({"root": str(refcoco_root), **REFCOCO_JSONL})
    # testA -> test; default split test
    assert [r.id for r in task.split_records("test")] == ["1.0", "1.1", "3"]
    assert [r.id for r in task.split_records("train")] == ["2"]
    left = task.sample("test", 0, 0)
    # x+w, y+h
    assert left.question == "Give the box of: man on left." and left.answer == "[10.5, 20, 40.5, 60]"
    assert left.metadata["record"] == {"ref_id": 7, "split": "testA", "expression": "man on left",
                                       "bbox_xywh": [10.5, 20, 30, 40]}
    np.testing.assert_array_equal(left.images[0], _noise(120, 160, 8))
    assert "(160x120)" in task.prompt(left, True)
    # [10.5, 40, 40.5, 80] keeps the lower half of the 30 x 40 box: overlap 600, union 1200 + 1200 - 600.
    assert [
        task.score(left, a) for a in ("[10.5, 20, 40.5, 60]", "[10.5, 40, 40.5, 80]", "[0, 0, 5, 5]")
    ] == pytest.approx([1, 1 / 3, 0])
    assert task.sample("test", 1, 0).question == "Give the box of: guy in red."
    # the trailing dot is not doubled
    assert task.sample("test", 2, 0).question == "Give the box of: the cat."
    only_a = RefcocoTask({"root": str(refcoco_root), **REFCOCO_JSONL, "keep_splits": ["testA"]})
    assert [r.id for r in only_a.split_records("test")] == ["1.0", "1.1"] and only_a.split_records(
        "train"
    ) == []
    with pytest.raises(
        InvalidConfigError, match=r"record '1.0': image file not found: .*refcoco_jsonl/COCO_train2014_"
    ):
        # image_dir "": looked up in the root
        RefcocoTask({"root": str(refcoco_root), **REFCOCO_JSONL, "image_dir": ""}).sample("test", 0, 0)


@pytest.mark.parametrize(
    "line, message",
    [
        (
            {"image": "a.jpg", "bbox": [1, 2, -3, 4], "sent": "x"},
            r"'bbox' must be COCO \[x, y, width, height\] with "
            r"width, height > 0, got \[1, 2, -3, 4\]",
        ),
        ({"image": "a.jpg", "bbox": [1, 2, 3], "sent": "x"}, r"'bbox' must be COCO"),
        (
            {"image": "a.jpg", "bbox": [1, 2, 3, 4], "sent": "x", "split": "dev"},
            r"split must be one of .*got 'dev'",
        ),
        (
            {"image": "a.jpg", "bbox": [1, 2, 3, 4]},
            r"expected 'expression', 'sent' or 'sentences' with non-empty text",
        ),
        (
            {"image": "a.jpg", "bbox": [1, 2, 3, 4], "sentences": []},
            r"expected 'expression', 'sent' or 'sentences'",
        ),
        ({"bbox": [1, 2, 3, 4], "sent": "x"}, r"expected an object with 'image', 'bbox' and an expression"),
    ],
)
def test_refcoco_malformed_lines(tmp_path: Path, line: dict[str, Any], message: str) -> None:
    _jsonl(tmp_path / "refcoco.jsonl", [line])
    with pytest.raises(InvalidConfigError, match=rf"refcoco.jsonl:1: {message}"):
        RefcocoTask({"root": str(tmp_path), **REFCOCO_JSONL, "image_dir": ""})


# ---------------------------------------------------------------- Charades-STA


def test_charades_sta_lines_frames_and_temporal_iou(charades_root: Path) -> None:
    task = CharadesStaTask({"root": str(charades_root)})
    # line numbers; the blank line skipped
    assert [r.id for r in task.split_records("test")] == ["test/1", "test/3"]
    assert [r.id for r in task.split_records("train")] == ["train/1"]
    sample = task.sample("test", 0, 0)
    assert sample.question == 'When does this happen in the video: "a person opens a door."?'
    assert sample.answer == "[0.50, 1.25]"
    assert sample.video == os.path.realpath(charades_root / "Charades_v1_480/AO8RW.mp4")
    assert sample.metadata["record"] == {
        "video_id": "AO8RW",
        "sentence": "a person opens a door.",
        "start_s": 0.5,
        "end_s": 1.25,
    }
    assert [frame_index(f) for f in sample.images] == [2, 6, 10, 14]  # 4 frames at 0.25, 0.75, 1.25, 1.75 s
    assert "The images are 4 evenly spaced frames of the 2.00 s video." in task.prompt(sample, True)
    # [1.0, 2.0] against [0.5, 1.25]: overlap 0.25 s, union 1.5 s.
    assert [task.score(sample, a) for a in ("[0.5, 1.25]", "[1.0, 2.0]", "1.5-2", "[1.25, 0.5]")] == \
        pytest.approx([1, 1 / 6, 0, 0])
    two = CharadesStaTask({"root": str(charades_root), "overview_frames": 2}).sample("test", 0, 0)
    assert [frame_index(f) for f in two.images] == [4, 12]  # 0.5 s and 1.5 s


def test_get_frame_through_the_env_reads_the_record_video(charades_root: Path) -> None:
    env = VisualToolEnv("charades_sta", task_config={"root": str(charades_root)}, split="test")
    try:
        env.reset(options={"index": 0})
        obs, _, _, _, info = env.step(env.protocol.format_tool_call("get_frame", {"t_s": 1.0}))
        assert info["tool_calls"][0]["ok"], info["tool_calls"]
        assert frame_index(obs["images"][0]) == 8  # upscaled for display; the cells still read 8
    finally:
        env.close()


@pytest.mark.parametrize("text, message", [
    ("AO8RW 0.5##no end time", r"expected 'VIDEOID START END##sentence', got 'AO8RW 0.5##no end time'"),
    ("AO8RW 0.5 1.0 a person sits", r"expected 'VIDEOID START END##sentence'"),
    ("AO8RW 0.5 x##a person sits", r"expected 'VIDEOID START END##sentence'"),
    ("AO8RW 0.5 1.0##   ", r"expected 'VIDEOID START END##sentence'"),
    ("AO8RW 2.0 1.0##a person sits", r"an 'interval' answer .* 0 <= start < end, got '\[2.00, 1.00\]'"),
    ("../../etc/x 0 1##escape", r"path 'Charades_v1_480/../../etc/x.mp4' leaves the dataset root"),
])
def test_charades_sta_malformed_lines(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "Charades_v1_480").mkdir()
    (tmp_path / "charades_sta_test.txt").write_text(text + "\n")
    with pytest.raises(InvalidConfigError, match=rf"charades_sta_test.txt:1: {message}"):
        CharadesStaTask({"root": str(tmp_path)})


def test_charades_sta_config_errors(charades_root: Path) -> None:
    with pytest.raises(InvalidConfigError, match=r"annotations must contain '\{split\}', got 'sta.txt'"):
        CharadesStaTask({"root": str(charades_root), "annotations": "sta.txt"})
    task = CharadesStaTask({"root": str(charades_root)})
    (charades_root / "Charades_v1_480" / "AO8RW.mp4").unlink()  # one missing *file*: that record's fault
    with pytest.raises(InvalidConfigError, match=r"'test/1': video file not found: .*Charades_v1_480/AO8RW"):
        task.sample("test", 0, 0)


# ---------------------------------------------------------------- the layout, checked when the env is made

WRITERS = {"vgym_jsonl": write_vgym_jsonl, "chartqa_dataset": write_chartqa, "vstar": write_vstar,
           "refcoco": write_refcoco, "charades_sta": write_charades_sta}

LAYOUT_BREAKS = [  # (loader, paths removed under its sample root, the part of the layout, message)
    ("vgym_jsonl", ("data.jsonl",), "annotation file",
     r"vgym_jsonl: the annotation file 'data.jsonl' is missing from the dataset root .*'annotations'"),
    ("chartqa_dataset", ("train/train_human.json", "test/test_human.json", "test/test_augmented.json"),
     "annotation file", r"none of the annotation files \['train/train_human.json', 'train/train_augmented"),
    ("chartqa_dataset", ("test/png",), "media folder", r"the media folder 'test/png' is missing .*'root'"),
    ("vstar", ("test_questions.jsonl",), "annotation file", r"the annotation file 'test_questions.jsonl'"),
    ("refcoco", ("refcoco/refs(unc).p",), "annotation file",
     r"the annotation file 'refcoco/refs\(unc\).p' is missing .*'dataset' / 'split_by'"),
    ("refcoco", ("refcoco/instances.json",), "annotation file",
     r"the annotation file 'refcoco/instances.json' is missing .*'dataset'"),
    ("refcoco", ("train2014",), "media folder", r"the media folder 'train2014' is missing .*'image_dir'"),
    ("charades_sta", ("charades_sta_train.txt", "charades_sta_test.txt"), "annotation file",
     r"none of the annotation files \['charades_sta_train.txt', 'charades_sta_val.txt', 'charades_sta_test"),
    ("charades_sta", ("Charades_v1_480",), "media folder",
     r"the media folder 'Charades_v1_480' is missing from the dataset root .*'video_dir'"),
]


@pytest.mark.parametrize("name, removed, what, message", LAYOUT_BREAKS,
                         ids=[f"{b[0]}-{b[2].split()[0]}-{b[1][0]}" for b in LAYOUT_BREAKS])
def test_make_names_the_missing_part_of_the_layout(tmp_path: Path, name: str, removed: tuple[str, ...],
                                                   what: str, message: str) -> None:
    root = WRITERS[name](tmp_path / name)
    gymnasium.make(LOADERS[name], task_config={"root": str(root)}).close()  # complete: it builds
    for relative in removed:
        path = root / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(DatasetLayoutError, match=message) as caught:
        gymnasium.make(LOADERS[name], task_config={"root": str(root)})  # at make, before any reset
    assert caught.value.what == what and caught.value.path == os.path.realpath(root / removed[0])


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_make_names_a_missing_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetLayoutError, match=rf"{name}: the dataset root '.*nowhere' is not a folder") \
            as caught:
        gymnasium.make(LOADERS[name], task_config={"root": str(tmp_path / "nowhere")})
    assert caught.value.what == "dataset root" and isinstance(caught.value, FileNotFoundError)
