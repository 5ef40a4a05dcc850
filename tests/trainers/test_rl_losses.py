"""Tests of trainers/advantages.py, trainers/rl_losses.py and trainers/regularisers.py on small tensors whose values
are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vgym.errors import UnknownNameError
from vgym.trainers.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    broadcast_advantages,
    compute_dgrpo_advantage,
    compute_grpo_advantage,
    turn_advantages,
)
from vgym.trainers.losses import token_logprobs
from vgym.trainers.regularisers import entropy_from_logits, kl_penalty, llds_regulariser
from vgym.trainers.rl_losses import (
    POLICY_LOSSES,
    LossType,
    PolicyLoss,
    aggregate_loss,
    compute_policy_objective,
    dual_clip_policy_loss,
    gspo_policy_loss,
    ppo_clip_policy_loss,
)

LN = math.log
# Extra aggregation arguments per loss type: dr_grpo's constant budget (4, deliberately not the padded width 3 of
# the examples) and dapo's token count of the whole optimiser step.
AGG_ARGS = {"grpo": {}, "bnpo": {}, "dr_grpo": {"max_tokens": 4}, "dapo": {"num_items_in_batch": 5}}

# ---------------------------------------------------------------- advantages
# Two interleaved groups with arbitrary labels: group 7 = rewards [1, 0, 0.5] at positions 0, 2, 4;
# group 3 = [1, 1, 1] at positions 1, 3, 5 (zero std: no signal, advantage exactly 0, counted in the metric).
REWARDS = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 1.0])
GROUPS = torch.tensor([7, 3, 7, 3, 7, 3])
# Group 7: mean 0.5, deviations [0.5, -0.5, 0], (n-1) variance (0.25 + 0.25) / 2 = 0.25, std 0.5.
EXPECTED_ADV = {
    "grpo": [1.0, 0.0, -1.0, 0.0, 0.0, 0.0],  # deviation / std
    # leave-one-out: 1 - (0 + 0.5)/2 = 0.75; 0 - (1 + 0.5)/2 = -0.75; 0.5 - (1 + 0)/2 = 0
    "rloo": [0.75, 0.0, -0.75, 0.0, 0.0, 0.0],
    # centred rewards [0.5, 0, -0.5, 0, 0, 0]; batch (n-1) std = sqrt(0.5 / 5) = 0.31623; 0.5 / 0.31623 = 1.5811
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
    """Three rewards of 0.9 average to 0.9 - 6e-8 in float32; dividing that residue by std + eps would give ~0.06,
    not 0. Every estimator must return exactly 0 there."""
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
    # One group. Trajectory 0 has turns 1 and 2 (step rewards 1, 0); trajectory 1 has turn 1 only (reward 1; its
    # column-2 entry 99 is absent and must not count). Present steps [1, 0, 1]: mean 2/3, deviations
    # [1/3, -2/3, 1/3], (n-1) var (1/9 + 4/9 + 1/9) / 2 = 1/3, std 0.57735 -> z = [0.57735, -1.1547, 0.57735].
    turn_ids = torch.tensor([[0, 1, 1, 0, 2, 2], [0, 1, 1, 0, 0, 0]])
    steps = torch.tensor([[1.0, 0.0], [1.0, 99.0]])
    out = turn_advantages(torch.tensor([0.5, -0.5]), turn_ids, steps, torch.tensor([4, 4]), step_weight=0.1)
    a, b, c = 0.5 + 0.057735, 0.5 - 0.11547, -0.5 + 0.057735
    torch.testing.assert_close(out, torch.tensor([[0, a, a, 0, b, b], [0, c, c, 0, 0, 0]]), rtol=1e-4, atol=1e-6)
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


# ---------------------------------------------------------------- aggregation
# Two sequences of unequal length: 3 policy tokens (losses 1, 2, 3) and 1 (loss 4); entries 5, 6 are padding.
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [
        ("grpo", 3.0),  # sequence means 2 and 4, then their mean: the short answer's token weighs 3x
        ("bnpo", 2.5),  # (1 + 2 + 3 + 4) / 4
        ("dr_grpo", 1.25),  # sum 10 / (B=2 * max_tokens=4)
        ("dapo", 2.0),  # sum 10 / num_items_in_batch=5 (the global step holds 5 policy tokens)
    ],
)
def test_aggregate_loss_by_hand(loss_type: str, expected: float) -> None:
    assert aggregate_loss(PER_TOKEN, MASK, loss_type, **AGG_ARGS[loss_type]).item() == pytest.approx(expected)


def test_dapo_is_the_global_token_mean_under_gradient_accumulation() -> None:
    """Micro-batches of 4 tokens (sum 10) and 6 tokens (all 1): the global token mean is 16 / 10 = 1.6. Summed dapo
    losses give it exactly; averaged bnpo losses give (2.5 + 1) / 2 = 1.75, over-weighting the smaller micro-batch."""
    other = (torch.ones(2, 3), torch.ones(2, 3, dtype=torch.long))
    dapo = sum(aggregate_loss(v, m, "dapo", num_items_in_batch=10) for v, m in [(PER_TOKEN, MASK), other])
    bnpo = sum(aggregate_loss(v, m, "bnpo") for v, m in [(PER_TOKEN, MASK), other]) / 2
    assert dapo.item() == pytest.approx(1.6) and bnpo.item() == pytest.approx(1.75)
    assert aggregate_loss(PER_TOKEN, MASK, "dapo", num_items_in_batch=4).item() == pytest.approx(2.5)  # = bnpo


def test_aggregate_loss_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="needs max_tokens"):
        aggregate_loss(PER_TOKEN, MASK, "dr_grpo")
    with pytest.raises(ValueError, match="needs num_items_in_batch"):
        aggregate_loss(PER_TOKEN, MASK, "dapo")
    with pytest.raises(UnknownNameError, match=r"Did you mean 'bnpo'\?.*'dr_grpo'"):
        aggregate_loss(PER_TOKEN, MASK, "bnp")


# ---------------------------------------------------------------- policy losses
def test_policy_registry_matches_enum_and_unknown_names_are_listed() -> None:
    assert POLICY_LOSSES.names() == sorted(p.value for p in PolicyLoss)
    with pytest.raises(UnknownNameError, match=r"Did you mean 'ppo_clip'\?.*\['dual_clip', 'gspo', 'ppo_clip'\]"):
        POLICY_LOSSES.get("ppo_clp")
    with pytest.raises(UnknownNameError, match=r"Did you mean 'grpo'\?.*'reinforce_pp'"):
        ADVANTAGE_ESTIMATORS.get("grp")


@pytest.mark.parametrize("loss_type", [t.value for t in LossType])
@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_on_policy_ratio_is_one_and_loss_is_minus_mean_advantage(name: str, loss_type: str) -> None:
    """old == new: every ratio is 1, nothing clips, and the loss is -aggregate(advantages)."""
    # advantages on the policy tokens: row 0 [1, -2, 3], row 1 [0.5]; 9s are padding
    adv = torch.tensor([[1.0, -2.0, 3.0], [0.5, 9.0, 9.0]])
    expected = {"grpo": -(2 / 3 + 0.5) / 2, "bnpo": -2.5 / 4, "dr_grpo": -2.5 / 8, "dapo": -2.5 / 5}[loss_type]
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.1], [0.3, 0.2, 0.9]]))
    loss, metrics = POLICY_LOSSES.get(name)(logp, logp.clone(), adv, MASK, loss_type=loss_type, **AGG_ARGS[loss_type])
    assert loss.item() == pytest.approx(expected)
    assert metrics["loss/policy"] == pytest.approx(expected)
    assert metrics["actor/ratio_mean"] == pytest.approx(1.0)
    assert metrics["actor/clip_fraction"] == 0.0 and metrics["actor/approx_kl"] == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("loss_type", [t.value for t in LossType])
@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_masked_tokens_get_zero_gradient(name: str, loss_type: str) -> None:
    """Padding with absurd log-probs (ratio e^80, old = -inf) neither leaks into the loss nor gets a gradient."""
    gen = torch.Generator().manual_seed(1)
    logp = (-torch.rand(2, 3, generator=gen)).requires_grad_()
    old = (logp.detach() - 0.05).clone()
    with torch.no_grad():
        logp[1, 1:] = 40.0
    old[1, 1:] = -torch.inf
    adv = torch.tensor([[1.0, -1.0, 2.0], [-0.5, 7.0, 7.0]])
    loss, _ = compute_policy_objective(
        logp, old, adv, MASK, policy_loss=name, loss_type=loss_type, **AGG_ARGS[loss_type],
        ref_logprobs=old.nan_to_num(neginf=-5.0), beta=0.1, llds_coef=1.0,
    )  # fmt: skip
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert torch.equal(logp.grad[1, 1:], torch.zeros(2))  # masked: exactly zero
    assert (logp.grad[MASK.bool()] != 0).all()  # policy tokens do learn


def _log_ratios(*ratios: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(new, old) log-probs of one sequence whose token ratios new/old are ``ratios``; new has grad."""
    old = torch.full((1, len(ratios)), LN(0.1))
    return (old + torch.tensor([[LN(r) for r in ratios]])).requires_grad_(), old


