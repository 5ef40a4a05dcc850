"""Policy losses of the GRPO family: pure functions, tensors in, ``(loss, metrics)`` out.

Contents: :class:`PolicyLoss` (``str`` Enum of the registry keys) and :data:`POLICY_LOSSES` (``Registry``):
:func:`ppo_clip_policy_loss`, :func:`dual_clip_policy_loss`, :func:`gspo_policy_loss`;
:func:`policy_loss_options` (the keyword options a registered loss takes).

Every policy loss has the form ``<name>_policy_loss(logprobs, old_logprobs, advantages, loss_mask, *, epsilon,
epsilon_high, loss_type, max_tokens, num_items_in_batch, <its own options>) -> (loss, metrics)``: the
per-token loss, reduced by :func:`vgym.trainers.aggregation.aggregate_loss`. A loss's own options (dual clip's
``clip_ratio_c``) are keyword parameters only it has (:func:`policy_loss_options`), so a setting reaches only
the losses that declare it.

Shapes: B trajectories, T tokens. Common inputs: ``logprobs`` (B, T) float from
:func:`vgym.trainers.tokens.token_logprobs` (with grad); ``old_logprobs`` (B, T) under the policy that sampled
(constants); ``advantages`` (B, T) from :mod:`vgym.trainers.advantages`; ``loss_mask`` (B, T) 0/1, 1 on tokens
the policy produced. Masked tokens are replaced by 0 *before* any exp, so they get exactly zero gradient even
if their log-probs are garbage. Metrics are detached floats: token means over the micro-batch's policy tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from enum import Enum

import torch

from vgym.registry import Registry
from vgym.trainers.aggregation import LossType, aggregate_loss
from vgym.trainers.tokens import MAX_LOG_RATIO, check_shapes, masked_mean

__all__ = ["PolicyLoss", "POLICY_LOSSES", "ppo_clip_policy_loss", "dual_clip_policy_loss", "gspo_policy_loss",
           "policy_loss_options"]


class PolicyLoss(str, Enum):
    """Registry keys of :data:`POLICY_LOSSES`; the Enum exists so a misspelt name fails at import."""

    PPO_CLIP = "ppo_clip"
    DUAL_CLIP = "dual_clip"
    GSPO = "gspo"


PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")


def _log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) ``log π_θ - log π_old``, 0 on masked tokens, clamped to ±``MAX_LOG_RATIO`` (finite after
    exp)."""
    diff = torch.where(mask, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    return diff.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def _clipped(
    log_ratio: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor, epsilon: float,
    high: float | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token ``-min(r A, clip(r, 1 - epsilon, 1 + high) A)`` and the metrics every policy loss reports."""
    high = epsilon if high is None else high
    if not (0 < epsilon < 1 and high > 0):
        raise ValueError(f"need 0 < epsilon < 1 and epsilon_high > 0; got epsilon={epsilon}, "
                         f"epsilon_high={high}.")
    ratio = log_ratio.exp()  # (B, T)
    per_token = -torch.min(ratio * advantages, ratio.clamp(1 - epsilon, 1 + high) * advantages)
    with torch.no_grad():
        # clipped = the clip branch wins with zero gradient: r left the trust region the way A pushes it
        clipped = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + high) & (advantages > 0))
        metrics = {
            "actor/clip_fraction": float(masked_mean(clipped.float(), loss_mask)),
            "actor/ratio_mean": float(masked_mean(ratio, loss_mask)),
            # k3 estimate of KL(π_old || π_θ) on the sampled tokens (CleanRL's approx_kl)
            "actor/approx_kl": float(masked_mean((ratio - 1) - log_ratio, loss_mask)),
        }
    return per_token, metrics


def _check_inputs(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  loss_mask: torch.Tensor) -> None:
    check_shapes({"logprobs": logprobs, "old_logprobs": old_logprobs, "advantages": advantages,
                  "mask": loss_mask})


def ppo_clip_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor, *,
    epsilon: float = 0.2, epsilon_high: float | None = None, loss_type: str = LossType.GRPO,
    max_tokens: int | None = None, num_items_in_batch: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (arXiv:1707.06347) with DAPO's asymmetric clip-higher (arXiv:2503.14476).

    Per token, with ``r = exp(log π_θ - log π_old)``: ``l = -min(r A, clip(r, 1 - epsilon, 1 + epsilon_high)
    A)``, then :func:`~vgym.trainers.aggregation.aggregate_loss`. A larger ``epsilon_high`` (DAPO: 0.28) lets
    unlikely good tokens grow further before the clip stops them, which keeps entropy from collapsing.

    Args:
        logprobs: (B, T) float, current policy, with grad.
        old_logprobs: (B, T) float, the sampling policy (no grad flows into it).
        advantages: (B, T) float, per token (0 off the mask is fine).
        loss_mask: (B, T) 0/1, 1 on policy tokens.
        epsilon: lower clip range, in (0, 1).
        epsilon_high: upper clip range; None means ``epsilon`` (symmetric PPO).
        loss_type: a :class:`~vgym.trainers.aggregation.LossType` value; see
            :func:`~vgym.trainers.aggregation.aggregate_loss`.
        max_tokens: ``dr_grpo`` only; see :func:`~vgym.trainers.aggregation.aggregate_dr_grpo`.
        num_items_in_batch: ``dapo`` only; see :func:`~vgym.trainers.aggregation.aggregate_dapo`.

    Returns:
        ``(loss, metrics)``: the scalar to minimise and ``{"loss/policy", "actor/clip_fraction",
        "actor/ratio_mean", "actor/approx_kl"}``.

    Raises:
        ValueError: shapes differ or a clip range is out of range. UnknownNameError: an unknown ``loss_type``.
    """
    _check_inputs(logprobs, old_logprobs, advantages, loss_mask)
    log_ratio = _log_ratio(logprobs, old_logprobs, loss_mask.bool())
    per_token, metrics = _clipped(log_ratio, advantages, loss_mask, epsilon, epsilon_high)
    loss = aggregate_loss(per_token, loss_mask, loss_type, max_tokens=max_tokens,
                          num_items_in_batch=num_items_in_batch)
    return loss, {"loss/policy": float(loss.detach()), **metrics}


def dual_clip_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor, *,
    epsilon: float = 0.2, epsilon_high: float | None = None, clip_ratio_c: float = 3.0,
    loss_type: str = LossType.GRPO, max_tokens: int | None = None, num_items_in_batch: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dual-clip PPO (Ye et al., arXiv:1912.09729): PPO-clip plus a cap for negative advantages.

    For ``A < 0`` PPO's loss ``-A max(r, 1 - epsilon)`` grows without limit in ``r`` (a token the old policy
    found unlikely), so one stale token can dominate the step. For ``A < 0`` dual clip uses
    ``min(l_ppo, -clip_ratio_c A)`` (zero gradient once ``r > clip_ratio_c``); for ``A >= 0`` it is ``l_ppo``.

    Args:
        logprobs, old_logprobs, advantages, loss_mask: as :func:`ppo_clip_policy_loss`.
        epsilon, epsilon_high, loss_type, max_tokens, num_items_in_batch: as :func:`ppo_clip_policy_loss`.
        clip_ratio_c: the ratio cap for negative advantages, > 1 (the paper and verl use 3.0).

    Returns:
        As :func:`ppo_clip_policy_loss`, plus ``"actor/dual_clip_fraction"`` (policy tokens under the cap).

    Raises:
        As :func:`ppo_clip_policy_loss`; ValueError if ``clip_ratio_c <= 1``.
    """
    if clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (it caps ratios above 1 + epsilon); got {clip_ratio_c}.")
    _check_inputs(logprobs, old_logprobs, advantages, loss_mask)
    log_ratio = _log_ratio(logprobs, old_logprobs, loss_mask.bool())
    per_token, metrics = _clipped(log_ratio, advantages, loss_mask, epsilon, epsilon_high)
    negative = advantages < 0
    per_token = torch.where(negative, torch.min(per_token, -clip_ratio_c * advantages), per_token)
    with torch.no_grad():
        capped = negative & (log_ratio.exp() > clip_ratio_c)
        metrics["actor/dual_clip_fraction"] = float(masked_mean(capped.float(), loss_mask))
    loss = aggregate_loss(per_token, loss_mask, loss_type, max_tokens=max_tokens,
                          num_items_in_batch=num_items_in_batch)
    return loss, {"loss/policy": float(loss.detach()), **metrics}


def gspo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor, *,
    epsilon: float = 3e-4, epsilon_high: float | None = 4e-4, loss_type: str = LossType.GRPO,
    max_tokens: int | None = None, num_items_in_batch: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO, sequence-level importance ratios (Zheng et al., arXiv:2507.18071), in its GSPO-token form.

    ``s_b = exp(sum_t m (log π_θ - log π_old) / sum_t m)``, the length-normalised sequence ratio. Each token
    of sequence b takes the value ``s_b`` with its own gradient ``s_b ∇ log π_θ(y_t)`` (``sg[s_b]
    π_θ / sg[π_θ]``), inside the PPO clip with GSPO's narrow ranges (3e-4, 4e-4). With ``loss_type="grpo"``
    and one advantage per sequence this is exactly the paper's sequence objective; with per-turn advantages it
    is GSPO-token.

    Args:
        logprobs, old_logprobs, advantages, loss_mask: as :func:`ppo_clip_policy_loss`.
        loss_type, max_tokens, num_items_in_batch: as :func:`ppo_clip_policy_loss`.
        epsilon: lower clip range of the sequence ratio.
        epsilon_high: upper clip range; None means ``epsilon``.

    Returns:
        As :func:`ppo_clip_policy_loss`; clip fraction and ratio mean are of the sequence ratio
        (token-weighted), ``"actor/approx_kl"`` of the tokens.

    Raises:
        As :func:`ppo_clip_policy_loss`.
    """
    _check_inputs(logprobs, old_logprobs, advantages, loss_mask)
    mask = loss_mask.bool()
    token_log_ratio = _log_ratio(logprobs, old_logprobs, mask)
    seq_log_ratio = token_log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)  # (B,); clamp: empty sequence -> 0
    own_grad = torch.where(mask, logprobs - logprobs.detach(), torch.zeros_like(logprobs))  # value 0, grad 1
    log_ratio = (seq_log_ratio.detach()[:, None] + own_grad).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)  # (B, T)
    per_token, metrics = _clipped(log_ratio, advantages, loss_mask, epsilon, epsilon_high)
    with torch.no_grad():
        token_kl = token_log_ratio.exp() - 1 - token_log_ratio  # (B, T) k3 of KL(π_old || π_θ)
        metrics["actor/approx_kl"] = float(masked_mean(token_kl, loss_mask))
    loss = aggregate_loss(per_token, loss_mask, loss_type, max_tokens=max_tokens,
                          num_items_in_batch=num_items_in_batch)
    return loss, {"loss/policy": float(loss.detach()), **metrics}


def policy_loss_options(name: str) -> frozenset[str]:
    """The keyword options of the policy loss registered as ``name``: its keyword-only parameters.

    Args:
        name: a :class:`PolicyLoss` value.

    Returns:
        E.g. ``{"epsilon", "epsilon_high", "clip_ratio_c", "loss_type", "max_tokens", "num_items_in_batch"}``
        for ``dual_clip``; the same without ``clip_ratio_c`` for ``ppo_clip`` and ``gspo``.

    Raises:
        UnknownNameError: an unknown ``name`` (the message lists the valid names and the closest match).
    """
    parameters = inspect.signature(POLICY_LOSSES.get(name)).parameters.values()
    return frozenset(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


POLICY_LOSSES.register(PolicyLoss.PPO_CLIP.value, ppo_clip_policy_loss)
POLICY_LOSSES.register(PolicyLoss.DUAL_CLIP.value, dual_clip_policy_loss)
POLICY_LOSSES.register(PolicyLoss.GSPO.value, gspo_policy_loss)
