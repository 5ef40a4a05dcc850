"""Tests of trainers/advantages.py on small tensors whose values are worked out by hand."""

from __future__ import annotations

import pytest
import torch

from vgym.errors import UnknownNameError
from vgym.trainers.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    broadcast_advantages,
    compute_advantages,
    compute_dgrpo_advantage,
    compute_grpo_advantage,
    turn_advantages,
)

# Two interleaved groups with arbitrary labels: group 7 = rewards [1, 0, 0.5] at positions 0, 2, 4;
# group 3 = [1, 1, 1] at positions 1, 3, 5 (zero std: no signal, advantage exactly 0, counted in the metric).
REWARDS = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 1.0])
GROUPS = torch.tensor([7, 3, 7, 3, 7, 3])
# Group 7: mean 0.5, deviations [0.5, -0.5, 0], (n-1) variance (0.25 + 0.25) / 2 = 0.25, std 0.5.
EXPECTED_ADV = {
    "grpo": [1.0, 0.0, -1.0, 0.0, 0.0, 0.0],  # deviation / std
    # leave-one-out: 1 - (0 + 0.5)/2 = 0.75; 0 - (1 + 0.5)/2 = -0.75; 0.5 - (1 + 0)/2 = 0
    "rloo": [0.75, 0.0, -0.75, 0.0, 0.0, 0.0],
    # centred rewards [0.5, 0, -0.5, 0, 0, 0]; batch (n-1) std = sqrt(0.5 / 5) = 0.31623;
    # 0.5 / 0.31623 = 1.5811
    "reinforce_pp": [1.5811, 0.0, -1.5811, 0.0, 0.0, 0.0],
    # the only informative group has difficulty 1 - 0.5 = 0.5, the mean of informative difficulties: weight 1
    "dgrpo": [1.0, 0.0, -1.0, 0.0, 0.0, 0.0],
}


def test_every_registered_estimator_has_a_hand_example() -> None:
    """The registry, the Enum and the hand-worked table name the same estimators."""
    assert ADVANTAGE_ESTIMATORS.names() == sorted(EXPECTED_ADV) == sorted(e.value for e in AdvantageEstimator)


@pytest.mark.parametrize("name", ADVANTAGE_ESTIMATORS.names())
def test_estimator_on_two_groups_by_hand(name: str) -> None:
    adv, metrics = ADVANTAGE_ESTIMATORS.get(name)(REWARDS, GROUPS)
    assert adv.shape == (6,) and adv.dtype == torch.float32
    torch.testing.assert_close(adv, torch.tensor(EXPECTED_ADV[name]), rtol=1e-4, atol=1e-5)
    assert torch.equal(adv[[1, 3, 5]], torch.zeros(3))  # the zero-std group: exactly 0
    assert metrics["adv/zero_std_groups"] == 0.5  # one of two groups


@pytest.mark.parametrize("name", ADVANTAGE_ESTIMATORS.names())
def test_estimator_zero_std_group_is_exactly_zero_despite_rounding(name: str) -> None:
    """Three rewards of 0.9 average to 0.9 - 6e-8 in float32; dividing that residue by std + eps would give
    ~0.06, not 0. Every estimator must return exactly 0 there."""
    rewards = torch.tensor([0.9, 0.9, 0.9, 0.0, 1.0, 0.0])
    adv, metrics = ADVANTAGE_ESTIMATORS.get(name)(rewards, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert torch.equal(adv[:3], torch.zeros(3)) and adv[4] > 0 > adv[3]
    assert metrics["adv/zero_std_groups"] == 0.5


def test_grpo_scale_rewards_off_is_dr_grpo() -> None:
    """Dr.GRPO keeps the centred reward: group 7 gives [0.5, -0.5, 0], not [1, -1, 0]."""
    adv, _ = compute_grpo_advantage(REWARDS, GROUPS, scale_rewards=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, 0.0, -0.5, 0.0, 0.0, 0.0]))


def test_grpo_matches_a_per_group_loop_reference() -> None:
    """The vectorised estimator agrees with a readable loop over groups (random rewards, shuffled labels)."""
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(24, generator=gen)
    groups = torch.randperm(24, generator=gen) % 5  # 5 groups of 4 or 5, in random order
    adv, _ = compute_grpo_advantage(rewards, groups)
    for g in groups.unique():
        r = rewards[groups == g]
        torch.testing.assert_close(adv[groups == g], (r - r.mean()) / (r.std() + 1e-6))