def test_ppo_clip_both_sides_and_clip_higher() -> None:
    """epsilon 0.2, epsilon_high 0.28; per token l = -min(r A, clip(r, 0.8, 1.28) A):
    a) A=+1, r=1.25: inside [0.8, 1.28] -> -1.25, gradient -r A / 4 = -0.3125 (symmetric PPO would clip at 1.2)
    b) A=+1, r=1.5:  clipped high -> -1.28, no gradient
    c) A=-1, r=0.7:  clipped low  -> -min(-0.7, -0.8) = 0.8, no gradient
    d) A=-1, r=1.5:  the unclipped term is the pessimistic one -> 1.5, gradient -r A / 4 = 0.375
    grpo mean of the 4: (-1.25 - 1.28 + 0.8 + 1.5) / 4 = -0.0575; clipped: b, c."""
    new, old = _log_ratios(1.25, 1.5, 0.7, 1.5)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, metrics = ppo_clip_policy_loss(new, old, adv, torch.ones(1, 4), epsilon=0.2, epsilon_high=0.28)
    loss.backward()
    assert loss.item() == pytest.approx(-0.0575, rel=1e-5)
    torch.testing.assert_close(new.grad, torch.tensor([[-0.3125, 0.0, 0.0, 0.375]]))
    assert metrics["actor/clip_fraction"] == 0.5
    assert metrics["actor/ratio_mean"] == pytest.approx((1.25 + 1.5 + 0.7 + 1.5) / 4)
    # symmetric PPO (epsilon_high None -> 0.2) clips token a at 1.2 as well
    _, symmetric = ppo_clip_policy_loss(new.detach(), old, adv, torch.ones(1, 4), epsilon=0.2)
    assert symmetric["actor/clip_fraction"] == 0.75


