"""Tests of vgym/dataset_records.py's scoring by answer type (hand-worked values) and the generic
:class:`vgym.data.dataset_task.DatasetTask` (index modulo, splits, question and prompt, video frames read back
from their pixels, errors naming the record and file, config validation). Records and the reader:
``test_datasets.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dataset_helpers import WHERE, frame_index, noise, record_line
from PIL import Image

from vgym.data.dataset_task import DatasetConfig, DatasetTask
from vgym.data.records import DatasetRecord, parse_record, score_record
from vgym.data.synthetic_video import write_synthetic_clip
from vgym.errors import InvalidConfigError


def _record(answer_type: str, answer: str, **fields: Any) -> DatasetRecord:
    return parse_record(record_line(answer_type=answer_type, answer=answer, **fields), where=WHERE)


@pytest.mark.parametrize("record, answer, expected", [
    (_record("exact", "red"), "Red.", 1.0),
    (_record("exact", "red"), "the red", 1.0),  # articles and punctuation are normalised away
    (_record("exact", "red"), "crimson", 0.0),
    (_record("exact", "red", aliases=["crimson"]), "Crimson", 1.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "B", 1.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "(b)", 1.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "blue", 1.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "B. blue", 1.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "A", 0.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "red", 0.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "", 0.0),
    # numeric, tolerance relative to the gold value: gold 100 at 5 % accepts [95, 105].
    (_record("numeric", "100", tolerance=0.05), "105", 1.0),
    (_record("numeric", "100", tolerance=0.05), "95", 1.0),
    (_record("numeric", "100", tolerance=0.05), "94.9", 0.0),
    # math.isclose(rel_tol=0.05) would accept: 5.26
    (_record("numeric", "100", tolerance=0.05), "105.2", 0.0),
    (_record("numeric", "100", tolerance=0.05), "about 100 m", 1.0),
    (_record("numeric", "100", tolerance=0.05), "100 or 101", 0.0),  # two numbers: ambiguous
    (_record("numeric", "-20", tolerance=0.05), "-21", 1.0),
    (_record("numeric", "-20", tolerance=0.05), "-21.1", 0.0),
    (_record("numeric", "0", tolerance=0.05), "0.001", 0.0),  # 5 % of 0 is 0
    (_record("numeric", "0", abs_tolerance=2), "-2", 1.0),
    (_record("numeric", "0", abs_tolerance=2), "2.5", 0.0),
    (_record("numeric", "1,250"), "1250", 1.0),
    (_record("numeric", "3"), "three", 0.0),
    # box IoU: [5, 0, 15, 10] overlaps [0, 0, 10, 10] in 5 x 10 = 50; union 100 + 100 - 50 = 150.
    (_record("box", "[0, 0, 10, 10]"), "[0, 0, 10, 10]", 1.0),
    (_record("box", "[0, 0, 10, 10]"), "[5, 0, 15, 10]", 1 / 3),
    (_record("box", "[0, 0, 10, 10]"), "[20, 20, 30, 30]", 0.0),
    (_record("box", "[0, 0, 10, 10]"), "[10, 10, 0, 0]", 0.0),
    # interval IoU: [3, 5] against [2, 4]: overlap 1, union 3.
    (_record("interval", "[2, 4]"), "[2.0, 4.0]", 1.0),
    (_record("interval", "[2, 4]"), "[3, 5]", 1 / 3),
    (_record("interval", "[2, 4]"), "[5, 3]", 0.0),
])
def test_score_record(record: DatasetRecord, answer: str, expected: float) -> None:
    assert score_record(record, answer) == pytest.approx(expected)


def test_score_record_unknown_type() -> None:
    record = DatasetRecord(id="x", split="test", question="q", answer="a", answer_type="yesno")
    with pytest.raises(InvalidConfigError, match=r"record 'x': answer_type must be one of"):
        score_record(record, "a")


# ---------------------------------------------------------------- DatasetTask


class ListTask(DatasetTask):
    """A dataset task over a given list of records (not registered)."""

    name = "list_dataset"
    config_cls = DatasetConfig
    default_tools = ("crop",)

    def __init__(self, config: Any, given: list[DatasetRecord]) -> None:
        self.given = given  # set before super().__init__, which calls records()
        super().__init__(config)

    def records(self) -> list[DatasetRecord]:
        return self.given

    def root(self) -> str:
        return self.config.root


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """``a.png`` (30x40 noise), ``b.png`` (20x20 noise) and ``clip.mp4`` (2 s at 8 fps: 16 frames)."""
    Image.fromarray(noise(30, 40, 1)).save(tmp_path / "a.png")
    Image.fromarray(noise(20, 20, 2)).save(tmp_path / "b.png")
    write_synthetic_clip(str(tmp_path / "clip.mp4"), seconds=2, fps=8)
    return tmp_path


def _records(*lines: dict[str, Any]) -> list[DatasetRecord]:
    return [parse_record(line, where=f"mem:{i}") for i, line in enumerate(lines)]


def test_sample_takes_the_index_modulo_the_split(media: Path) -> None:
    records = _records(
        *(record_line(id=f"t{i}", answer=f"a{i}") for i in range(3)), record_line(id="x", split="train")
    )
    task = ListTask({"root": str(media)}, records)
    assert [task.sample("test", i, 0).id for i in range(7)] == [f"list_dataset/t{i % 3}" for i in range(7)]
    assert task.sample("test", 2**31 - 2, 0).index == (2**31 - 2) % 3
    assert task.sample("train", 5, 0).id == "list_dataset/x"
    same = [task.sample("test", 1, seed).images[0].tobytes() for seed in (0, 9)]
    assert same[0] == same[1]  # the seed is unused: the data is fixed
    with pytest.raises(
        InvalidConfigError,
        match=r"list_dataset: the split 'val' has no records in .* \(records per "
        r"split: \{'train': 1, 'val': 0, 'test': 3\}\)",
    ):
        task.sample("val", 0, 0)
    with pytest.raises(InvalidConfigError, match=r"unknown split 'dev'"):
        task.sample("dev", 0, 0)
    with pytest.raises(InvalidConfigError, match=r"non-negative ints, got seed=0, index=-1"):
        task.sample("test", -1, 0)


def test_sample_fields_prompt_solution_and_score(media: Path) -> None:
    records = _records(
        record_line(
            id="c",
            answer_type="choice",
            answer="B",
            options=["red", "blue"],
            images=["a.png", "b.png"],
            metadata={"source": "unit"},
            tools=["crop"],
        ),
        record_line(id="n", answer_type="numeric", answer="12", tolerance=0.1),
        record_line(id="b", answer_type="box", answer="[1, 2, 30, 20]"),
        record_line(id="e", answer="red", aliases=["crimson"]),
    )
    task = ListTask({"root": str(media)}, records)
    choice, numeric, box, exact = (task.sample("test", i, 0) for i in range(4))
    assert choice.id == "list_dataset/c" and choice.task == "list_dataset" and choice.split == "test"
    assert choice.question == "What colour?\nA. red\nB. blue"
    np.testing.assert_array_equal(choice.images[0], noise(30, 40, 1))
    np.testing.assert_array_equal(choice.images[1], noise(20, 20, 2))
    assert choice.video is None and choice.answer == "B"
    assert choice.metadata["record"] == {"source": "unit"} and choice.metadata["answer_type"] == "choice"
    assert choice.metadata["options"] == ["red", "blue"] and choice.metadata["tools"] == ["crop"]
    json.dumps(dict(choice.metadata))
    assert (
        task.prompt(choice, True)
        == choice.question + "\nAnswer with the letter (A or B) of the correct option."
    )
    assert task.prompt(numeric, True).endswith("\nAnswer with a single number.")
    assert task.prompt(box, False).endswith("in pixels of image 0 at full resolution (40x30).")
    assert task.prompt(exact, True) == "What colour?\nAnswer with a single word or short phrase."
    for sample in (choice, numeric, box, exact):
        solution = task.solution(sample, tools_enabled=True)
        assert solution.tool_calls == () and solution.answer == sample.answer
        assert task.score(sample, solution.answer) == 1.0
    assert task.score(choice, "blue") == 1.0 and task.score(choice, "A") == 0.0
    assert task.score(numeric, "13.2") == 1.0 and task.score(numeric, "13.3") == 0.0  # 10 % of 12 = 1.2
    assert task.score(exact, "Crimson") == 1.0
    assert task.score(box, "[1, 2, 30, 11]") == pytest.approx(0.5)  # half the gold box's height
    assert task.answer_choices() is None and task.procedural is False


def test_video_records_show_evenly_spaced_decoded_frames(media: Path) -> None:
    records = _records(
        record_line(id="v", images=None, video="clip.mp4", answer_type="interval", answer="[0.5, 1]"),
        record_line(id="iv", images=["b.png"], video="clip.mp4"),
    )
    task = ListTask({"root": str(media)}, records)
    sample = task.sample("test", 0, 0)
    assert sample.video == os.path.realpath(media / "clip.mp4")
    # 16 frames at 1/8 s: the centres of 4 equal slices of 2 s are 0.25, 0.75, 1.25, 1.75 s = frames 2, 6, 10,
    # 14.
    assert [frame_index(f) for f in sample.images] == [2, 6, 10, 14]
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in sample.images)
    video = sample.metadata["video"]
    assert video["frame_times"] == [0.25, 0.75, 1.25, 1.75] and video["duration_s"] == 2.0
    assert video["num_frames"] == 16 and video["fps"] == 8
    assert task.prompt(sample, True) == (
        "What colour?\nThe images are 4 evenly spaced frames of the 2.00 s video.\n"
        "Answer the time interval in seconds as [start, end]."
    )
    assert task.score(sample, "[0.5, 1.0]") == 1.0
    assert task.score(sample, "[0.75, 1.25]") == pytest.approx(1 / 3)
    mixed = task.sample("test", 1, 0)
    np.testing.assert_array_equal(mixed.images[0], noise(20, 20, 2))  # the record's images come first
    assert [frame_index(f) for f in mixed.images[1:]] == [2, 6, 10, 14]
    assert "\nImages 1 to 4 are 4 evenly spaced frames of the 2.00 s video.\n" in task.prompt(mixed, True)
    one = ListTask({"root": str(media), "overview_frames": 1}, records).sample("test", 0, 0)
    assert [frame_index(f) for f in one.images] == [8]  # the middle: 1.0 s


def test_sample_errors_name_the_record_and_file(media: Path) -> None:
    os.symlink(media.parent, media / "up")
    (media / "broken.mp4").write_bytes(b"\x00" * 100)
    records = _records(
        record_line(id="gone", images=["missing.png"]),
        record_line(id="out", images=["up/x.png"]),
        record_line(id="vid", images=None, video="broken.mp4"),
        record_line(id="big", images=["a.png"]),
    )
    task = ListTask({"root": str(media), "max_image_pixels": 1000}, records)
    with pytest.raises(
        InvalidConfigError, match=r"list_dataset record 'gone': image file not found: .*missing.png"
    ):
        task.sample("test", 0, 0)
    with pytest.raises(
        InvalidConfigError, match=r"record 'out': path 'up/x.png' resolves to .* outside the dataset"
    ):
        task.sample("test", 1, 0)
    with pytest.raises(
        InvalidConfigError, match=r"record 'vid': .*broken.mp4: the video could not be decoded"
    ):
        task.sample("test", 2, 0)
    with pytest.raises(InvalidConfigError, match=r"record 'big': .*a.png: image is 40x30 = 1200 pixels, over "
                                                 r"max_pixels=1000"):
        task.sample("test", 3, 0)


def test_construction_checks_root_and_ids(media: Path) -> None:
    records = _records(record_line(id="a"))
    with pytest.raises(InvalidConfigError, match=r"list_dataset reads a dataset from disk: set "
                                                 r"task_config=\{'root': \.\.\.\}"):
        ListTask(None, records)
    with pytest.raises(InvalidConfigError, match=r"the dataset root '.*nowhere' is not a folder"):
        ListTask({"root": str(media / "nowhere")}, records)
    with pytest.raises(InvalidConfigError, match=r"two records have the id 'a'"):
        ListTask({"root": str(media)}, records + _records(record_line(id="a", split="train")))
    assert ListTask(DatasetConfig(root=media), records).root() == str(media)  # a Path is stored as str


@pytest.mark.parametrize("fields, message", [
    ({"overview_frames": 0}, r"overview_frames must be an int from 1 to 8, got 0"),
    ({"overview_frames": 9}, r"got 9"),
    ({"overview_frames": 2.0}, r"got 2.0"),
    ({"max_image_pixels": 0}, r"max_image_pixels must be an int >= 1, got 0"),
    ({"root": 3}, r"root must be a folder path \(str\), got 3"),
])
def test_dataset_config_validation(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        DatasetConfig(**fields)
