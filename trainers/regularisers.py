"""Regularisers of the GRPO-family objective: pure functions on (B, T) tensors.

Contents: :class:`KLEstimator` + :func:`kl_penalty` (per-token KL(π_θ || π_ref), k1 or k3);
:func:`llds_regulariser` (LLDS likelihood-preserving term, R- or A-gate); :func:`entropy_from_logits` (per-token
entropy of the next-token distribution). Also the guards the policy losses share: the log-ratio clamp
``_MAX_LOG_RATIO``, ``_parse`` (str Enum parsing with a "Did you mean") and ``_check_shapes``.
:mod:`vgym.trainers.rl_losses` re-exports the public names and combines them in
:func:`~vgym.trainers.rl_losses.compute_policy_objective`.

Shapes: B trajectories, T tokens, V vocabulary. ``logprobs`` (B, T) float from
:func:`vgym.trainers.losses.token_logprobs` (with grad); ``old_logprobs`` / ``ref_logprobs`` (B, T) constants (no
grad flows into them); ``advantages`` (B, T); ``loss_mask`` (B, T) 0/1, 1 on tokens the policy produced. Masked
tokens are replaced by 0 *before* any exp, so they get exactly zero gradient. Metrics are detached floats: token
means over the micro-batch's policy tokens.
"""

from __future__ import annotations

import difflib
from enum import Enum
from typing import TypeVar

import torch

from vgym.errors import UnknownNameError
from vgym.trainers.losses import masked_mean

__all__ = ["KLEstimator", "kl_penalty", "llds_regulariser", "entropy_from_logits"]

# Guard: log-ratios are clamped to ±20 before exp; exp(20) ≈ 4.9e8 is finite in float32, so an outlier token
# (or a stale old_logprob) cannot produce inf and then 0 * inf = NaN gradients (EasyR1/verl clamp the same way).
_MAX_LOG_RATIO = 20.0


class KLEstimator(str, Enum):
    """Per-token KL(π_θ || π_ref) estimators on tokens sampled by π_θ (Schulman, "Approximating KL divergence")."""

    K1 = "k1"  # log π_θ - log π_ref: unbiased, high variance, can be negative
    K3 = "k3"  # exp(δ) - δ - 1 with δ = log π_ref - log π_θ: unbiased, low variance, always >= 0


_E = TypeVar("_E", bound=Enum)


def _parse(kind: type[_E], value: str) -> _E:
    """``kind(value)``, or :class:`UnknownNameError` listing the valid names and the closest match."""
    try:
        return kind(value)
    except ValueError:
        names = [m.value for m in kind]
        close = difflib.get_close_matches(str(value), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"Unknown {kind.__name__} {value!r}.{hint} Valid names: {names}") from None


def _check_shapes(tensors: dict[str, torch.Tensor]) -> None:
    """Raise ValueError, naming every shape, unless all ``tensors`` share one (B, T) shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"expected tensors of one shape (B, T); got {shapes}.")


def kl_penalty(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, loss_mask: torch.Tensor, estimator: str = KLEstimator.K3
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token KL(π_θ || π_ref) estimate on the sampled tokens, to be aggregated and weighted by ``beta``.

    With ``δ = log π_ref - log π_θ``: ``k1 = -δ``; ``k3 = exp(δ) - δ - 1`` (Schulman's approximator, GRPO's
    choice). k3 guards: δ is clamped to ±20 before exp (finite in float32), and the value is capped at 10 nats as in
    verl, where its gradient stops, so one token the reference finds far likelier cannot dominate the step.

    Args:
        logprobs: (B, T) float, current policy, with grad.
        ref_logprobs: (B, T) float, the frozen reference policy (no grad flows into it).
        loss_mask: (B, T) 0/1.
        estimator: a :class:`KLEstimator` value.

    Returns:
        ``(per_token, metrics)``: (B, T), 0 on masked tokens (aggregate it with :func:`aggregate_loss`), and
        ``{"loss/kl"}``, the token mean over policy tokens.

    Raises:
        ValueError: shapes differ. UnknownNameError: an unknown ``estimator``.
    """
    kind = _parse(KLEstimator, estimator)
    _check_shapes({"logprobs": logprobs, "ref_logprobs": ref_logprobs, "loss_mask": loss_mask})
    delta = torch.where(loss_mask.bool(), ref_logprobs.detach() - logprobs, torch.zeros_like(logprobs))  # (B, T)
    if kind is KLEstimator.K1:
        per_token = -delta
    else:
        d = delta.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        per_token = (d.exp() - d - 1).clamp(max=10.0)
    return per_token, {"loss/kl": float(masked_mean(per_token.detach(), loss_mask))}


