"""Tiny sample datasets in each dataset loader's real on-disk layout, for tests, fuzzing and as format
examples.

Contents: :func:`noise_image`, :func:`write_png`, :func:`write_jsonl`, :data:`VSTAR_TEXT`,
:func:`vstar_image`, :func:`smooth_image`, :func:`write_jpeg`, :func:`py2_pickle`, :data:`REFER_IMAGES`,
:data:`REFER_SPLITS`, :func:`write_vgym_jsonl`, :func:`write_chartqa`, :func:`write_vstar`,
:func:`write_refcoco`, :func:`write_refcoco_jsonl`, :func:`write_charades_sta`, :class:`SampleDataset`,
:func:`write_sample_datasets`.

One writer per loader of :mod:`vgym.tasks.local_data` (see its module docstring for the layouts), each in
the layout the official release unpacks to, file names included: each writes a handful of records with their
images (seeded noise, so a test can compare decoded pixels with :func:`noise_image`; JPEGs of
:func:`smooth_image`, which compression keeps within a few grey levels) or a synthetic clip
(:func:`vgym.data.synthetic_video.write_synthetic_clip`, whose frames encode their index) into ``root`` and
returns ``root``. Deterministic: every image comes from an explicit seed and every clip from the clip writer's
fixed seed, so two calls write identical files. Records per split:

- ``vgym_jsonl``: train 2 (a choice and a two-image numeric record), test 2 (a box and a video interval
  record);
- ``chartqa_dataset``: train 1, test 4 (human and augmented subsets);
- ``vstar``: test 3 (a 1600x1200 JPEG, both option styles);
- ``refcoco``: the refer data folder (``refcoco/``, ``refcoco+/``, ``refcocog/`` with their ``refs(*).p``
  Python 2 pickles and ``instances.json``, and ``train2014/`` JPEGs); RefCOCO (UNC): train 1, val 1, test 3
  (testA 2, testB 1); :func:`write_refcoco_jsonl` writes the RefCOCO JSONL line format instead;
- ``charades_sta``: train 1, test 2 (one 2 s, 8 fps clip in ``Charades_v1_480/``).

:func:`write_sample_datasets` writes all five and says, per task, which env id, ``task_config`` and splits to
use.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from vgym.data.synthetic_video import write_synthetic_clip

__all__ = ["noise_image", "write_png", "write_jsonl", "VSTAR_TEXT", "vstar_image", "smooth_image",
           "write_jpeg", "py2_pickle", "REFER_IMAGES", "REFER_SPLITS", "write_vgym_jsonl", "write_chartqa",
           "write_vstar", "write_refcoco", "write_refcoco_jsonl", "write_charades_sta", "SampleDataset",
           "write_sample_datasets"]

VSTAR_TEXT = ("What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) kevlar\n(D) leather\n"
              "Answer with the option's letter from the given choices directly.")
"""The text of V* Bench's first record: the question, ``(A) ...`` option lines and the instruction."""


def noise_image(height: int, width: int, seed: int) -> np.ndarray:
    """Uniform RGB noise, ``(height, width, 3)`` uint8, from ``np.random.default_rng(seed)``."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_png(path: Path, image: np.ndarray) -> np.ndarray:
    """Write ``image`` as PNG bytes whatever the name says (COCO names end in .jpg), creating folders; returns
    it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return image


def write_jsonl(path: Path, lines: list[Any]) -> None:
    """Write one line per item: strings as they are (comments, malformed lines), anything else as JSON."""
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")


def vstar_image() -> np.ndarray:
    """The pixels of V*'s JPEG before compression: seeded noise upscaled to 1600x1200 (smooth: JPEG keeps
    it)."""
    return cv2.resize(noise_image(60, 80, 6), (1600, 1200), interpolation=cv2.INTER_CUBIC)


