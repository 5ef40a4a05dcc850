"""Tests of trainers/policy_losses.py on small tensors whose values are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vgym.errors import UnknownNameError
from vgym.trainers.aggregation import LossType
from vgym.trainers.policy_losses import (
    POLICY_LOSSES,
    PolicyLoss,
    dual_clip_policy_loss,
    gspo_policy_loss,
    policy_loss_options,
    ppo_clip_policy_loss,
)

LN = math.log
# Extra aggregation arguments per loss type: dr_grpo's constant budget (4, deliberately not the padded width 3
# of the examples) and dapo's token count of the whole optimiser step.
AGG_ARGS = {"grpo": {}, "bnpo": {}, "dr_grpo": {"max_tokens": 4}, "dapo": {"num_items_in_batch": 5}}
# Two sequences of unequal length: 3 policy tokens and 1; the other entries are padding.
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_policy_registry_matches_enum_and_unknown_names_are_listed() -> None:
    assert POLICY_LOSSES.names() == sorted(p.value for p in PolicyLoss)
    listed = r"Did you mean 'ppo_clip'\?.*\['dual_clip', 'gspo', 'ppo_clip'\]"
    with pytest.raises(UnknownNameError, match=listed):
        POLICY_LOSSES.get("ppo_clp")


@pytest.mark.parametrize("loss_type", [t.value for t in LossType])
@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_on_policy_ratio_is_one_and_loss_is_minus_mean_advantage(name: str, loss_type: str) -> None:
    """old == new: every ratio is 1, nothing clips, and the loss is -aggregate(advantages)."""
    # advantages on the policy tokens: row 0 [1, -2, 3], row 1 [0.5]; 9s are padding
    adv = torch.tensor([[1.0, -2.0, 3.0], [0.5, 9.0, 9.0]])
    expected = {"grpo": -(2 / 3 + 0.5) / 2, "bnpo": -2.5 / 4, "dr_grpo": -2.5 / 8,
                "dapo": -2.5 / 5}[loss_type]
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.1], [0.3, 0.2, 0.9]]))
    loss, metrics = POLICY_LOSSES.get(name)(logp, logp.clone(), adv, MASK, loss_type=loss_type,
                                            **AGG_ARGS[loss_type])
    assert loss.item() == pytest.approx(expected)
    assert metrics["loss/policy"] == pytest.approx(expected)
    assert metrics["actor/ratio_mean"] == pytest.approx(1.0)
    assert metrics["actor/clip_fraction"] == 0.0
    assert metrics["actor/approx_kl"] == pytest.approx(0.0, abs=1e-7)



def _log_ratios(*ratios: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(new, old) log-probs of one sequence whose token ratios new/old are ``ratios``; new has grad."""
    old = torch.full((1, len(ratios)), LN(0.1))
    return (old + torch.tensor([[LN(r) for r in ratios]])).requires_grad_(), old


def test_ppo_clip_both_sides_and_clip_higher() -> None:
    """epsilon 0.2, epsilon_high 0.28; per token l = -min(r A, clip(r, 0.8, 1.28) A):
    a) A=+1, r=1.25: inside [0.8, 1.28] -> -1.25, gradient -r A / 4 = -0.3125 (symmetric PPO would clip at
    1.2) b) A=+1, r=1.5:  clipped high -> -1.28, no gradient
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
    """clip_ratio_c 3: A=-1, r=5: PPO gives 5, dual clip caps at 3 with no gradient; A=-1, r=2: 2 (below the
    cap, gradient -r A = 2 / 3); A=+1, r=5: PPO's upper clip -1.2 (dual clip leaves positive advantages
    alone). grpo mean (3 + 2 - 1.2) / 3 = 1.2667, PPO's (5 + 2 - 1.2) / 3 = 1.9333."""
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
    """Token log-ratios 0.1 and 0.3 -> sequence ratio s = exp(0.2) = 1.2214 for both tokens. With A=+1 and
    wide epsilons the loss is -s, and each token's gradient is -s A / 2 = -0.6107, the same for both
    (token-level PPO would give -e^0.1 / 2 and -e^0.3 / 2). With GSPO's own ranges (3e-4, 4e-4) s is
    clipped: -1.0004, no grad."""
    new, old = _log_ratios(math.exp(0.1), math.exp(0.3))
    adv, mask = torch.ones(1, 2), torch.ones(1, 2)
    s = math.exp(0.2)
    loss, metrics = gspo_policy_loss(new, old, adv, mask, epsilon=0.3, epsilon_high=0.3)
    loss.backward()
    assert loss.item() == pytest.approx(-s, rel=1e-5)
    assert metrics["actor/ratio_mean"] == pytest.approx(s, rel=1e-5)
    torch.testing.assert_close(new.grad, torch.full((1, 2), -s / 2))
    new.grad = None
    loss, metrics = gspo_policy_loss(new, old, adv, mask)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0004, rel=1e-6) and metrics["actor/clip_fraction"] == 1.0
    assert torch.equal(new.grad, torch.zeros(1, 2))


def test_policy_loss_options_name_each_loss_s_own_settings() -> None:
    common = {"epsilon", "epsilon_high", "loss_type", "max_tokens", "num_items_in_batch"}
    assert policy_loss_options("dual_clip") == common | {"clip_ratio_c"}
    assert policy_loss_options("ppo_clip") == policy_loss_options("gspo") == common
    with pytest.raises(UnknownNameError, match=r"Did you mean 'gspo'\?"):
        policy_loss_options("gsp")
