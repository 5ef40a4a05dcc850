"""RefCOCO, RefCOCO+ and RefCOCOg read as released (``vgym/Refcoco-v0``, :mod:`vgym.data.refer`): the refer
data folder written by :func:`vgym.data.sample_data.write_refcoco` (``refs(<split_by>).p`` Python 2 pickles,
``instances.json``, ``train2014`` JPEGs) through ``gymnasium.make``; every release and ``split_by`` with its
released split names; oracle, fixed and wrong answers through the env; the restricted unpickler refusing a
``__reduce__`` payload at ``make``; malformed refs and instances.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
from oracle_play import oracle_input

import vgym  # noqa: F401  (registers the tools and the lazy tasks)
from vgym.data.plain_pickle import read_plain_pickle
from vgym.data.refer import read_refer
from vgym.data.sample_data import REFER_SPLITS, py2_pickle, smooth_image, write_refcoco
from vgym.errors import InvalidConfigError
from vgym.policies.oracle import OraclePolicy
from vgym.tasks.local_data import RefcocoTask

ENV_ID = "vgym/Refcoco-v0"

# Record ids "<ref_id>/<sent_id>" per vgym split, worked out from the sample: refs 0..3 (0 and 1 on image
# 581857 hold people, 2 a dog, 3 a car on image 9); RefCOCO and RefCOCO+ give ref 0 two sentences, RefCOCOg
# one each. RefCOCO (UNC) refs 0..3 are testA, train, val, testB.
EXPECTED = {
    ("refcoco", "unc"): {"train": ["1/2"], "val": ["2/3"], "test": ["0/0", "0/1", "3/4"]},
    ("refcoco", "google"): {"train": ["1/2"], "val": ["2/3"], "test": ["0/0", "0/1", "3/4"]},
    ("refcoco+", "unc"): {"train": ["1/2"], "val": ["2/3"], "test": ["0/0", "0/1", "3/4"]},
    ("refcocog", "umd"): {"train": ["1/1"], "val": ["2/2"], "test": ["0/0", "3/3"]},
    ("refcocog", "google"): {"train": ["1/1", "2/2"], "val": ["0/0", "3/3"], "test": []},  # no test released
}


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_refcoco(tmp_path_factory.mktemp("data") / "refer")


def _make(root: Path, **config: Any) -> gymnasium.Env:
    return gymnasium.make(ENV_ID, task_config={"root": str(root), **config})


def _episode(env: gymnasium.Env, split: str, index: int, answer: str | None = None) -> tuple[float, dict]:
    """One episode: the oracle's turns, or ``answer`` given at once."""
    env.reset(options={"split": split, "index": index})
    policy, base = OraclePolicy(), env.unwrapped
    for turn in range(base.config.max_turns):
        if answer is not None:
            text = f"<answer>{answer}</answer>"
        else:
            text = policy.act([oracle_input(base, turn)])[0].text
        _, reward, terminated, truncated, info = env.step(text)
        if terminated or truncated:
            return float(reward), info
    raise AssertionError("the episode did not end")


@pytest.mark.parametrize("release, split_by", sorted(EXPECTED))
def test_every_release_reads_with_its_split_names(refer_root: Path, release: str, split_by: str) -> None:
    env = _make(refer_root, dataset=release, split_by=split_by)
    try:
        task = env.unwrapped.task
        ids = {split: [r.id for r in task.split_records(split)] for split in ("train", "val", "test")}
        assert ids == EXPECTED[(release, split_by)]
        released = {r.metadata["split"] for s in ("train", "val", "test") for r in task.split_records(s)}
        assert released == set(REFER_SPLITS[(release, split_by)])  # the names as released, kept in metadata
        for split, records in ids.items():
            for index in range(len(records)):
                reward, info = _episode(env, split, index)
                assert reward >= 0.99 and info["reward_parts"]["accuracy"] == 1.0, (split, index, info)
    finally:
        env.close()