def llds_regulariser(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, loss_mask: torch.Tensor, advantages: torch.Tensor, *,
    turn_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """LLDS likelihood-preserving regulariser (Deng et al., "On GRPO Collapse in Search-R1: The Lazy
    Likelihood-Displacement Death Spiral", arXiv:2512.04220; the exact form follows the authors' released code).

    GRPO can lower the likelihood of the very responses it should keep (lazy likelihood displacement), a spiral
    into collapse in tool-use RL. LLDS penalises falls in log-likelihood, only where they hurt:

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
        turn_ids: optional (B, T) int64, 0 off model turns and k >= 1 on the k-th model turn; selects the A-gate.

    Returns:
        ``(loss, metrics)``: a scalar >= 0 and ``{"loss/llds", "llds/active_fraction" (trajectories with a gated
        trajectory or turn), "llds/token_fraction" (policy tokens penalised)}``.

    Raises:
        ValueError: shapes differ.
    """
    _check_shapes({"logprobs": logprobs, "old_logprobs": old_logprobs, "loss_mask": loss_mask, "adv": advantages})
    mask = loss_mask.bool()
    keep = mask & (advantages >= 0)  # (B, T) preserving set
    fall = torch.where(keep, old_logprobs.detach() - logprobs, torch.zeros_like(logprobs))  # (B, T) > 0: fell
    with torch.no_grad():
        if turn_ids is None:
            gate = (fall.sum(-1) > 0)[:, None].expand_as(fall)  # (B, T): the trajectory's likelihood fell
        else:
            _check_shapes({"logprobs": logprobs, "turn_ids": turn_ids})
            n_slots = int(turn_ids.max()) + 1
            rows = torch.arange(fall.shape[0], device=fall.device)[:, None]
            slot = rows * n_slots + turn_ids  # (B, T): one id per (trajectory, turn)
            per_turn = fall.new_zeros(fall.shape[0] * n_slots).index_add(0, slot.flatten(), fall.flatten())
            gate = (per_turn[slot] > 0) & (turn_ids > 0)  # (B, T): this token's turn lost likelihood
        penalised = keep & gate & (fall > 0)
    loss = torch.where(penalised, fall, torch.zeros_like(fall)).sum() / mask.sum().clamp(min=1)  # clamp: no NaN
    with torch.no_grad():
        active = penalised.any(-1)[mask.any(-1)]  # over trajectories that have policy tokens
        metrics = {
            "loss/llds": float(loss.detach()),
            "llds/active_fraction": float(active.float().mean()) if active.numel() else 0.0,
            "llds/token_fraction": float(masked_mean(penalised.float(), loss_mask)),
        }
    return loss, metrics


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution, aligned with :func:`vgym.trainers.losses.token_logprobs`.

    Args:
        logits: (B, T, V) model outputs (finite); position t predicts token t+1.

    Returns:
        (B, T) float32: entry t is the entropy (nats) of ``softmax(logits[:, t-1])``, the distribution that
        produced token t; entry 0 (no prefix) is 0. Mask it with the log-probs' ``loss_mask``.
    """
    z = logits[:, :-1].float()  # (B, T-1, V); float32 so bfloat16 logits do not lose the small terms
    ent = torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1)  # (B, T-1): log Σ e^z - Σ p z
    return torch.nn.functional.pad(ent, (1, 0))  # (B, T)