def test_dual_clip_caps_negative_advantages() -> None:
    """clip_ratio_c 3: A=-1, r=5: PPO gives 5, dual clip caps at 3 with no gradient; A=-1, r=2: 2 (below the cap,
    gradient -r A = 2 / 3); A=+1, r=5: PPO's upper clip -1.2 (dual clip leaves positive advantages alone).
    grpo mean (3 + 2 - 1.2) / 3 = 1.2667, PPO's (5 + 2 - 1.2) / 3 = 1.9333."""
    new, old = _log_ratios(5.0, 2.0, 5.0)
    adv, mask = torch.tensor([[-1.0, -1.0, 1.0]]), torch.ones(1, 3)
    loss, metrics = dual_clip_policy_loss(new, old, adv, mask, clip_ratio_c=3.0)
    loss.backward()
    assert loss.item() == pytest.approx(3.8 / 3, rel=1e-5)
    torch.testing.assert_close(new.grad, torch.tensor([[0.0, 2 / 3, 0.0]]))
    assert metrics["actor/dual_clip_fraction"] == pytest.approx(1 / 3)
    assert ppo_clip_policy_loss(new.detach(), old, adv, mask)[0].item() == pytest.approx(5.8 / 3, rel=1e-5)
    with pytest.raises(ValueError, match="clip_ratio_c must be > 1"):
        dual_clip_policy_loss(new, old, adv, mask, clip_ratio_c=0.5)


