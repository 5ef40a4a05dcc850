"""``vgym convert``: a dataset env's records as one vgym JSONL file. The RefCOCO release (and Charades-STA)
converted and read back through ``vgym/VgymJsonl-v0`` give the same samples, answers and scores; a
procedural env and a missing layout are one-line errors (exit 2, through the console entry point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from typer.testing import CliRunner

import vgym  # noqa: F401  (registers the tasks)
from vgym.app.cli import app
from vgym.data.sample_data import write_charades_sta, write_refcoco

runner = CliRunner()


@pytest.mark.parametrize("env_id, writer, config", [
    ("vgym/Refcoco-v0", write_refcoco, {"dataset": "refcocog", "split_by": "umd"}),
    ("vgym/CharadesSta-v0", write_charades_sta, {}),
])
def test_convert_then_read_as_vgym_jsonl_gives_the_same_samples(
    tmp_path: Path, env_id: str, writer: Callable[[Path], Path], config: dict[str, str]
) -> None:
    root = writer(tmp_path / "data")
    pairs = [a for k, v in {"root": str(root), **config}.items() for a in ("--task-config", f"{k}={v}")]
    result = runner.invoke(app, ["convert", env_id, *pairs, "--out", str(root / "converted.jsonl")])
    assert result.exit_code == 0, result.output
    lines = (root / "converted.jsonl").read_text().splitlines()
    assert f"wrote {len(lines)} records to" in result.output
    assert f"--task-config root={os.path.realpath(root)} --task-config annotations=converted.jsonl" in \
        result.output.replace("\n", "")
    original = gymnasium.make(env_id, task_config={"root": str(root), **config})
    converted = gymnasium.make("vgym/VgymJsonl-v0",
                               task_config={"root": str(root), "annotations": "converted.jsonl"})
    try:
        a, b = original.unwrapped.task, converted.unwrapped.task
        for split in ("train", "val", "test"):
            assert [r.id for r in a.split_records(split)] == [r.id for r in b.split_records(split)]
            for index in range(len(a.split_records(split))):
                x, y = a.sample(split, index, 0), b.sample(split, index, 0)
                assert (x.question, x.answer) == (y.question, y.answer)
                assert x.metadata["record"] == y.metadata["record"]
                assert all(np.array_equal(i, j) for i, j in zip(x.images, y.images))
                assert a.score(x, x.answer) == b.score(y, x.answer) == 1.0
    finally:
        original.close()
        converted.close()
    first = json.loads(lines[0])
    assert first["answer_type"] in ("box", "interval") and first["split"] == "train"


def _vgym(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgym.app.cli", *args], capture_output=True, text=True,
                          check=False, timeout=300, env={**os.environ, "COLUMNS": "200"})


def test_convert_errors_are_one_line(tmp_path: Path) -> None:
    procedural = _vgym("convert", "vgym/VisualSearch-v0", "--out", str(tmp_path / "x.jsonl"))
    assert procedural.returncode == 2 and procedural.stderr.strip() == (
        "error: vgym/VisualSearch-v0 generates its samples; convert reads dataset envs (those with a "
        "task_config 'root')")
    missing = _vgym("convert", "vgym/Refcoco-v0", "--task-config", f"root={tmp_path}", "--out",
                    str(tmp_path / "x.jsonl"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "refcoco: the annotation file 'refcoco/refs(unc).p' is missing" in missing.stderr
    assert not (tmp_path / "x.jsonl").exists()
