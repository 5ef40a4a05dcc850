"""Regularisers of the GRPO-family objective: pure functions on (B, T) tensors.

Contents: :class:`KLEstimator` (``str`` Enum of the registry keys) and :data:`KL_ESTIMATORS` (``Registry``):
:func:`k1_kl`, :func:`k3_kl`, per-token estimates of KL(π_θ || π_ref); :func:`kl_penalty` looks one up by name
and reports it; :func:`llds_regulariser` (LLDS likelihood-preserving term, R- or A-gate). The entropy bonus is
:func:`vgym.trainers.tokens.entropy_from_logits`, aggregated in
:func:`~vgym.trainers.objective.compute_policy_objective`, which combines every term.

Shapes: B trajectories, T tokens. ``logprobs`` (B, T) float from :func:`vgym.trainers.tokens.token_logprobs`
(with grad); ``old_logprobs`` / ``ref_logprobs`` (B, T) constants (no grad flows into them); ``advantages``
(B, T); ``loss_mask`` (B, T) 0/1, 1 on tokens the policy produced. Masked tokens are replaced by 0 *before*
any exp, so they get exactly zero gradient. Metrics are detached floats: token means over the micro-batch's
policy tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch

from vgym.registry import Registry
from vgym.trainers.tokens import MAX_LOG_RATIO, check_shapes, masked_mean

__all__ = ["KLEstimator", "KL_ESTIMATORS", "k1_kl", "k3_kl", "kl_penalty", "llds_regulariser"]


class KLEstimator(str, Enum):
    """Registry keys of :data:`KL_ESTIMATORS`; the Enum exists so a misspelt name fails at import."""

    K1 = "k1"
    K3 = "k3"


KLFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
KL_ESTIMATORS: Registry[KLFn] = Registry("KL estimator")


def _delta(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) ``δ = log π_ref - log π_θ`` on policy tokens, 0 elsewhere (no gradient flows into the
    reference)."""
    return torch.where(loss_mask.bool(), ref_logprobs.detach() - logprobs, torch.zeros_like(logprobs))


def k1_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """k1 estimate of KL(π_θ || π_ref) on tokens sampled by π_θ: ``log π_θ - log π_ref`` (Schulman,
    "Approximating KL divergence", 2020): unbiased, high variance, can be negative.

    Args:
        logprobs: (B, T) float, current policy, with grad.
        ref_logprobs: (B, T) float, the frozen reference policy.
        loss_mask: (B, T) 0/1.

    Returns:
        (B, T) float, 0 on masked tokens.
    """
    return -_delta(logprobs, ref_logprobs, loss_mask)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(π_θ || π_ref) on tokens sampled by π_θ: ``exp(δ) - δ - 1`` with
    ``δ = log π_ref - log π_θ`` (Schulman, "Approximating KL divergence", 2020; GRPO's choice,
    arXiv:2402.03300): unbiased, low variance, always >= 0.

    Guards: δ is clamped to ±``MAX_LOG_RATIO`` before exp (finite in float32), and the value is capped at 10
    nats as in verl, where its gradient stops, so one token the reference finds far likelier cannot dominate
    the step.

    Args:
        logprobs: (B, T) float, current policy, with grad.
        ref_logprobs: (B, T) float, the frozen reference policy.
        loss_mask: (B, T) 0/1.

    Returns:
        (B, T) float, 0 on masked tokens.
    """
    d = _delta(logprobs, ref_logprobs, loss_mask).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return (d.exp() - d - 1).clamp(max=10.0)


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, loss_mask: torch.Tensor,
    estimator: str = KLEstimator.K3,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token KL(π_θ || π_ref) estimate on the sampled tokens, to be aggregated and weighted by ``beta``.

    Args:
        logprobs: (B, T) float, current policy, with grad.
        ref_logprobs: (B, T) float, the frozen reference policy (no grad flows into it).
        loss_mask: (B, T) 0/1.
        estimator: a :class:`KLEstimator` value (a key of :data:`KL_ESTIMATORS`).

    Returns:
        ``(per_token, metrics)``: (B, T), 0 on masked tokens (aggregate it with
        :func:`~vgym.trainers.aggregation.aggregate_loss`), and ``{"loss/kl"}``, the token mean over policy
        tokens.

    Raises:
        ValueError: shapes differ. UnknownNameError: an unknown ``estimator``.
    """
    estimate = KL_ESTIMATORS.get(estimator)
    check_shapes({"logprobs": logprobs, "ref_logprobs": ref_logprobs, "loss_mask": loss_mask})
    per_token = estimate(logprobs, ref_logprobs, loss_mask)
    return per_token, {"loss/kl": float(masked_mean(per_token.detach(), loss_mask))}