def test_default_release_is_refcoco_unc_and_gymnasium_make_plays_it(refer_root: Path) -> None:
    env = _make(refer_root)  # dataset "refcoco", split_by "unc", images in "train2014"
    try:
        obs, info = env.reset(options={"split": "test", "index": 0})
        sample = env.unwrapped.sample
        assert info["sample_id"] == "refcoco/0/0" and sample.question == "Give the box of: man on left."
        assert sample.answer == "[10.5, 20, 40.5, 60]"  # COCO [10.5, 20, 30, 40]: x + w, y + h
        assert sample.metadata["record"] == {
            "ref_id": 0, "sent_id": 0, "ann_id": 1719310, "image_id": 581857, "category_id": 1,
            "category": "person", "split": "testA", "expression": "man on left", "raw": "Man on left",
            "bbox_xywh": [10.5, 20.0, 30.0, 40.0]}
        image = sample.images[0]  # the file instances.json names, not the ref's "..._1719310.jpg"
        assert image.shape == (120, 160, 3)
        assert np.abs(image.astype(int) - smooth_image(120, 160, 8)).mean() < 3  # a quality-95 JPEG
        assert "(160x120)" in obs["text"]
        # fixed answers, scored by IoU: [10.5, 40, 40.5, 80] keeps the lower half of the 30 x 40 box:
        # overlap 600, union 1200 + 1200 - 600 = 1800.
        assert _episode(env, "test", 0, "[10.5, 20, 40.5, 60]")[1]["reward_parts"]["accuracy"] == 1.0
        half = _episode(env, "test", 0, "[10.5, 40, 40.5, 80]")[1]["reward_parts"]["accuracy"]
        assert half == pytest.approx(1 / 3)
        assert _episode(env, "test", 0, "[100, 60, 120, 80]")[1]["reward_parts"]["accuracy"] == 0.0
        car = env.unwrapped.task.sample("test", 2, 0)  # ref 3, testB, on the 140 x 100 image 9
        assert car.question == "Give the box of: the white car." and car.answer == "[20, 30, 80, 70]"
        assert car.images[0].shape == (100, 140, 3)
    finally:
        env.close()


def test_keep_splits_and_image_dir(refer_root: Path, tmp_path: Path) -> None:
    task = RefcocoTask({"root": str(refer_root), "keep_splits": ["testB"]})
    assert [r.id for r in task.split_records("test")] == ["3/4"] and task.split_records("train") == []
    moved = write_refcoco(tmp_path / "refer")
    (moved / "images" / "mscoco" / "images").mkdir(parents=True)
    # the refer toolkit's own place for the images
    os.rename(moved / "train2014", moved / "images" / "mscoco" / "images" / "train2014")
    task = RefcocoTask({"root": str(moved), "image_dir": "images/mscoco/images/train2014"})
    assert task.sample("train", 0, 0).images[0].shape == (120, 160, 3)


def test_a_python3_pickle_of_the_refs_reads_the_same(refer_root: Path, tmp_path: Path) -> None:
    py3 = write_refcoco(tmp_path / "refer")
    refs = read_plain_pickle(py3 / "refcoco" / "refs(unc).p")
    (py3 / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=pickle.HIGHEST_PROTOCOL))
    assert read_refer(py3 / "refcoco" / "refs(unc).p", py3 / "refcoco" / "instances.json") == \
        read_refer(refer_root / "refcoco" / "refs(unc).p", refer_root / "refcoco" / "instances.json")


