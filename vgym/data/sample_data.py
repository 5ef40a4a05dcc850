"""Tiny sample datasets in each dataset loader's real on-disk layout, for tests, fuzzing and as format
examples.

Contents: :func:`noise_image`, :func:`write_png`, :func:`write_jsonl`, :data:`VSTAR_TEXT`,
:func:`vstar_image`, :func:`write_vgym_jsonl`, :func:`write_chartqa`, :func:`write_vstar`,
:func:`write_refcoco`, :func:`write_charades_sta`, :class:`SampleDataset`, :func:`write_sample_datasets`.

One writer per loader of :mod:`vgym.tasks.local_data` (see its module docstring for the layouts): each writes
a handful of records with their images (seeded noise, so a test can compare decoded pixels with
:func:`noise_image`) or a synthetic clip (:func:`vgym.data.synthetic_video.write_synthetic_clip`, whose frames
encode their index) into ``root`` and returns ``root``. Deterministic: every image comes from an explicit seed
and every clip from the clip writer's fixed seed, so two calls write identical files. Records per split:

- ``vgym_jsonl``: train 2 (a choice and a two-image numeric record), test 2 (a box and a video interval
  record);
- ``chartqa_dataset``: train 1, test 4 (human and augmented subsets);
- ``vstar``: test 3 (a 1600x1200 JPEG, both option styles);
- ``refcoco``: train 1, test 3 (images under ``train2014``, so the task needs ``image_dir``);
- ``charades_sta``: train 1, test 2 (one 2 s, 8 fps clip).

:func:`write_sample_datasets` writes all five and says, per task, which env id, ``task_config`` and splits to
use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from vgym.data.synthetic_video import write_synthetic_clip

__all__ = ["noise_image", "write_png", "write_jsonl", "VSTAR_TEXT", "vstar_image", "write_vgym_jsonl",
           "write_chartqa", "write_vstar", "write_refcoco", "write_charades_sta", "SampleDataset",
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


def write_refcoco(root: Path) -> Path:
    """RefCOCO lines in ``refcoco.jsonl`` (refer-API ``sentences``, ``expression``, ``sent``; splits testA,
    train and the default) over ``train2014/COCO_train2014_000000000001.jpg`` (PNG bytes, 120x160, seed 8)."""
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
    """Charades-STA's ``charades_sta_{test,train}.txt`` (a blank line in test) and ``videos/AO8RW.mp4`` (2 s,
    8 fps)."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    write_synthetic_clip(str(root / "videos" / "AO8RW.mp4"), seconds=2, fps=8)
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
        task_config: the loader config it needs: ``root`` (as a string) and, for RefCOCO, ``image_dir``.
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
    "refcoco": ("vgym/Refcoco-v0", write_refcoco, "refcoco", {"image_dir": "train2014"}, ("train", "test")),
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
