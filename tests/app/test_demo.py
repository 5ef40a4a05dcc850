"""``vgym demo`` on every dataset env, given its folder on the command line (``--task-config`` pairs or a
``--task-config-file``), plays an oracle episode of the released layout written by
:func:`vgym.data.sample_data.write_sample_datasets`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vgym.app.cli import app
from vgym.data.sample_data import write_sample_datasets

runner = CliRunner()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return write_sample_datasets(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("name", ["vgym_jsonl", "chartqa_dataset", "vstar", "refcoco", "charades_sta"])
def test_demo_plays_a_dataset_env_from_its_folder(datasets: dict, name: str, tmp_path: Path) -> None:
    data = datasets[name]
    split = data.splits[-1]
    pairs = [arg for key, value in data.task_config.items() for arg in ("--task-config", f"{key}={value}")]
    result = runner.invoke(app, ["demo", data.env_id, "--split", split, *pairs])
    assert result.exit_code == 0, result.output
    assert "reward 1.000" in result.output
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(data.task_config))
    again = runner.invoke(app, ["demo", name, "--split", split, "--task-config-file", str(config_file)])
    assert again.exit_code == 0
    assert again.output.splitlines()[1:] == result.output.splitlines()[1:]  # the same episode after the title


def test_demo_plays_realmini_from_its_default_split() -> None:
    """RealMini's questions are all in "test": ``vgym demo`` without --split takes the task's default split
    (it asked for "train", empty, and failed)."""
    pytest.importorskip("skimage")
    result = runner.invoke(app, ["demo", "vgym/RealMini-v0"])
    assert result.exit_code == 0, result.output
    assert "real_mini/" in result.output.splitlines()[0] and "reward 1.000" in result.output
