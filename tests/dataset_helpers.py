"""Helpers shared by the dataset tests (``test_datasets.py``, ``test_dataset_task.py``): a valid record line,
a JSON Lines writer, noise images and the frame index a synthetic clip shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

WHERE = "data.jsonl:3"


def record_line(**fields: Any) -> dict[str, Any]:
    """A valid exact-answer record, with ``fields`` replacing or adding fields (None removes one)."""
    base: dict[str, Any] = {"id": "r1", "question": "What colour?", "answer": "red", "answer_type": "exact",
                            "images": ["a.png"]}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def frame_index(frame: np.ndarray) -> int:
    """The index a synthetic clip frame shows: 12 cells across its top quarter, most significant bit left,
    white 1."""
    height, width = frame.shape[:2]
    bits = ["1" if frame[height // 8, int((b + 0.5) * width / 12)].mean() > 128 else "0" for b in range(12)]
    return int("".join(bits), 2)
