"""Policy losses of the GRPO family and the objective that combines them with the regularisers: pure functions,
tensors in, ``(loss, metrics)`` out.

Contents: :class:`LossType` + :func:`aggregate_loss` (grpo, bnpo, dr_grpo, dapo); :class:`PolicyLoss` +
:data:`POLICY_LOSSES` (``Registry``): :func:`ppo_clip_policy_loss`, :func:`dual_clip_policy_loss`,
:func:`gspo_policy_loss`; :func:`compute_policy_objective` (policy + beta KL + llds_coef LLDS - entropy_coef H).
The regularisers it adds live in :mod:`vgym.trainers.regularisers`.

Shapes: B trajectories, T tokens, V vocabulary. Common inputs: ``logprobs`` (B, T) float from
:func:`vgym.trainers.losses.token_logprobs` (with grad); ``old_logprobs`` (B, T) under the policy that sampled
(constants); ``advantages`` (B, T) from :mod:`vgym.trainers.advantages`; ``loss_mask`` (B, T) 0/1, 1 on tokens the
policy produced. Masked tokens are replaced by 0 *before* any exp, so they get exactly zero gradient even if their
log-probs are garbage. Metrics are detached floats: token means over the micro-batch's policy tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import torch

from vgym.registry import Registry
from vgym.trainers.losses import masked_mean
from vgym.trainers.regularisers import (
    _MAX_LOG_RATIO,
    KLEstimator,
    _check_shapes,
    _parse,
    kl_penalty,
    llds_regulariser,
)

__all__ = ["LossType", "PolicyLoss", "POLICY_LOSSES", "aggregate_loss", "ppo_clip_policy_loss",
           "dual_clip_policy_loss", "gspo_policy_loss", "compute_policy_objective"]


class LossType(str, Enum):
    """How :func:`aggregate_loss` turns per-token losses ``l[b, t]`` with mask ``m[b, t]`` into a scalar."""

    GRPO = "grpo"  # mean_b( sum_t l m / sum_t m ): per-sequence mean, then mean over sequences (DeepSeekMath)
    BNPO = "bnpo"  # sum_bt l m / sum_bt m: one token mean over the micro-batch
    DR_GRPO = "dr_grpo"  # sum_bt l m / (B * max_tokens): a constant normaliser (Dr.GRPO, arXiv:2503.20783)
    DAPO = "dapo"  # sum_bt l m / num_items_in_batch: token mean over the global batch (DAPO, arXiv:2503.14476)


class PolicyLoss(str, Enum):
    """Registry keys of :data:`POLICY_LOSSES`; the Enum exists so a misspelt name fails at import."""

    PPO_CLIP = "ppo_clip"
    DUAL_CLIP = "dual_clip"
    GSPO = "gspo"


PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")


def aggregate_loss(per_token: torch.Tensor, loss_mask: torch.Tensor, loss_type: str, *, max_tokens: int | None = None,
                   num_items_in_batch: int | None = None) -> torch.Tensor:
    """Reduce per-token losses to a scalar; the formulas are on :class:`LossType`.

    ``grpo`` weights *sequences* equally, so a token of a short answer weighs more (the length bias Dr.GRPO points
    out); a sequence without policy tokens counts as 0. ``bnpo`` weights the micro-batch's tokens equally.
    ``dapo`` divides by the policy tokens of the *whole* optimiser step (all accumulation micro-batches and ranks,
    TRL's convention): summing its micro-batch losses gives exactly the global token mean, whereas averaging
    micro-batch bnpo losses gives a mean of means, over-weighting tokens of micro-batches with few tokens. With
    one micro-batch and ``num_items_in_batch = loss_mask.sum()``, dapo equals bnpo.

    Args:
        per_token: (B, T) float; values at masked positions are ignored (and get no gradient).
        loss_mask: (B, T) 0/1.
        loss_type: a :class:`LossType` value.
        max_tokens: ``dr_grpo`` only: the generation budget in policy tokens per trajectory (a constant).
        num_items_in_batch: ``dapo`` only: policy tokens in the whole optimiser step; the caller then *sums* the
            micro-batch losses (no division by the number of accumulation steps).

    Returns:
        A scalar tensor.

    Raises:
        UnknownNameError: an unknown ``loss_type``.
        ValueError: ``dr_grpo`` without a positive ``max_tokens``, or ``dapo`` without a positive
            ``num_items_in_batch``.
    """
    kind = _parse(LossType, loss_type)
    mask = loss_mask.bool()
    kept = torch.where(mask, per_token, torch.zeros_like(per_token))  # (B, T)
    if kind is LossType.GRPO:
        return (kept.sum(-1) / mask.sum(-1).clamp(min=1)).mean()  # clamp: an empty sequence gives 0, not NaN
    if kind is LossType.BNPO:
        return kept.sum() / mask.sum().clamp(min=1)
    if kind is LossType.DR_GRPO:
        if max_tokens is None or max_tokens <= 0:
            raise ValueError(f"loss_type 'dr_grpo' needs max_tokens > 0 (the generation budget); got {max_tokens}.")
        return kept.sum() / (per_token.shape[0] * max_tokens)
    if num_items_in_batch is None or num_items_in_batch <= 0:
        raise ValueError(
            f"loss_type 'dapo' needs num_items_in_batch > 0 (policy tokens in the whole optimiser step); got "
            f"{num_items_in_batch}. Use 'bnpo' for a per-micro-batch token mean."
        )
    return kept.sum() / num_items_in_batch


def _log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) ``log π_θ - log π_old``, 0 on masked tokens, clamped to ±``_MAX_LOG_RATIO`` (the guard above)."""
    diff = torch.where(mask, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    return diff.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)


def _clipped(
    log_ratio: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor, epsilon: float, high: float | None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token ``-min(r A, clip(r, 1 - epsilon, 1 + high) A)`` and the metrics every policy loss reports."""
    high = epsilon if high is None else high
    if not (0 < epsilon < 1 and high > 0):
        raise ValueError(f"need 0 < epsilon < 1 and epsilon_high > 0; got epsilon={epsilon}, epsilon_high={high}.")
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


def ppo_clip_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor, *,
    epsilon: float = 0.2, epsilon_high: float | None = None, loss_type: str = LossType.GRPO,
    max_tokens: int | None = None, num_items_in_batch: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (arXiv:1707.06347) with DAPO's asymmetric clip-higher (arXiv:2503.14476).

    Per token, with ``r = exp(log π_θ - log π_old)``: ``l = -min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A)``,
    then :func:`aggregate_loss`. A larger ``epsilon_high`` (DAPO: 0.28) lets unlikely good tokens grow further
    before the clip stops them, which keeps entropy from collapsing.

    Args:
        logprobs: (B, T) float, current policy, with grad.
        old_logprobs: (B, T) float, the sampling policy (no grad flows into it).
        advantages: (B, T) float, per token (0 off the mask is fine).
        loss_mask: (B, T) 0/1, 1 on policy tokens.
        epsilon: lower clip range, in (0, 1).
        epsilon_high: upper clip range; None means ``epsilon`` (symmetric PPO).
        loss_type: a :class:`LossType` value; see :func:`aggregate_loss`.
        max_tokens: ``dr_grpo`` only; see :func:`aggregate_loss`.
        num_items_in_batch: ``dapo`` only; see :func:`aggregate_loss`.

    Returns:
        ``(loss, metrics)``: the scalar to minimise and ``{"loss/policy", "actor/clip_fraction",
        "actor/ratio_mean", "actor/approx_kl"}``.

    Raises:
        ValueError: shapes differ or a clip range is out of range. UnknownNameError: an unknown ``loss_type``.
    """
    _check_shapes({"logprobs": logprobs, "old_logprobs": old_logprobs, "advantages": advantages, "mask": loss_mask})
    log_ratio = _log_ratio(logprobs, old_logprobs, loss_mask.bool())
    per_token, metrics = _clipped(log_ratio, advantages, loss_mask, epsilon, epsilon_high)
    loss = aggregate_loss(per_token, loss_mask, loss_type, max_tokens=max_tokens, num_items_in_batch=num_items_in_batch)
    return loss, {"loss/policy": float(loss.detach()), **metrics}


def dual_clip_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor, *,
    epsilon: float = 0.2, epsilon_high: float | None = None, clip_ratio_c: float = 3.0, loss_type: str = LossType.GRPO,
    max_tokens: int | None = None, num_items_in_batch: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dual-clip PPO (Ye et al., arXiv:1912.09729): PPO-clip plus a cap for negative advantages.

    For ``A < 0`` PPO's loss ``-A max(r, 1 - epsilon)`` grows without limit in ``r`` (a token the old policy found
    unlikely), so one stale token can dominate the step. For ``A < 0`` dual clip uses ``min(l_ppo, -clip_ratio_c A)``
    (zero gradient once ``r > clip_ratio_c``); for ``A >= 0`` it is ``l_ppo``.

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
    _check_shapes({"logprobs": logprobs, "old_logprobs": old_logprobs, "advantages": advantages, "mask": loss_mask})
    log_ratio = _log_ratio(logprobs, old_logprobs, loss_mask.bool())
    per_token, metrics = _clipped(log_ratio, advantages, loss_mask, epsilon, epsilon_high)
    negative = advantages < 0
    per_token = torch.where(negative, torch.min(per_token, -clip_ratio_c * advantages), per_token)
    with torch.no_grad():
        capped = negative & (log_ratio.exp() > clip_ratio_c)
        metrics["actor/dual_clip_fraction"] = float(masked_mean(capped.float(), loss_mask))
    loss = aggregate_loss(per_token, loss_mask, loss_type, max_tokens=max_tokens, num_items_in_batch=num_items_in_batch)
    return loss, {"loss/policy": float(loss.detach()), **metrics}


def gspo_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor, *,
    epsilon: float = 3e-4, epsilon_high: float | None = 4e-4, loss_type: str = LossType.GRPO,
    max_tokens: int | None = None, num_items_in_batch: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO, sequence-level importance ratios (Zheng et al., arXiv:2507.18071), in its GSPO-token form.

    ``s_b = exp(sum_t m (log π_θ - log π_old) / sum_t m)``, the length-normalised sequence ratio. Each token of
    sequence b takes the value ``s_b`` with its own gradient ``s_b ∇ log π_θ(y_t)`` (``sg[s_b] π_θ / sg[π_θ]``),
    inside the PPO clip with GSPO's narrow ranges (3e-4, 4e-4). With ``loss_type="grpo"`` and one advantage per
    sequence this is exactly the paper's sequence objective; with per-turn advantages it is GSPO-token.

    Args:
        logprobs, old_logprobs, advantages, loss_mask: as :func:`ppo_clip_policy_loss`.
        loss_type, max_tokens, num_items_in_batch: as :func:`ppo_clip_policy_loss`.
        epsilon: lower clip range of the sequence ratio.
        epsilon_high: upper clip range; None means ``epsilon``.

    Returns:
        As :func:`ppo_clip_policy_loss`; clip fraction and ratio mean are of the sequence ratio (token-weighted),
        ``"actor/approx_kl"`` of the tokens.

    Raises:
        As :func:`ppo_clip_policy_loss`.
    """
    _check_shapes({"logprobs": logprobs, "old_logprobs": old_logprobs, "advantages": advantages, "mask": loss_mask})
    mask = loss_mask.bool()
    token_log_ratio = _log_ratio(logprobs, old_logprobs, mask)
    seq_log_ratio = token_log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)  # (B,); clamp: empty sequence -> 0
    own_grad = torch.where(mask, logprobs - logprobs.detach(), torch.zeros_like(logprobs))  # value 0, grad 1
    log_ratio = (seq_log_ratio.detach()[:, None] + own_grad).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)  # (B, T)
    per_token, metrics = _clipped(log_ratio, advantages, loss_mask, epsilon, epsilon_high)
    with torch.no_grad():
        metrics["actor/approx_kl"] = float(masked_mean(token_log_ratio.exp() - 1 - token_log_ratio, loss_mask))
    loss = aggregate_loss(per_token, loss_mask, loss_type, max_tokens=max_tokens, num_items_in_batch=num_items_in_batch)
    return loss, {"loss/policy": float(loss.detach()), **metrics}


def compute_policy_objective(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor, *,
    policy_loss: str = PolicyLoss.PPO_CLIP,
    epsilon: float | None = None, epsilon_high: float | None = None, clip_ratio_c: float | None = None,
    loss_type: str = LossType.GRPO, max_tokens: int | None = None, num_items_in_batch: int | None = None,
    ref_logprobs: torch.Tensor | None = None, beta: float = 0.0, kl_estimator: str = KLEstimator.K3,
    llds_coef: float = 0.0, turn_ids: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None, entropy_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO-family objective ``policy + beta * KL + llds_coef * LLDS - entropy_coef * H``; KL and entropy are
    aggregated with the policy's ``loss_type``, LLDS is a token mean (see :func:`llds_regulariser`).

    Args:
        logprobs, old_logprobs, advantages, loss_mask: as :func:`ppo_clip_policy_loss`.
        policy_loss: a :class:`PolicyLoss` value (a key of :data:`POLICY_LOSSES`).
        epsilon: lower clip range; None keeps the policy loss's default (0.2, or 3e-4 for gspo).
        epsilon_high: upper clip range; None keeps the policy loss's default.
        clip_ratio_c: ``dual_clip`` only; None keeps its default 3.0.
        loss_type, max_tokens, num_items_in_batch: see :func:`aggregate_loss`.
        ref_logprobs: (B, T) reference log-probs; required when ``beta != 0`` (with ``beta == 0``, KL is reported).
        beta: KL coefficient (0 drops the term, as Dr.GRPO and DAPO do).
        kl_estimator: a :class:`KLEstimator` value.
        llds_coef: LLDS coefficient (0 drops the term; its metrics are still reported).
        turn_ids: optional (B, T) model-turn ids for LLDS's per-turn gate.
        entropy: (B, T) from :func:`entropy_from_logits`; required when ``entropy_coef != 0``.
        entropy_coef: entropy-bonus coefficient (0 drops it).

    Returns:
        ``(loss, metrics)``: the scalar to minimise, the metrics of every term computed, ``"loss/total"`` and, with
        ``entropy``, ``"actor/entropy"`` (token mean).

    Raises:
        UnknownNameError: an unknown ``policy_loss``, ``loss_type`` or ``kl_estimator``.
        ValueError: a required tensor is missing, or ``clip_ratio_c`` is given for a loss other than dual_clip.
    """
    name = _parse(PolicyLoss, policy_loss).value
    if clip_ratio_c is not None and name != PolicyLoss.DUAL_CLIP.value:
        raise ValueError(f"clip_ratio_c only applies to policy_loss='dual_clip'; got policy_loss={name!r}.")
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError(f"beta={beta} needs ref_logprobs (the reference policy's log-probs); pass them or set 0.")
    if entropy_coef != 0.0 and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs entropy (from entropy_from_logits); pass it or set 0.")
    clip = {"epsilon": epsilon, "epsilon_high": epsilon_high, "clip_ratio_c": clip_ratio_c}
    clip = {k: v for k, v in clip.items() if v is not None}  # None: keep the loss's own default
    agg = {"max_tokens": max_tokens, "num_items_in_batch": num_items_in_batch}
    policy_fn = POLICY_LOSSES.get(name)
    loss, metrics = policy_fn(logprobs, old_logprobs, advantages, loss_mask, loss_type=loss_type, **agg, **clip)
    if ref_logprobs is not None:
        kl, kl_metrics = kl_penalty(logprobs, ref_logprobs, loss_mask, kl_estimator)
        loss = loss + beta * aggregate_loss(kl, loss_mask, loss_type, **agg)
        metrics.update(kl_metrics)
    llds, llds_metrics = llds_regulariser(logprobs, old_logprobs, loss_mask, advantages, turn_ids=turn_ids)
    loss = loss + llds_coef * llds
    metrics.update(llds_metrics)
    if entropy is not None:
        loss = loss - entropy_coef * aggregate_loss(entropy, loss_mask, loss_type, **agg)
        metrics["actor/entropy"] = float(masked_mean(entropy.detach(), loss_mask))
    metrics["loss/total"] = float(loss.detach())
    return loss, metrics


POLICY_LOSSES.register(PolicyLoss.PPO_CLIP.value, ppo_clip_policy_loss)
POLICY_LOSSES.register(PolicyLoss.DUAL_CLIP.value, dual_clip_policy_loss)
POLICY_LOSSES.register(PolicyLoss.GSPO.value, gspo_policy_loss)