def llds_regulariser(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, loss_mask: torch.Tensor, advantages: torch.Tensor, *,
    turn_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """LLDS likelihood-preserving regulariser (Deng et al., "On GRPO Collapse in Search-R1: The Lazy
    Likelihood-Displacement Death Spiral", arXiv:2512.04220; the exact form follows the authors' released
    code).

    GRPO can lower the likelihood of the very responses it should keep (lazy likelihood displacement), a
    spiral into collapse in tool-use RL. LLDS penalises falls in log-likelihood, only where they hurt:

    - preserving tokens ``P = m · [A >= 0]`` (non-negative advantage);
    - gate (R-gate): the trajectory's likelihood on P fell, ``sum_t P (log π_old - log π_θ) > 0``; with
      ``turn_ids`` the gate is per model turn (A-gate, the paper's best variant);
    - inside the gate, only tokens whose log-prob fell: ``l = P · relu(log π_old - log π_θ)``;
    - ``loss = sum_bt l / sum_bt m``, a token mean over all policy tokens.

    The gate carries no gradient; each penalised token gets gradient ``-1 / sum m`` on its log-prob.

    Args:
        logprobs: (B, T) float, current policy, with grad.
        old_logprobs: (B, T) float, the sampling policy (no grad flows into it).
        loss_mask: (B, T) 0/1.
        advantages: (B, T) float token advantages.
        turn_ids: optional (B, T) int64, 0 off model turns and k >= 1 on the k-th model turn; selects the
            A-gate.

    Returns:
        ``(loss, metrics)``: a scalar >= 0 and ``{"loss/llds", "llds/active_fraction" (trajectories with a
        gated trajectory or turn), "llds/token_fraction" (policy tokens penalised)}``.

    Raises:
        ValueError: shapes differ.
    """
    check_shapes({"logprobs": logprobs, "old_logprobs": old_logprobs, "loss_mask": loss_mask,
                  "adv": advantages})
    mask = loss_mask.bool()
    keep = mask & (advantages >= 0)  # (B, T) preserving set
    fall = torch.where(keep, old_logprobs.detach() - logprobs, torch.zeros_like(logprobs))  # (B, T) > 0: fell
    with torch.no_grad():
        if turn_ids is None:
            gate = (fall.sum(-1) > 0)[:, None].expand_as(fall)  # (B, T): the trajectory's likelihood fell
        else:
            check_shapes({"logprobs": logprobs, "turn_ids": turn_ids})
            n_slots = int(turn_ids.max()) + 1
            rows = torch.arange(fall.shape[0], device=fall.device)[:, None]
            slot = rows * n_slots + turn_ids  # (B, T): one id per (trajectory, turn)
            per_turn = fall.new_zeros(fall.shape[0] * n_slots).index_add(0, slot.flatten(), fall.flatten())
            gate = (per_turn[slot] > 0) & (turn_ids > 0)  # (B, T): this token's turn lost likelihood
        penalised = keep & gate & (fall > 0)
    # clamp: no policy token gives 0, not 0 / 0 = NaN
    loss = torch.where(penalised, fall, torch.zeros_like(fall)).sum() / mask.sum().clamp(min=1)
    with torch.no_grad():
        active = penalised.any(-1)[mask.any(-1)]  # over trajectories that have policy tokens
        metrics = {
            "loss/llds": float(loss.detach()),
            "llds/active_fraction": float(active.float().mean()) if active.numel() else 0.0,
            "llds/token_fraction": float(masked_mean(penalised.float(), loss_mask)),
        }
    return loss, metrics


KL_ESTIMATORS.register(KLEstimator.K1.value, k1_kl)
KL_ESTIMATORS.register(KLEstimator.K3.value, k3_kl)
