"""Loss aggregation: how per-token losses become the scalar a policy loss (and each regulariser) minimises.

Contents: :class:`LossType` (``str`` Enum of the registry keys), :class:`Aggregation` and :data:`LOSS_TYPES`
(``Registry``): :func:`aggregate_grpo`, :func:`aggregate_bnpo`, :func:`aggregate_dr_grpo`,
:func:`aggregate_dapo`; :func:`aggregate_loss` looks one up by name and applies it.

Every aggregation has the form ``aggregate_<name>(per_token (B, T) float, loss_mask (B, T) 0/1, *, max_tokens,
num_items_in_batch) -> scalar``. Values at masked positions are ignored and get exactly zero gradient: they
are replaced by 0 before any sum. The two keyword arguments are the normalisers some aggregations need; every
aggregation takes both, so the objective calls any of them alike, and each says which it reads.

Shapes: B trajectories, T tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch

from vgym.registry import Registry

__all__ = ["LossType", "Aggregation", "LOSS_TYPES", "aggregate_grpo", "aggregate_bnpo", "aggregate_dr_grpo",
           "aggregate_dapo", "aggregate_loss"]


class LossType(str, Enum):
    """Registry keys of :data:`LOSS_TYPES`; the Enum exists so a misspelt name fails at import."""

    GRPO = "grpo"
    BNPO = "bnpo"
    DR_GRPO = "dr_grpo"
    DAPO = "dapo"


AggregateFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Aggregation:
    """A registered aggregation: the function, and how a trainer combines its micro-batch losses.

    Attributes:
        reduce: ``aggregate_<name>`` (see the module docstring for its form).
        whole_step: True when ``reduce`` already divides by a count of the whole optimiser step (all its
            gradient-accumulation micro-batches): the trainer then sums the micro-batch losses. False when it
            is a micro-batch mean: the trainer weights each micro-batch loss by its share of the step's
            trajectories.
    """

    reduce: AggregateFn
    whole_step: bool = False


LOSS_TYPES: Registry[Aggregation] = Registry("loss type", defined_by=lambda entry: entry.reduce)


def _kept(per_token: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept, mask)``: (B, T) ``per_token`` with masked entries replaced by 0, and the (B, T) bool mask."""
    mask = loss_mask.bool()
    return torch.where(mask, per_token, torch.zeros_like(per_token)), mask


def aggregate_grpo(per_token: torch.Tensor, loss_mask: torch.Tensor, *, max_tokens: int | None = None,
                   num_items_in_batch: int | None = None) -> torch.Tensor:
    """GRPO's sequence mean (DeepSeekMath, arXiv:2402.03300): ``mean_b( sum_t l m / sum_t m )``.

    Each *sequence* weighs the same, so a token of a short answer weighs more (the length bias Dr.GRPO,
    arXiv:2503.20783, points out); a sequence without policy tokens counts as 0.

    Args:
        per_token: (B, T) float.
        loss_mask: (B, T) 0/1.
        max_tokens: not read.
        num_items_in_batch: not read.

    Returns:
        A scalar tensor.
    """
    kept, mask = _kept(per_token, loss_mask)
    return (kept.sum(-1) / mask.sum(-1).clamp(min=1)).mean()  # clamp: an empty sequence gives 0, not NaN


def aggregate_bnpo(per_token: torch.Tensor, loss_mask: torch.Tensor, *, max_tokens: int | None = None,
                   num_items_in_batch: int | None = None) -> torch.Tensor:
    """Token mean over the micro-batch, ``sum_bt l m / sum_bt m`` (TRL's ``loss_type="bnpo"``): every token of
    the micro-batch weighs the same.

    Args:
        per_token: (B, T) float.
        loss_mask: (B, T) 0/1.
        max_tokens: not read.
        num_items_in_batch: not read.

    Returns:
        A scalar tensor; 0 when the mask is empty.
    """
    kept, mask = _kept(per_token, loss_mask)
    return kept.sum() / mask.sum().clamp(min=1)