def test_gspo_uses_one_sequence_ratio() -> None:
    """Token log-ratios 0.1 and 0.3 -> sequence ratio s = exp(0.2) = 1.2214 for both tokens. With A=+1 and wide
    epsilons the loss is -s, and each token's gradient is -s A / 2 = -0.6107, the same for both (token-level PPO
    would give -e^0.1 / 2 and -e^0.3 / 2). With GSPO's own ranges (3e-4, 4e-4) s is clipped: -1.0004, no grad."""
    new, old = _log_ratios(math.exp(0.1), math.exp(0.3))
    adv, mask = torch.ones(1, 2), torch.ones(1, 2)
    s = math.exp(0.2)
    loss, metrics = gspo_policy_loss(new, old, adv, mask, epsilon=0.3, epsilon_high=0.3)
    loss.backward()
    assert loss.item() == pytest.approx(-s, rel=1e-5) and metrics["actor/ratio_mean"] == pytest.approx(s, rel=1e-5)
    torch.testing.assert_close(new.grad, torch.full((1, 2), -s / 2))
    new.grad = None
    loss, metrics = gspo_policy_loss(new, old, adv, mask)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0004, rel=1e-6) and metrics["actor/clip_fraction"] == 1.0
    assert torch.equal(new.grad, torch.zeros(1, 2))


# ---------------------------------------------------------------- KL, LLDS, entropy
def test_kl_k1_and_k3_by_hand() -> None:
    """logp = [ln .5, ln .25], ref = [ln .25, ln .5]; δ = ref - logp = [-ln 2, ln 2].
    k1 = -δ = [0.6931, -0.6931]; k3 = e^δ - δ - 1 = [0.5 + 0.6931 - 1, 2 - 0.6931 - 1] = [0.1931, 0.3069].
    The third token is masked: 0 whatever its values."""
    logp = torch.tensor([[LN(0.5), LN(0.25), -3.0]])
    ref = torch.tensor([[LN(0.25), LN(0.5), 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    k1, m1 = kl_penalty(logp, ref, mask, "k1")
    k3, m3 = kl_penalty(logp, ref, mask, "k3")
    torch.testing.assert_close(k1, torch.tensor([[LN(2), -LN(2), 0.0]]))
    torch.testing.assert_close(k3, torch.tensor([[LN(2) - 0.5, 1 - LN(2), 0.0]]))
    assert m1["loss/kl"] == pytest.approx(0.0, abs=1e-7) and m3["loss/kl"] == pytest.approx(0.25, rel=1e-5)
    with pytest.raises(UnknownNameError, match=r"Did you mean 'k3'\?"):
        kl_penalty(logp, ref, mask, "k33")


def test_kl_k3_clamp_guard() -> None:
    """δ = 15: e^15 - 16 ≈ 3.3e6 would swamp the step; k3 is capped at 10 and the capped token gets no gradient."""
    logp = torch.tensor([[-15.0, -1.0]], requires_grad=True)
    k3, _ = kl_penalty(logp, torch.zeros(1, 2), torch.ones(1, 2), "k3")
    k3.sum().backward()
    assert k3[0, 0].item() == 10.0 and logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(-(math.e - 1), rel=1e-6)  # d/dlogp (e^-logp + logp - 1) at -1


def test_llds_only_on_fallen_tokens_of_trajectories_whose_likelihood_fell() -> None:
    """old log-probs all -1; per-token fall = old - new:
    row 0, A=+1: falls [0.5, -0.2, 0]  -> total 0.3 > 0: gated; only token 0 fell -> penalty 0.5
    row 1, A=+1: falls [-0.5, 0.2, 0]  -> total -0.3: the likelihood rose, no penalty though token 1 fell
    row 2, A=-1: falls [1, 1, 1]        -> negative advantage: not in the preserving set
    loss = 0.5 / 9 policy tokens; gradient -1/9 on token (0, 0) only."""
    old = torch.full((3, 3), -1.0)
    new = (old - torch.tensor([[0.5, -0.2, 0.0], [-0.5, 0.2, 0.0], [1.0, 1.0, 1.0]])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -1.0])[:, None].expand(3, 3)
    loss, metrics = llds_regulariser(new, old, torch.ones(3, 3), adv)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 / 9)
    expected_grad = torch.zeros(3, 3)
    expected_grad[0, 0] = -1 / 9
    torch.testing.assert_close(new.grad, expected_grad)
    assert metrics["llds/active_fraction"] == pytest.approx(1 / 3)
    assert metrics["llds/token_fraction"] == pytest.approx(1 / 9)
    rose, _ = llds_regulariser(new[1:2].detach(), old[1:2], torch.ones(1, 3), adv[1:2])
    assert rose.item() == 0.0


def test_llds_turn_gate() -> None:
    """Turn 1 falls by 0.4 in total, turn 2 rises by 1.0: the trajectory as a whole rose, so the trajectory gate is
    off; the per-turn gate catches turn 1 and penalises its fallen tokens (0.3 + 0.1) / 5 policy tokens = 0.08."""
    old = torch.full((1, 6), -1.0)
    new = old - torch.tensor([[0.3, 0.1, 0.0, 0.0, -0.5, -0.5]])  # token 2 is a tool output (masked, turn 0)
    mask = torch.tensor([[1, 1, 0, 1, 1, 1]])
    turn_ids = torch.tensor([[1, 1, 0, 2, 2, 2]])
    assert llds_regulariser(new, old, mask, torch.ones(1, 6))[0].item() == 0.0
    loss, _ = llds_regulariser(new, old, mask, torch.ones(1, 6), turn_ids=turn_ids)
    assert loss.item() == pytest.approx(0.08)


def test_entropy_from_logits_by_hand() -> None:
    """Entry t is the entropy of softmax(logits[t-1]): uniform over V = 4 -> ln 4; probabilities [.75, .25, 0-ish]
    -> -(.75 ln .75 + .25 ln .25) = 0.5623; entry 0 has no prefix (0); bfloat16 input gives float32."""
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [LN(3.0), 0.0, -1e4, -1e4], [9.0, 9.0, 9.0, 9.0]]])
    ent = entropy_from_logits(logits.to(torch.bfloat16))
    assert ent.dtype == torch.float32
    torch.testing.assert_close(ent, torch.tensor([[0.0, LN(4), 0.5623]]), rtol=1e-2, atol=1e-3)  # bf16 ln 3
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([[0.0, LN(4), 0.562335]]))


