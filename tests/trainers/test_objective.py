"""Tests of trainers/objective.py: the settings' checks, and the combined objective on small tensors whose
values are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vgym.errors import InvalidConfigError, UnknownNameError
from vgym.trainers.advantages import broadcast_advantages
from vgym.trainers.aggregation import LossType
from vgym.trainers.objective import LossSettings, compute_policy_objective
from vgym.trainers.policy_losses import POLICY_LOSSES, dual_clip_policy_loss
from vgym.trainers.tokens import entropy_from_logits, token_logprobs

LN = math.log
# Extra aggregation arguments per loss type: dr_grpo's constant budget (4, deliberately not the padded width 3
# of the examples) and dapo's token count of the whole optimiser step.
AGG_ARGS = {"grpo": {}, "bnpo": {}, "dr_grpo": {"max_tokens": 4}, "dapo": {"num_items_in_batch": 5}}
# Two sequences of unequal length: 3 policy tokens and 1; the other entries are padding.
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize("loss_type", [t.value for t in LossType])
@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_masked_tokens_get_zero_gradient(name: str, loss_type: str) -> None:
    """Padding with absurd log-probs (ratio e^80, old = -inf) neither leaks into the loss nor gets a
    gradient."""
    gen = torch.Generator().manual_seed(1)
    logp = (-torch.rand(2, 3, generator=gen)).requires_grad_()
    old = (logp.detach() - 0.05).clone()
    with torch.no_grad():
        logp[1, 1:] = 40.0
    old[1, 1:] = -torch.inf
    adv = torch.tensor([[1.0, -1.0, 2.0], [-0.5, 7.0, 7.0]])
    settings = LossSettings(policy_loss=name, loss_type=loss_type,
                            max_tokens=AGG_ARGS[loss_type].get("max_tokens"), beta=0.1, llds_coef=1.0)
    loss, _ = compute_policy_objective(
        logp, old, adv, MASK, settings, num_items_in_batch=AGG_ARGS[loss_type].get("num_items_in_batch"),
        ref_logprobs=old.nan_to_num(neginf=-5.0),
    )  # fmt: skip
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert torch.equal(logp.grad[1, 1:], torch.zeros(2))  # masked: exactly zero
    assert (logp.grad[MASK.bool()] != 0).all()  # policy tokens do learn



def test_objective_sums_its_terms_and_masks_logit_gradients() -> None:
    """policy + 0.1 KL + 0.5 LLDS - 0.01 H from real logits; logits that only score masked tokens get no
    gradient."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 5, generator=gen, requires_grad=True)  # (B, T, V)
    ids = torch.randint(0, 5, (2, 4), generator=gen)
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])  # token 0 has no prefix; the rest is prompt / padding
    logp = token_logprobs(logits, ids)
    old, ref = logp.detach() + 0.1, logp.detach() - 0.2
    adv = broadcast_advantages(torch.tensor([1.0, -1.0]), mask)
    ent = entropy_from_logits(logits)
    settings = LossSettings(loss_type="bnpo", beta=0.1, llds_coef=0.5, entropy_coef=0.01, epsilon_high=0.28)
    loss, m = compute_policy_objective(logp, old, adv, mask, settings, ref_logprobs=ref, entropy=ent)
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
        compute_policy_objective(logp, logp, logp, mask, LossSettings(beta=0.1))
    with pytest.raises(ValueError, match="needs entropy"):
        compute_policy_objective(logp, logp, logp, mask, LossSettings(entropy_coef=0.01))
    with pytest.raises(ValueError, match="only applies to policy_loss='dual_clip'"):
        compute_policy_objective(logp, logp, logp, mask, LossSettings(clip_ratio_c=3.0))
    with pytest.raises(UnknownNameError, match=r"Did you mean 'gspo'\?"):
        compute_policy_objective(logp, logp, logp, mask, LossSettings(policy_loss="gsp"))


def test_settings_check_names_and_clip_options() -> None:
    assert LossSettings(policy_loss="dual_clip", clip_ratio_c=2.0).clip_options() == {"clip_ratio_c": 2.0}
    # the None entries are left out: they keep the loss's defaults
    assert LossSettings(epsilon=0.1).clip_options() == {"epsilon": 0.1}
    with pytest.raises(InvalidConfigError, match="clip_ratio_c only applies to policy_loss='dual_clip'; got "
                                                 "policy_loss='gspo'"):
        LossSettings(policy_loss="gspo", clip_ratio_c=3.0)
    with pytest.raises(UnknownNameError, match=r"Did you mean 'dr_grpo'\?"):
        LossSettings(loss_type="dr_grp")
    with pytest.raises(UnknownNameError, match=r"Did you mean 'k3'\?"):
        LossSettings(kl_estimator="k33")


def test_settings_reach_the_policy_loss() -> None:
    """dual clip with clip_ratio_c 2 caps the A = -1, r = 5 token at 2 instead of 3: (2 + 2 - 1.2) / 3, as the
    loss function itself gives (tokens as in test_policy_losses.py's dual-clip example)."""
    old = torch.full((1, 3), LN(0.1))
    new = old + torch.tensor([[LN(5.0), LN(2.0), LN(5.0)]])
    adv, mask = torch.tensor([[-1.0, -1.0, 1.0]]), torch.ones(1, 3)
    settings = LossSettings(policy_loss="dual_clip", clip_ratio_c=2.0)
    _, m = compute_policy_objective(new, old, adv, mask, settings)
    assert m["loss/policy"] == pytest.approx(2.8 / 3, rel=1e-5)
    assert m["loss/policy"] == dual_clip_policy_loss(new, old, adv, mask, clip_ratio_c=2.0)[1]["loss/policy"]
