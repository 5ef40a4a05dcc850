"""Tests of trainers/aggregation.py on small tensors whose values are worked out by hand."""

from __future__ import annotations

import pytest
import torch

from vgym.errors import UnknownNameError
from vgym.trainers.aggregation import LOSS_TYPES, LossType, aggregate_loss

# Extra aggregation arguments per loss type: dr_grpo's constant budget (4, deliberately not the padded width 3
# of the examples) and dapo's token count of the whole optimiser step.
AGG_ARGS = {"grpo": {}, "bnpo": {}, "dr_grpo": {"max_tokens": 4}, "dapo": {"num_items_in_batch": 5}}

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
    """Micro-batches of 4 tokens (sum 10) and 6 tokens (all 1): the global token mean is 16 / 10 = 1.6. Summed
    dapo losses give it exactly; averaged bnpo losses give (2.5 + 1) / 2 = 1.75, over-weighting the smaller
    micro-batch."""
    other = (torch.ones(2, 3), torch.ones(2, 3, dtype=torch.long))
    dapo = sum(aggregate_loss(v, m, "dapo", num_items_in_batch=10) for v, m in [(PER_TOKEN, MASK), other])
    bnpo = sum(aggregate_loss(v, m, "bnpo") for v, m in [(PER_TOKEN, MASK), other]) / 2
    assert dapo.item() == pytest.approx(1.6) and bnpo.item() == pytest.approx(1.75)
    # with the micro-batch's own token count, dapo is bnpo
    assert aggregate_loss(PER_TOKEN, MASK, "dapo", num_items_in_batch=4).item() == pytest.approx(2.5)


def test_aggregate_loss_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="needs max_tokens"):
        aggregate_loss(PER_TOKEN, MASK, "dr_grpo")
    with pytest.raises(ValueError, match="needs num_items_in_batch"):
        aggregate_loss(PER_TOKEN, MASK, "dapo")
    with pytest.raises(UnknownNameError, match=r"Did you mean 'bnpo'\?.*'dr_grpo'"):
        aggregate_loss(PER_TOKEN, MASK, "bnp")


def test_every_loss_type_has_a_hand_example() -> None:
    """The registry, the Enum and the table of extra arguments name the same loss types."""
    assert LOSS_TYPES.names() == sorted(AGG_ARGS) == sorted(t.value for t in LossType)


@pytest.mark.parametrize("name", LOSS_TYPES.names())
def test_micro_batch_losses_recombine_into_the_batch_loss(name: str) -> None:
    """A trainer sums the micro-batch losses of a whole-step aggregation and weights the others by their share
    of the trajectories; over two micro-batches with equal trajectory and token counts that gives the loss of
    the batch taken as one. Micro-batch a: PER_TOKEN (4 policy tokens, sum 10); b: ones on the same mask (sum
    4). grpo: (2 + 4 + 1 + 1) / 4 = 2 = (3 + 1) / 2; bnpo: 14 / 8 = (2.5 + 1) / 2; dr_grpo: 14 / (4 * 4) =
    (10/8 + 4/8) / 2; dapo: 14 / 8 = 10/8 + 4/8 (weighting it would halve it)."""
    parts = [(PER_TOKEN, MASK), (torch.ones(2, 3), MASK)]
    extra = {"max_tokens": 4, "num_items_in_batch": 8}
    whole = aggregate_loss(torch.cat([v for v, _ in parts]), torch.cat([m for _, m in parts]), name, **extra)
    losses = [aggregate_loss(v, m, name, **extra) for v, m in parts]
    combined = sum(losses) if LOSS_TYPES.get(name).whole_step else sum(loss * 2 / 4 for loss in losses)
    assert combined.item() == pytest.approx(whole.item())
