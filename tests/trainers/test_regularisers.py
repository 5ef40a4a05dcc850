"""Tests of trainers/regularisers.py on small tensors whose values are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vgym.errors import UnknownNameError
from vgym.trainers.regularisers import KL_ESTIMATORS, KLEstimator, kl_penalty, llds_regulariser

LN = math.log


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
    """δ = 15: e^15 - 16 ≈ 3.3e6 would swamp the step; k3 is capped at 10 and the capped token gets no
    gradient."""
    logp = torch.tensor([[-15.0, -1.0]], requires_grad=True)
    k3, _ = kl_penalty(logp, torch.zeros(1, 2), torch.ones(1, 2), "k3")
    k3.sum().backward()
    assert k3[0, 0].item() == 10.0 and logp.grad[0, 0].item() == 0.0
    # d/dlogp (e^-logp + logp - 1) at -1
    assert logp.grad[0, 1].item() == pytest.approx(-(math.e - 1), rel=1e-6)


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
    """Turn 1 falls by 0.4 in total, turn 2 rises by 1.0: the trajectory as a whole rose, so the trajectory
    gate is off; the per-turn gate catches turn 1 and penalises its fallen tokens (0.3 + 0.1) / 5 policy
    tokens = 0.08."""
    old = torch.full((1, 6), -1.0)
    new = old - torch.tensor([[0.3, 0.1, 0.0, 0.0, -0.5, -0.5]])  # token 2 is a tool output (masked, turn 0)
    mask = torch.tensor([[1, 1, 0, 1, 1, 1]])
    turn_ids = torch.tensor([[1, 1, 0, 2, 2, 2]])
    assert llds_regulariser(new, old, mask, torch.ones(1, 6))[0].item() == 0.0
    loss, _ = llds_regulariser(new, old, mask, torch.ones(1, 6), turn_ids=turn_ids)
    assert loss.item() == pytest.approx(0.08)


def test_kl_registry_matches_enum() -> None:
    assert KL_ESTIMATORS.names() == sorted(e.value for e in KLEstimator)


@pytest.mark.parametrize("name", KL_ESTIMATORS.names())
def test_kl_is_zero_on_policy_and_on_masked_tokens(name: str) -> None:
    """logp == ref on the policy tokens (δ = 0: both estimators give 0); the masked token's absurd values give
    0 too, and no gradient."""
    logp = torch.tensor([[LN(0.5), LN(0.25), 30.0]], requires_grad=True)
    ref = torch.tensor([[LN(0.5), LN(0.25), -30.0]])
    per_token, metrics = kl_penalty(logp, ref, torch.tensor([[1, 1, 0]]), name)
    per_token.sum().backward()
    assert torch.equal(per_token.detach(), torch.zeros(1, 3)) and metrics["loss/kl"] == 0.0
    assert logp.grad[0, 2].item() == 0.0