# ---------------------------------------------------------------- the combined objective
def test_objective_sums_its_terms_and_masks_logit_gradients() -> None:
    """policy + 0.1 KL + 0.5 LLDS - 0.01 H from real logits; logits that only score masked tokens get no gradient."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 5, generator=gen, requires_grad=True)  # (B, T, V)
    ids = torch.randint(0, 5, (2, 4), generator=gen)
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])  # token 0 has no prefix; the rest is prompt / padding
    logp = token_logprobs(logits, ids)
    old, ref = logp.detach() + 0.1, logp.detach() - 0.2
    adv = broadcast_advantages(torch.tensor([1.0, -1.0]), mask)
    ent = entropy_from_logits(logits)
    loss, m = compute_policy_objective(
        logp, old, adv, mask, loss_type="bnpo", ref_logprobs=ref, beta=0.1, llds_coef=0.5, entropy=ent,
        entropy_coef=0.01, epsilon_high=0.28,
    )  # fmt: skip
    # every token fell by 0.1 vs old and row 0 has A >= 0: LLDS = 0.1 * 2 / 3 policy tokens
    assert m["loss/llds"] == pytest.approx(0.2 / 3, rel=1e-5)
    # k3 with δ = -0.2 on every token: e^-0.2 + 0.2 - 1 = 0.018731
    assert m["loss/kl"] == pytest.approx(math.exp(-0.2) - 0.8, rel=1e-4)
    total = m["loss/policy"] + 0.1 * m["loss/kl"] + 0.5 * m["loss/llds"] - 0.01 * m["actor/entropy"]
    assert loss.item() == pytest.approx(total, rel=1e-5) and m["loss/total"] == pytest.approx(total, rel=1e-5)
    loss.backward()
    # logits[:, t-1] only score token t: positions whose next token is masked, and the last position, get 0
    scores_masked = torch.nn.functional.pad(mask[:, 1:], (0, 1)) == 0  # (B, T)
    assert torch.equal(logits.grad[scores_masked], torch.zeros(int(scores_masked.sum()), 5))
    assert (logits.grad[~scores_masked].abs().sum(-1) > 0).all()


def test_objective_argument_errors() -> None:
    logp, mask = torch.zeros(1, 2), torch.ones(1, 2)
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        compute_policy_objective(logp, logp, logp, mask, beta=0.1)
    with pytest.raises(ValueError, match="needs entropy"):
        compute_policy_objective(logp, logp, logp, mask, entropy_coef=0.01)
    with pytest.raises(ValueError, match="only applies to policy_loss='dual_clip'"):
        compute_policy_objective(logp, logp, logp, mask, clip_ratio_c=3.0)
    with pytest.raises(UnknownNameError, match=r"Did you mean 'gspo'\?"):
        compute_policy_objective(logp, logp, logp, mask, policy_loss="gsp")