def test_dgrpo_weights_hard_groups_up() -> None:
    """Accuracies 0.25 and 0.75: difficulties 0.75 and 0.25, mean 0.5, weights 1.5 and 0.5."""
    # group 0 [1,0,0,0]: deviations [.75,-.25,-.25,-.25], (n-1) var (.5625 + 3 * .0625) / 3 = .25, std .5
    #   -> GRPO [1.5, -.5, -.5, -.5] -> x1.5 = [2.25, -.75, -.75, -.75]
    # group 1 [1,1,1,0]: GRPO [.5, .5, .5, -1.5] -> x0.5 = [.25, .25, .25, -.75]
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 0])
    adv, metrics = compute_dgrpo_advantage(rewards, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    expected = torch.tensor([2.25, -0.75, -0.75, -0.75, 0.25, 0.25, 0.25, -0.75])
    torch.testing.assert_close(adv, expected, rtol=1e-4, atol=0)
    assert metrics["adv/difficulty_weight_max"] == pytest.approx(1.5)


def test_estimator_input_errors() -> None:
    with pytest.raises(ValueError, match="at least 2 trajectories"):
        compute_grpo_advantage(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        compute_dgrpo_advantage(torch.tensor([2.0, 0.0]), torch.tensor([0, 0]))


def test_broadcast_advantages_by_hand() -> None:
    out = broadcast_advantages(torch.tensor([2.0, -1.0]), torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 2, 2, 0], [-1, -1, 0, 0]]))


def test_turn_advantages_by_hand() -> None:
    """Outcome + 0.1 * group-normalised step reward of the token's turn; absent turns are ignored."""
    # One group. Trajectory 0 has turns 1 and 2 (step rewards 1, 0); trajectory 1 has turn 1 only (reward 1;
    # its column-2 entry 99 is absent and must not count). Present steps [1, 0, 1]: mean 2/3, deviations
    # [1/3, -2/3, 1/3], (n-1) var (1/9 + 4/9 + 1/9) / 2 = 1/3, std 0.57735 -> z = [0.57735, -1.1547, 0.57735].
    turn_ids = torch.tensor([[0, 1, 1, 0, 2, 2], [0, 1, 1, 0, 0, 0]])
    steps = torch.tensor([[1.0, 0.0], [1.0, 99.0]])
    out = turn_advantages(torch.tensor([0.5, -0.5]), turn_ids, steps, torch.tensor([4, 4]), step_weight=0.1)
    a, b, c = 0.5 + 0.057735, 0.5 - 0.11547, -0.5 + 0.057735
    expected = torch.tensor([[0, a, a, 0, b, b], [0, c, c, 0, 0, 0]])
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)
    # step_weight 0 is the Flow-GRPO broadcast of the outcome over every model-turn token
    flat = turn_advantages(torch.tensor([0.5, -0.5]), turn_ids, steps, torch.tensor([4, 4]), step_weight=0.0)
    torch.testing.assert_close(flat, broadcast_advantages(torch.tensor([0.5, -0.5]), turn_ids > 0))
    # equal step rewards within the group carry no signal: z = 0 exactly (three 0.9s average to 0.9 - 6e-8 in
    # float32, and that residue over std + eps would be ~0.06), only the outcome remains
    same = turn_advantages(
        torch.tensor([0.5, -0.5]), turn_ids, torch.full((2, 2), 0.9), torch.tensor([4, 4]), step_weight=1.0
    )
    torch.testing.assert_close(same, flat)
    with pytest.raises(ValueError, match=r"turn_ids must lie in \[0, K=1\]"):
        turn_advantages(torch.zeros(2), turn_ids, torch.zeros(2, 1), torch.tensor([4, 4]), step_weight=0.1)



def test_unknown_estimator_names_are_listed() -> None:
    with pytest.raises(UnknownNameError, match=r"Did you mean 'grpo'\?.*'reinforce_pp'"):
        ADVANTAGE_ESTIMATORS.get("grp")


@pytest.mark.parametrize("name", ADVANTAGE_ESTIMATORS.names())
def test_compute_advantages_runs_every_estimator_by_name(name: str) -> None:
    adv, metrics = compute_advantages(name, REWARDS, GROUPS, scale_rewards=True)
    torch.testing.assert_close(adv, torch.tensor(EXPECTED_ADV[name]), rtol=1e-4, atol=1e-5)
    assert metrics["adv/zero_std_groups"] == 0.5


def test_compute_advantages_hands_scale_rewards_only_to_estimators_that_take_it() -> None:
    """Off, grpo and dgrpo keep the centred rewards of group 7, [0.5, -0.5, 0] (dgrpo's only informative group
    has weight 1); rloo has no such option and gives its leave-one-out advantages either way."""
    centred = torch.tensor([0.5, 0.0, -0.5, 0.0, 0.0, 0.0])
    for name in ("grpo", "dgrpo"):
        torch.testing.assert_close(compute_advantages(name, REWARDS, GROUPS, scale_rewards=False)[0], centred)
    torch.testing.assert_close(compute_advantages("rloo", REWARDS, GROUPS, scale_rewards=False)[0],
                               torch.tensor(EXPECTED_ADV["rloo"]))