class _Touch:
    """A ref whose unpickling runs ``os.system("touch <marker>")`` (with ``pickle.load``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def test_make_refuses_a_refs_pickle_with_a_reduce_payload_without_running_it(tmp_path: Path) -> None:
    root = write_refcoco(tmp_path / "refer")
    refs = read_plain_pickle(root / "refcoco" / "refs(unc).p")
    marker = tmp_path / "ran"
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs + [_Touch(marker)], protocol=2))
    refused = r"refcoco/refs\(unc\).p: refused to load this pickle: it asks for the global"
    with pytest.raises(InvalidConfigError, match=rf"{refused} {os.system.__module__}\.system"):
        _make(root)
    assert not marker.exists()


def _rewrite(root: Path, refs: list[dict[str, Any]] | None = None, instances: Any = None) -> None:
    if refs is not None:
        (root / "refcoco" / "refs(unc).p").write_bytes(py2_pickle(refs))
    if instances is not None:
        (root / "refcoco" / "instances.json").write_text(json.dumps(instances))


@pytest.mark.parametrize("change, message", [
    (lambda refs, inst: refs[1].update(ann_id=5),
     r"refs\(unc\).p: ref_id 1: ann_id 5 is not in .*instances.json"),
    (lambda refs, inst: refs[1].update(split="dev"),
     r"ref_id 1: split must be one of \['train', 'val', 'test'"),
    (lambda refs, inst: refs[2].update(ref_id="2"), r"ref 2: 'ref_id' must be int, got '2'"),
    (lambda refs, inst: refs[2]["sentences"][0].pop("sent_id"),
     r"ref_id 2 sentence 0: 'sent_id' must be int"),
    (lambda refs, inst: inst["images"].pop(), r"ref_id 3: image_id 9 has no 'file_name' in .*instances.json"),
    (lambda refs, inst: inst["annotations"][0].update(bbox=[1, 2, 0, 4]),
     r"instances.json: annotation 1719310: 'bbox' must be COCO \[x, y, width, height\] with width, height"),
    (lambda refs, inst: inst.pop("annotations"),
     r"instances.json: 'annotations' must be a list, got NoneType"),
])
def test_malformed_refs_and_instances_name_the_file_and_ref(tmp_path: Path, change: Any,
                                                            message: str) -> None:
    root = write_refcoco(tmp_path / "refer")
    refs = read_plain_pickle(root / "refcoco" / "refs(unc).p")
    instances = json.loads((root / "refcoco" / "instances.json").read_text())
    change(refs, instances)
    _rewrite(root, refs, instances)
    with pytest.raises(InvalidConfigError, match=message):
        _make(root)


def test_blank_sentences_are_skipped_and_shared_values_are_bounded(tmp_path: Path) -> None:
    root = write_refcoco(tmp_path / "refer")
    refs = read_plain_pickle(root / "refcoco" / "refs(unc).p")
    refs[0]["sentences"][1].update(sent=" ", raw="")  # nothing to ground
    refs[1]["sentences"][0].update(sent="", raw="Person on the right")  # sent blank: raw is used
    _rewrite(root, refs)
    task = RefcocoTask({"root": str(root)})
    assert [r.id for r in task.split_records("test")] == ["0/0", "3/4"]
    assert task.sample("train", 0, 0).question == "Give the box of: Person on the right."
    # One ref object listed 20,000 times (pickle's memo): a small file that walks like 2 million values.
    ref = dict(refs[0], sentences=[refs[0]["sentences"][0]] * 100)
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([ref] * 20_000, protocol=2))
    assert (root / "refcoco" / "refs(unc).p").stat().st_size < 100_000
    with pytest.raises(InvalidConfigError,
                       match=r"refs\(unc\).p: the pickle repeats shared values far beyond its size"):
        RefcocoTask({"root": str(root)})


@pytest.mark.parametrize("config, message", [
    ({"dataset": "refclef"},
     (r"dataset must be a refer release folder named one of \['refcoco', 'refcoco\+', 'refcocog'\] "
      r".*got 'refclef'")),
    ({"dataset": "refcoco+", "split_by": "umd"}, r"refcoco\+ is released split by \['unc'\], not 'umd'"),
])
def test_config_errors(refer_root: Path, config: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        _make(refer_root, **config)
