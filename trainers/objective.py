"""The GRPO-family objective: a policy loss plus the regularisers, by the settings of one run.

Contents: :class:`LossSettings` (which policy loss, aggregation and regularisers, with their coefficients) and
:func:`compute_policy_objective` (``policy + beta * KL + llds_coef * LLDS - entropy_coef * H``): tensors in,
``(loss, metrics)`` out. Each term is looked up by name in its registry
(:data:`~vgym.trainers.policy_losses.POLICY_LOSSES`, :data:`~vgym.trainers.aggregation.LOSS_TYPES`,
:data:`~vgym.trainers.regularisers.KL_ESTIMATORS`); this module only combines them.

Shapes: B trajectories, T tokens; the tensors are those of :mod:`vgym.trainers.policy_losses`. Metrics are
detached floats: token means over the micro-batch's policy tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vgym.errors import InvalidConfigError
from vgym.trainers.aggregation import LOSS_TYPES, LossType, aggregate_loss
from vgym.trainers.policy_losses import POLICY_LOSSES, PolicyLoss, policy_loss_options
from vgym.trainers.regularisers import KL_ESTIMATORS, KLEstimator, kl_penalty, llds_regulariser
from vgym.trainers.tokens import masked_mean

__all__ = ["LossSettings", "compute_policy_objective"]


@dataclass(frozen=True)
class LossSettings:
    """What :func:`compute_policy_objective` computes: the loss variants and their coefficients for one run.

    Built by :meth:`vgym.trainers.grpo_config.GRPOConfig.loss_settings`, whose fields of the same names are
    the user-facing knobs. Names are checked on construction against their registries.
    """

    # -- policy loss
    policy_loss: str = PolicyLoss.PPO_CLIP.value
    """A key of :data:`~vgym.trainers.policy_losses.POLICY_LOSSES`: ``ppo_clip`` (PPO, arXiv:1707.06347),
    ``dual_clip`` (Ye et al., arXiv:1912.09729) or ``gspo`` (sequence ratios, arXiv:2507.18071)."""
    epsilon: float | None = None
    """Lower clip range of the importance ratio, in (0, 1) (dimensionless); None keeps the policy loss's own
    default (0.2; GSPO's 3e-4)."""
    epsilon_high: float | None = None
    """Upper clip range, > 0; None keeps the policy loss's own default (``epsilon``; GSPO's 4e-4). DAPO's
    clip-higher uses 0.28 (arXiv:2503.14476)."""
    clip_ratio_c: float | None = None
    """Ratio cap for negative advantages, > 1, for policy losses that take it (``dual_clip``; the paper uses
    3.0); None keeps the loss's default. Set for a loss without it, construction raises."""
    # -- aggregation
    loss_type: str = LossType.GRPO.value
    """A key of :data:`~vgym.trainers.aggregation.LOSS_TYPES`: ``grpo``, ``bnpo``, ``dr_grpo`` or ``dapo``;
    used for the policy loss, the KL and the entropy terms alike."""
    max_tokens: int | None = None
    """``dr_grpo``'s constant normaliser: the generation budget in policy tokens per trajectory (a GRPO run's
    ``max_new_tokens * max_turns``); None is fine for the other loss types."""
    # -- regularisers
    beta: float = 0.0
    """Weight of the KL to the frozen reference, per nat of the aggregated KL; 0 drops the term (as Dr.GRPO,
    arXiv:2503.20783, and DAPO do), a reference is then needed only for reporting."""
    kl_estimator: str = KLEstimator.K3.value
    """A key of :data:`~vgym.trainers.regularisers.KL_ESTIMATORS`: ``k1`` or ``k3`` (Schulman's low-variance
    estimator, GRPO's choice)."""
    llds_coef: float = 0.0
    """Weight of the LLDS likelihood-preserving regulariser against GRPO collapse (arXiv:2512.04220), per nat
    of the token-mean likelihood fall; 0 drops the term (its metrics are still reported)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus, per nat of the aggregated token entropy; 0 drops it."""

    def __post_init__(self) -> None:
        """Check the names and that every clip setting given is one the policy loss takes.

        Raises:
            UnknownNameError: an unknown ``policy_loss``, ``loss_type`` or ``kl_estimator`` (the message lists
                the valid names and the closest match).
            InvalidConfigError: a clip setting (e.g. ``clip_ratio_c``) given for a policy loss without it.
        """
        LOSS_TYPES.get(self.loss_type)
        KL_ESTIMATORS.get(self.kl_estimator)
        taken = policy_loss_options(self.policy_loss)
        for name in self.clip_options():
            if name not in taken:
                takers = [n for n in POLICY_LOSSES.names() if name in policy_loss_options(n)]
                where = " or ".join(f"policy_loss={n!r}" for n in takers) or "no policy loss"
                raise InvalidConfigError(f"{name} only applies to {where}; got "
                                         f"policy_loss={self.policy_loss!r}. Leave {name} unset (None).")

    def clip_options(self) -> dict[str, float]:
        """The clip settings given (not None), as keyword arguments of the policy loss.

        Returns:
            ``{"epsilon": ..., "epsilon_high": ..., "clip_ratio_c": ...}`` without the None entries, which
            keep the policy loss's own defaults.
        """
        clip = {"epsilon": self.epsilon, "epsilon_high": self.epsilon_high, "clip_ratio_c": self.clip_ratio_c}
        return {k: v for k, v in clip.items() if v is not None}


def compute_policy_objective(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, loss_mask: torch.Tensor,
    settings: LossSettings, *, num_items_in_batch: int | None = None,
    ref_logprobs: torch.Tensor | None = None, turn_ids: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO-family objective ``policy + beta * KL + llds_coef * LLDS - entropy_coef * H``; KL and entropy
    are aggregated with the policy's ``loss_type``, LLDS is a token mean (see
    :func:`~vgym.trainers.regularisers.llds_regulariser`).

    Args:
        logprobs: (B, T) float, current policy, with grad.
        old_logprobs: (B, T) float, the sampling policy (no grad flows into it).
        advantages: (B, T) float token advantages.
        loss_mask: (B, T) 0/1, 1 on policy tokens.
        settings: the loss variants and coefficients.
        num_items_in_batch: ``dapo`` only: policy tokens in the whole optimiser step (see
            :func:`~vgym.trainers.aggregation.aggregate_dapo`).
        ref_logprobs: (B, T) reference log-probs; required when ``settings.beta != 0`` (with ``beta == 0``,
            the KL is reported when given).
        turn_ids: optional (B, T) int64 model-turn ids for LLDS's per-turn gate.
        entropy: (B, T) from :func:`~vgym.trainers.tokens.entropy_from_logits`; required when
            ``settings.entropy_coef != 0``.

    Returns:
        ``(loss, metrics)``: the scalar to minimise, the metrics of every term computed, ``"loss/total"`` and,
        with ``entropy``, ``"actor/entropy"`` (token mean).

    Raises:
        ValueError: a required tensor is missing, shapes differ, or a normaliser the loss type reads is
            missing.
    """
    if settings.beta != 0.0 and ref_logprobs is None:
        raise ValueError(f"beta={settings.beta} needs ref_logprobs (the reference policy's log-probs); pass "
                         "them or set 0.")
    if settings.entropy_coef != 0.0 and entropy is None:
        raise ValueError(f"entropy_coef={settings.entropy_coef} needs entropy (from entropy_from_logits); "
                         "pass it or set 0.")
    loss_type = settings.loss_type
    agg = {"max_tokens": settings.max_tokens, "num_items_in_batch": num_items_in_batch}
    policy_fn = POLICY_LOSSES.get(settings.policy_loss)
    loss, metrics = policy_fn(logprobs, old_logprobs, advantages, loss_mask, loss_type=loss_type, **agg,
                              **settings.clip_options())
    if ref_logprobs is not None:
        kl, kl_metrics = kl_penalty(logprobs, ref_logprobs, loss_mask, settings.kl_estimator)
        loss = loss + settings.beta * aggregate_loss(kl, loss_mask, loss_type, **agg)
        metrics.update(kl_metrics)
    llds, llds_metrics = llds_regulariser(logprobs, old_logprobs, loss_mask, advantages, turn_ids=turn_ids)
    loss = loss + settings.llds_coef * llds
    metrics.update(llds_metrics)
    if entropy is not None:
        loss = loss - settings.entropy_coef * aggregate_loss(entropy, loss_mask, loss_type, **agg)
        metrics["actor/entropy"] = float(masked_mean(entropy.detach(), loss_mask))
    metrics["loss/total"] = float(loss.detach())
    return loss, metrics
