"""Tests of trainers/importance.py: the trainer-over-rollout importance ratio, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vgym.trainers.importance import ImportanceStats


def test_ratio_over_counted_tokens_of_several_micro_batches() -> None:
    stats = ImportanceStats()
    # micro-batch 1: token 0 is the prompt (mask 0, ignored though its log-probs differ wildly); the two
    # policy tokens have log-ratios 0 and +0.5 -> ratios 1 and e^0.5 = 1.6487
    stats.update(torch.tensor([[-9.0, -1.0, -2.0]]), torch.tensor([[0.0, -1.0, -2.5]]),
                 torch.tensor([[0.0, 1.0, 1.0]]))
    # micro-batch 2: one token with log-ratio -1 -> ratio e^-1 = 0.3679
    stats.update(torch.tensor([[-3.0]]), torch.tensor([[-2.0]]), torch.tensor([[1.0]]))
    m = stats.metrics()
    assert m["rollout/is_ratio_mean"] == pytest.approx((1 + math.exp(0.5) + math.exp(-1)) / 3)
    assert m["rollout/is_ratio_min"] == pytest.approx(math.exp(-1))
    assert m["rollout/is_ratio_max"] == pytest.approx(math.exp(0.5))
    assert m["rollout/logprob_abs_diff"] == pytest.approx((0 + 0.5 + 1) / 3)


def test_nothing_counted_gives_no_metrics_and_outliers_stay_finite() -> None:
    stats = ImportanceStats()
    stats.update(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2))
    assert stats.metrics() == {}
    # a rollout log-prob of -1e4 (a token the engine thought impossible): clamped at log-ratio 20, not inf
    stats.update(torch.tensor([[0.0]]), torch.tensor([[-1e4]]), torch.tensor([[1.0]]))
    assert stats.metrics()["rollout/is_ratio_max"] == pytest.approx(math.exp(20))
