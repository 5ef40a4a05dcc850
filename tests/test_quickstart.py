"""End-to-end test of vgym/quickstart.py at toy size: both arms, every output file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vgym.quickstart import QuickstartConfig, run_quickstart
from vgym.trainers.sft import SFTConfig
from vgym.trajectory import load_trajectory_records


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path: Path) -> None:
    """Build → oracle data → SFT → held-out eval for both arms; ~20 s on 2 CPU cores."""
    # 16 train / 8 eval episodes and 4 SFT steps (the defaults are 768 / 200 / 500): this checks the plumbing,
    # not the learning (tests/trainers/test_sft.py checks that).
    cfg = QuickstartConfig(out=tmp_path, train_episodes=16, eval_episodes=8, sft=SFTConfig(steps=4, batch_size=4),
                           rollout_batch=8)
    stages: set[str] = set()
    result = run_quickstart(cfg, lambda stage, done, total: stages.add(stage))

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["arms"] == result["arms"]
    assert [arm["label"] for arm in saved["arms"]] == ["tools", "no_tools"]
    for arm in saved["arms"]:
        assert 0.0 <= arm["accuracy"] <= 1.0
        assert len(arm["losses"]) == 4
        assert all(math.isfinite(x) for x in [*arm["losses"], arm["initial_loss"], arm["final_loss"]])
    assert {"tools: SFT", "no_tools: held-out eval"} <= stages

    curves = np.asarray(Image.open(tmp_path / "curves.png").convert("L"), dtype=np.float64)
    assert curves.std() > 0  # not a blank canvas

    for arm, tools in (("tools", True), ("no_tools", False)):
        folder = tmp_path / arm
        evaluated = load_trajectory_records(folder / "eval_test.jsonl")
        assert len(evaluated) == 8
        assert all((folder / rel).is_file() for record in evaluated for rel in record["images"])
        assert (folder / "checkpoint" / "trainer_state.pt").is_file()
        oracle = load_trajectory_records(folder / "oracle_train.jsonl")
        assert len(oracle) == 16
        calls = [call["name"] for record in oracle for turn in record["turns"] for call in turn["tool_calls"]]
        if tools:
            assert calls.count("crop") == len(oracle)  # one crop per episode
        else:
            assert calls == []
        assert all(record["reward_parts"]["accuracy"] == 1.0 for record in oracle)