def aggregate_dr_grpo(per_token: torch.Tensor, loss_mask: torch.Tensor, *, max_tokens: int | None = None,
                      num_items_in_batch: int | None = None) -> torch.Tensor:
    """Dr.GRPO's constant normaliser (Liu et al., arXiv:2503.20783): ``sum_bt l m / (B * max_tokens)``, which
    removes the length bias of :func:`aggregate_grpo` without depending on the sampled lengths.

    Args:
        per_token: (B, T) float.
        loss_mask: (B, T) 0/1.
        max_tokens: the generation budget in policy tokens per trajectory (a constant), > 0.
        num_items_in_batch: not read.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: ``max_tokens`` is None or not positive.
    """
    if max_tokens is None or max_tokens <= 0:
        raise ValueError(f"loss_type 'dr_grpo' needs max_tokens > 0 (the generation budget); got "
                         f"{max_tokens}.")
    kept, _ = _kept(per_token, loss_mask)
    return kept.sum() / (per_token.shape[0] * max_tokens)


def aggregate_dapo(per_token: torch.Tensor, loss_mask: torch.Tensor, *, max_tokens: int | None = None,
                   num_items_in_batch: int | None = None) -> torch.Tensor:
    """DAPO's token-level loss (Yu et al., arXiv:2503.14476): ``sum_bt l m / num_items_in_batch``, the token
    mean over the *whole* optimiser step (all accumulation micro-batches and ranks, TRL's convention).

    Summing the micro-batch losses gives exactly the global token mean, whereas averaging micro-batch
    :func:`aggregate_bnpo` losses gives a mean of means, over-weighting tokens of micro-batches with few
    tokens. With one micro-batch and ``num_items_in_batch = loss_mask.sum()``, dapo equals bnpo.

    Args:
        per_token: (B, T) float.
        loss_mask: (B, T) 0/1.
        max_tokens: not read.
        num_items_in_batch: policy tokens in the whole optimiser step, > 0; the caller then *sums* the
            micro-batch losses (no division by the number of accumulation steps).

    Returns:
        A scalar tensor.

    Raises:
        ValueError: ``num_items_in_batch`` is None or not positive.
    """
    if num_items_in_batch is None or num_items_in_batch <= 0:
        raise ValueError(
            f"loss_type 'dapo' needs num_items_in_batch > 0 (policy tokens in the whole optimiser step); got "
            f"{num_items_in_batch}. Use 'bnpo' for a per-micro-batch token mean."
        )
    kept, _ = _kept(per_token, loss_mask)
    return kept.sum() / num_items_in_batch


def aggregate_loss(per_token: torch.Tensor, loss_mask: torch.Tensor, loss_type: str, *,
                   max_tokens: int | None = None, num_items_in_batch: int | None = None) -> torch.Tensor:
    """Reduce per-token losses to a scalar with the aggregation registered as ``loss_type``.

    Args:
        per_token: (B, T) float; values at masked positions are ignored (and get no gradient).
        loss_mask: (B, T) 0/1.
        loss_type: a :class:`LossType` value (a key of :data:`LOSS_TYPES`).
        max_tokens: ``dr_grpo``'s generation budget per trajectory; see :func:`aggregate_dr_grpo`.
        num_items_in_batch: ``dapo``'s policy tokens in the whole optimiser step; see :func:`aggregate_dapo`.

    Returns:
        A scalar tensor.

    Raises:
        UnknownNameError: an unknown ``loss_type`` (the message lists the valid names and the closest match).
        ValueError: the normaliser the aggregation reads is missing or not positive.
    """
    reduce = LOSS_TYPES.get(loss_type).reduce
    return reduce(per_token, loss_mask, max_tokens=max_tokens, num_items_in_batch=num_items_in_batch)


LOSS_TYPES.register(LossType.GRPO.value, Aggregation(aggregate_grpo))
LOSS_TYPES.register(LossType.BNPO.value, Aggregation(aggregate_bnpo))
LOSS_TYPES.register(LossType.DR_GRPO.value, Aggregation(aggregate_dr_grpo))
LOSS_TYPES.register(LossType.DAPO.value, Aggregation(aggregate_dapo, whole_step=True))
