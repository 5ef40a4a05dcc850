"""Tests of vgym/diagnose.py: the oracle solves, baselines sit at the answer prior."""

from __future__ import annotations

import math

import vgym  # noqa: F401
from vgym.diagnose import diagnose_task


def test_visual_search_diagnostics() -> None:
    row = diagnose_task("visual_search", 0, episodes=30)
    assert row.env_id == "vgym/VisualSearch-v0" and row.difficulty == 0
    assert row.oracle_reward >= 0.99 and row.oracle_tool_calls == 1.0  # crop, then answer
    # Three balanced patterns: a constant answer or a uniform guess is right about 1/3 of the time. With 30
    # episodes the binomial standard deviation is ~0.09, so [0.05, 0.65] is a > 3-sigma band that still fails for
    # a leaked answer (1.0) or a broken scorer (0.0).
    assert 0.05 <= row.majority_accuracy <= 0.65
    assert 0.05 <= row.random_accuracy <= 0.65
    assert 1 / 3 <= row.majority_rate <= 0.65
    assert not math.isnan(row.random_accuracy)


def test_the_oracle_follows_the_env_task_config_not_the_default() -> None:
    from vgym.policies.base import PolicyInput
    from vgym.policies.oracle import OraclePolicy
    from vgym.tasks.geometry import GeometryTask

    full, short = GeometryTask({"oracle_calls": 5}), GeometryTask()
    # An angle or area question: the full plan points at each label first, the default one measures at once.
    index = next(i for i in range(50) if short.sample("train", i, 0).metadata["kind"] != "length")
    sample = full.sample("train", index, 0)
    oracle = OraclePolicy()

    def first_turn(task: GeometryTask | None) -> str:
        return oracle.act([PolicyInput(None, None, None, [], sample, 0, True, task)])[0].text  # type: ignore[arg-type]

    assert '"name": "point"' in first_turn(full)
    assert '"name": "measure"' in first_turn(None)  # looked up by name: the default config's plan
