"""End-to-end test of vgym/quickstart.py at toy size: both arms, every output file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vgym.app.quickstart import QuickstartConfig, run_quickstart
from vgym.rollout.trajectory import load_trajectory_records
from vgym.trainers.grpo_config import GRPOConfig
from vgym.trainers.sft import SFTConfig


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path: Path) -> None:
    """Build → teacher data → SFT → held-out eval for both arms, then GRPO for the tools arm; ~30 s on 2 CPU
    cores."""
    # 16 train / 8 eval episodes, 4 SFT steps and 2 GRPO steps of 2 x 2 episodes (the defaults are 768 / 200 /
    # 500 /
    # 20 of 8 x 8): this checks the plumbing, not the learning (tests/trainers/test_sft.py and test_grpo.py
    # do).
    grpo = GRPOConfig(num_generations=2, prompts_per_step=2, max_new_tokens=8, steps=2, data_offset=1000)
    cfg = QuickstartConfig(
        out=tmp_path,
        train_episodes=16,
        eval_episodes=8,
        sft=SFTConfig(steps=4, batch_size=4),
        no_tools_sft_steps=3,
        rollout_batch=8,
        grpo=grpo,
        teacher_noise=0.7,
    )
    stages: set[str] = set()
    result = run_quickstart(cfg, lambda stage, done, total: stages.add(stage))

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["arms"] == result["arms"]
    assert [arm["label"] for arm in saved["arms"]] == ["tools", "no_tools"]
    for arm, steps in zip(saved["arms"], (4, 3)):
        assert 0.0 <= arm["accuracy"] <= 1.0
        lo, hi = arm["accuracy_ci"]
        assert 0.0 <= lo <= arm["accuracy"] <= hi <= 1.0
        assert len(arm["losses"]) == steps
        assert all(math.isfinite(x) for x in [*arm["losses"], arm["initial_loss"], arm["final_loss"]])
    assert {
        "tools: SFT",
        "no_tools: held-out eval",
        "tools: GRPO",
        "tools: held-out eval after GRPO",
    } <= stages
    assert saved["grpo"]["label"] == "tools + GRPO" and len(saved["grpo"]["rewards"]) == 2
    assert len(load_trajectory_records(tmp_path / "tools" / "eval_test_grpo.jsonl")) == 8
    assert (tmp_path / "tools" / "grpo_checkpoint" / "grpo_state.pt").is_file()

    curves = np.asarray(Image.open(tmp_path / "curves.png").convert("L"), dtype=np.float64)
    assert curves.std() > 0  # not a blank canvas

    for arm, tools in (("tools", True), ("no_tools", False)):
        folder = tmp_path / arm
        evaluated = load_trajectory_records(folder / "eval_test.jsonl")
        assert len(evaluated) == 8
        assert all((folder / rel).is_file() for record in evaluated for rel in record["images"])
        assert (folder / "checkpoint" / "trainer_state.pt").is_file()
        # loadable as `hf:<dir>` by vgym eval
        assert (folder / "checkpoint" / "processor_config.json").is_file()
        oracle = load_trajectory_records(folder / "oracle_train.jsonl")
        assert len(oracle) == 16
        calls = [call["name"] for record in oracle for turn in record["turns"] for call in turn["tool_calls"]]
        if tools:  # the lazy teacher (the default) crops in about half the episodes, at most once
            assert 0 < calls.count("crop") < len(oracle) and len(calls) == calls.count("crop")
            assert all(len(record["turns"]) == 1 + len(record["turns"][0]["tool_calls"]) for record in oracle)
        else:
            assert calls == []
        # The teacher answers wrong 70 % of the time here (it always crops right) and guesses when it skips
        # the crop.
        assert 0 < sum(record["reward_parts"]["accuracy"] for record in oracle) < len(oracle)