def write_vgym_jsonl(root: Path) -> Path:
    """The vgym JSONL format: ``data.jsonl``, ``img/a.png`` (60x80, seed 1), ``img/b.png`` (50x50, seed 2) and
    ``clip.mp4`` (2 s, 8 fps); a ``//`` comment line first."""
    write_png(root / "img" / "a.png", noise_image(60, 80, 1))
    write_png(root / "img" / "b.png", noise_image(50, 50, 2))
    write_synthetic_clip(str(root / "clip.mp4"), seconds=2, fps=8)
    write_jsonl(
        root / "data.jsonl",
        [
            "// two train records and two test records",
            {
                "id": "t1",
                "split": "train",
                "question": "Which colour is the square?",
                "answer": "C",
                "answer_type": "choice",
                "options": ["red", "green", "blue"],
                "images": ["img/a.png"],
            },
            {
                "id": "t2",
                "split": "train",
                "question": "How many dots?",
                "answer": "7",
                "answer_type": "numeric",
                "images": ["img/a.png", "img/b.png"],
            },
            {
                "id": "e1",
                "question": "Where is the cup?",
                "answer": "[10, 5, 40, 30]",
                "answer_type": "box",
                "images": ["img/b.png"],
                "metadata": {"source": "fixture"},
            },
            {
                "id": "e2",
                "question": "When does the flash happen?",
                "answer": "[0.5, 1.25]",
                "answer_type": "interval",
                "video": "clip.mp4",
                "tools": ["sample_frames"],
            },
        ],
    )
    return root


def write_chartqa(root: Path) -> Path:
    """The ChartQA release layout: ``test/test_{human,augmented}.json``, ``train/train_human.json`` and
    200x300 charts ``test/png/a.png`` (seed 3), ``test/png/b.png`` (seed 4), ``train/png/c.png`` (seed 5)."""
    for split, name, seed in (("test", "a.png", 3), ("test", "b.png", 4), ("train", "c.png", 5)):
        write_png(root / split / "png" / name, noise_image(200, 300, seed))
    (root / "test" / "test_human.json").write_text(json.dumps([
        {"imgname": "a.png", "query": "What is the value of Peru in 2019?", "label": "45"},
        {"imgname": "b.png", "query": "Which country has the highest value?", "label": "Chile"},
    ]))
    (root / "test" / "test_augmented.json").write_text(json.dumps([
        {"imgname": "a.png", "query": "What share do others have?", "label": "12.5%"},
        {"imgname": "b.png", "query": "What is the sum of the two bars?", "label": ["1200"]},
    ]))
    (root / "train" / "train_human.json").write_text(json.dumps([
        {"imgname": "c.png", "query": "How many bars are there?", "label": 3},
    ]))
    return root


def write_vstar(root: Path) -> Path:
    """V* Bench's ``test_questions.jsonl`` with ``direct_attributes/sa_4690.jpg`` (:func:`vstar_image`, JPEG
    quality 95) and ``relative_position/sa_2.png`` (300x400, seed 7); options as ``(A) ...`` lines and as a
    list."""
    (root / "direct_attributes").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "direct_attributes" / "sa_4690.jpg"), vstar_image()[..., ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, 95])
    write_png(root / "relative_position" / "sa_2.png", noise_image(300, 400, 7))
    write_jsonl(root / "test_questions.jsonl", [
        {"image": "direct_attributes/sa_4690.jpg", "text": VSTAR_TEXT, "category": "direct_attributes",
         "question_id": 0, "label": "A"},
        {"image": "relative_position/sa_2.png", "text": "Is the cup on the left or right side of the dog?",
         "options": ["left", "right"], "label": 1, "category": "relative_position", "question_id": "1"},
        {"image": "relative_position/sa_2.png", "text": "Which is larger?\n(A) cup\n(B) dog", "label": "(B)"},
    ])
    return root


