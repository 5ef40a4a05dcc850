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