def py2_pickle(value: Any) -> bytes:
    """``value`` pickled as Python 2's ``cPickle.dump(value, f, 2)`` writes it: protocol 2, ``str`` as byte
    strings (``SHORT_BINSTRING``/``BINSTRING``; non-ASCII text as ``BINUNICODE``, a Python 2 ``unicode``),
    ints as ``BININT*``/``LONG1``, each container and string memoised (``BINPUT``/``LONG_BINPUT``).

    Args:
        value: dicts, lists, tuples, str, int, float, bool and None, nested.

    Raises:
        TypeError: for any other type.
    """
    out = bytearray(b"\x80\x02")
    memo = [0]

    def put() -> None:
        out.extend(b"q" + bytes([memo[0]]) if memo[0] < 256 else b"r" + struct.pack("<I", memo[0]))
        memo[0] += 1

    def emit(item: Any) -> None:
        if item is None or isinstance(item, bool):
            out.extend({None: b"N", True: b"\x88", False: b"\x89"}[item])
        elif isinstance(item, int):
            if 0 <= item < 256:
                out.extend(b"K" + bytes([item]))
            elif 0 <= item < 65536:
                out.extend(b"M" + struct.pack("<H", item))
            elif -(2 ** 31) <= item < 2 ** 31:
                out.extend(b"J" + struct.pack("<i", item))
            else:
                data = item.to_bytes((item.bit_length() + 8) // 8, "little", signed=True)
                out.extend(b"\x8a" + bytes([len(data)]) + data)
        elif isinstance(item, float):
            out.extend(b"G" + struct.pack(">d", item))
        elif isinstance(item, str):
            if item.isascii():
                data = item.encode("ascii")
                head = b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<I", len(data))
            else:
                data = item.encode("utf-8")
                head = b"X" + struct.pack("<I", len(data))
            out.extend(head + data)
            put()
        elif isinstance(item, (list, tuple, dict)):
            out.extend({list: b"]", tuple: b"(", dict: b"}"}[type(item)])
            if isinstance(item, tuple):
                for element in item:
                    emit(element)
                out.extend(b"t")
                put()
                return
            put()
            if item:
                out.extend(b"(")
                for element in item.items() if isinstance(item, dict) else item:
                    for part in element if isinstance(item, dict) else (element,):
                        emit(part)
                out.extend(b"u" if isinstance(item, dict) else b"e")
        else:
            raise TypeError(f"py2_pickle writes plain data only, got {type(item).__name__}")

    emit(value)
    out.extend(b".")
    return bytes(out)


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """Seeded noise on a grid 10 times coarser, upscaled (bicubic) to ``height`` x ``width``: smooth, so a
    JPEG keeps it to within a few grey levels."""
    coarse = noise_image(max(1, height // 10), max(1, width // 10), seed)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def write_jpeg(path: Path, image: np.ndarray) -> np.ndarray:
    """Write an RGB image as a quality-95 JPEG, creating folders; returns it (the pixels before
    compression)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"cannot write {path}")
    return image


REFER_IMAGES: dict[int, tuple[int, int, int]] = {581857: (120, 160, 8), 9: (100, 140, 9)}
"""COCO image id -> (height, width, seed) of the sample's ``train2014`` JPEGs (:func:`smooth_image`)."""

_REFER_ANNS = {  # ann_id: (image_id, category_id, COCO [x, y, w, h])
    1719310: (581857, 1, [10.5, 20.0, 30.0, 40.0]),
    1720001: (581857, 1, [100.0, 60.0, 20.0, 20.0]),
    1720002: (581857, 18, [0.0, 0.0, 50.0, 50.0]),
    1720003: (9, 3, [20.0, 30.0, 60.0, 40.0]),
}
_REFER_SENTENCES = {  # release: the sentences of refs 0..3 (ref i refers to the i-th annotation above)
    "refcoco": (["man on left", "guy in red"], ["person right"], ["dog"], ["the white car."]),
    "refcoco+": (["man in red shirt", "guy with glasses"], ["person in blue"], ["brown dog"], ["white car"]),
    "refcocog": (["a man in a red shirt standing on the left"], ["a person in blue walking away"],
                 ["a brown dog lying on the grass"], ["a white car parked by the road."]),
}
REFER_SPLITS: dict[tuple[str, str], tuple[str, str, str, str]] = {
    ("refcoco", "unc"): ("testA", "train", "val", "testB"),
    ("refcoco", "google"): ("test", "train", "val", "test"),
    ("refcoco+", "unc"): ("testA", "train", "val", "testB"),
    ("refcocog", "umd"): ("test", "train", "val", "test"),
    ("refcocog", "google"): ("val", "train", "train", "val"),
}
"""(release, split_by) -> the released split of each of the sample's 4 refs (one refs file each)."""


def _refer_instances() -> dict[str, Any]:
    """The sample's ``instances.json``: COCO images, annotations (``bbox`` [x, y, w, h]) and categories."""
    images = [{"id": image_id, "file_name": f"COCO_train2014_{image_id:012d}.jpg", "height": h, "width": w,
               "license": 1, "coco_url": "", "flickr_url": "", "date_captured": "2013-11-14 16:28:13"}
              for image_id, (h, w, _) in REFER_IMAGES.items()]
    annotations = [{"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": box, "iscrowd": 0,
                    "area": box[2] * box[3], "segmentation": [[box[0], box[1], box[0] + box[2], box[1],
                                                                box[0] + box[2], box[1] + box[3]]]}
                   for ann_id, (image_id, cat, box) in _REFER_ANNS.items()]
    categories = [{"id": 1, "name": "person", "supercategory": "person"},
                  {"id": 3, "name": "car", "supercategory": "vehicle"},
                  {"id": 18, "name": "dog", "supercategory": "animal"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def _refer_refs(release: str, split_by: str) -> list[dict[str, Any]]:
    """The refs of one refs file, structured as the refer toolkit's ``refs(<split_by>).p`` entries."""
    refs, sent_id = [], 0
    for ref_id, ((ann_id, (image_id, cat, _)), sentences, split) in enumerate(zip(
            _REFER_ANNS.items(), _REFER_SENTENCES[release], REFER_SPLITS[(release, split_by)])):
        sents = []
        for text in sentences:
            raw = text[0].upper() + text[1:]
            sents.append({"tokens": text.rstrip(".").split(), "raw": raw, "sent_id": sent_id, "sent": text})
            sent_id += 1
        refs.append({"sent_ids": [s["sent_id"] for s in sents], "file_name":
                     f"COCO_train2014_{image_id:012d}_{ann_id}.jpg", "ann_id": ann_id, "ref_id": ref_id,
                     "image_id": image_id, "split": split, "sentences": sents, "category_id": cat})
    return refs


def write_refcoco(root: Path) -> Path:
    """The refer data folder as released: ``refcoco/refs(unc).p`` and ``refs(google).p``,
    ``refcoco+/refs(unc).p``, ``refcocog/refs(umd).p`` and ``refs(google).p`` (:func:`py2_pickle` of 4 refs,
    5 or 4 sentences; splits :data:`REFER_SPLITS`), an ``instances.json`` in each of the three folders, and
    ``train2014/COCO_train2014_%012d.jpg`` JPEGs (:data:`REFER_IMAGES`)."""
    for image_id, (height, width, seed) in REFER_IMAGES.items():
        name = f"COCO_train2014_{image_id:012d}.jpg"
        write_jpeg(root / "train2014" / name, smooth_image(height, width, seed))
    for release, split_by in REFER_SPLITS:
        (root / release).mkdir(parents=True, exist_ok=True)
        (root / release / f"refs({split_by}).p").write_bytes(py2_pickle(_refer_refs(release, split_by)))
        (root / release / "instances.json").write_text(json.dumps(_refer_instances()))
    return root


def write_refcoco_jsonl(root: Path) -> Path:
    """RefCOCO JSONL lines in ``refcoco.jsonl`` (refer-API ``sentences``, ``expression``, ``sent``; splits
    testA, train and the default) over ``train2014/COCO_train2014_000000000001.jpg`` (PNG bytes, 120x160,
    seed 8): the line format ``task_config={"annotations": "refcoco.jsonl"}`` reads."""
    write_png(root / "train2014" / "COCO_train2014_000000000001.jpg", noise_image(120, 160, 8))
    write_jsonl(
        root / "refcoco.jsonl",
        [
            {
                "image": "COCO_train2014_000000000001.jpg",
                "bbox": [10.5, 20, 30, 40],
                "split": "testA",
                "ref_id": 7,
                "sentences": [{"sent": "man on left", "raw": "Man on left."}, {"sent": "guy in red"}],
            },
            {
                "image": "COCO_train2014_000000000001.jpg",
                "bbox": [0, 0, 50, 50],
                "split": "train",
                "expression": "dog",
            },
            {"image": "COCO_train2014_000000000001.jpg", "bbox": [100, 60, 20, 20], "sent": "the cat."},
        ],
    )
    return root


def write_charades_sta(root: Path) -> Path:
    """Charades-STA's ``charades_sta_{test,train}.txt`` (a blank line in test) and
    ``Charades_v1_480/AO8RW.mp4`` (2 s, 8 fps), the folder the official 480p zip unpacks to."""
    (root / "Charades_v1_480").mkdir(parents=True, exist_ok=True)
    write_synthetic_clip(str(root / "Charades_v1_480" / "AO8RW.mp4"), seconds=2, fps=8)
    (root / "charades_sta_test.txt").write_text("AO8RW 0.5 1.25##a person opens a door.\n\n"
                                                "AO8RW 0.0 0.75##person sits down\n")
    (root / "charades_sta_train.txt").write_text("AO8RW 1.0 2.0##a person walks away.\n")
    return root


@dataclass(frozen=True)
class SampleDataset:
    """One written sample dataset.

    Attributes:
        env_id: the gymnasium id of its loader
            (``gymnasium.make(env_id, task_config=task_config, split=...)``).
        root: the dataset folder.
        task_config: the loader config it needs: ``root`` (as a string); every other field keeps its
            default (the released layout).
        splits: the splits that have records, in ("train", "val", "test") order.
    """

    env_id: str
    root: Path
    task_config: dict[str, Any]
    splits: tuple[str, ...]


_WRITERS = {  # task name: (env id, writer, folder name, extra config, splits with records)
    "vgym_jsonl": ("vgym/VgymJsonl-v0", write_vgym_jsonl, "jsonl", {}, ("train", "test")),
    "chartqa_dataset": ("vgym/ChartqaDataset-v0", write_chartqa, "ChartQA Dataset", {}, ("train", "test")),
    "vstar": ("vgym/Vstar-v0", write_vstar, "vstar_bench", {}, ("test",)),
    "refcoco": ("vgym/Refcoco-v0", write_refcoco, "refer", {}, ("train", "val", "test")),
    "charades_sta": ("vgym/CharadesSta-v0", write_charades_sta, "charades", {}, ("train", "test")),
}


def write_sample_datasets(folder: Path | str) -> dict[str, SampleDataset]:
    """Write the five sample datasets into subfolders of ``folder`` (created if missing).

    Args:
        folder: where to write; existing files of the same names are overwritten.

    Returns:
        Task name (``TASKS`` key of :mod:`vgym.tasks.local_data`) -> :class:`SampleDataset`.

    Raises:
        OSError: if a file cannot be written; RuntimeError: if OpenCV cannot write an mp4 clip.
    """
    out: dict[str, SampleDataset] = {}
    for name, (eid, writer, subfolder, extra, splits) in _WRITERS.items():
        root = writer(Path(folder) / subfolder)
        out[name] = SampleDataset(eid, root, {"root": str(root), **extra}, splits)
    return out
