"""Tests of trainers/tokens.py on small tensors whose expected values are worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vgym.trainers.tokens import check_shapes, entropy_from_logits, masked_mean, sft_loss, token_logprobs


def test_token_logprobs_by_hand() -> None:
    """Position t's logits score token t+1; entry 0 has no prefix and is 0."""
    # V = 3, T = 3, input_ids = [2, 1, 0].
    # position 0 logits log([1, 2, 1]) -> probs [1/4, 1/2, 1/4]; it predicts token 1 -> log(1/2)
    # position 1 logits [5, 5, 5]      -> uniform [1/3, 1/3, 1/3] (a constant shift changes nothing); predicts
    #                                     token 0 -> log(1/3)
    # position 2 logits [100, -100, 0] -> predicts nothing (no token 3), so it must not matter
    logits = torch.tensor([[[0.0, math.log(2.0), 0.0], [5.0, 5.0, 5.0], [100.0, -100.0, 0.0]]])  # (1, 3, 3)
    ids = torch.tensor([[2, 1, 0]])
    out = token_logprobs(logits, ids)
    assert out.shape == (1, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.0, math.log(0.5), math.log(1 / 3)]]))


def test_token_logprobs_upcasts_half_precision() -> None:
    """bfloat16 logits give float32 log-probs (the softmax runs in float32)."""
    # uniform over V = 5 -> every entry after 0 is log(1/5)
    logits = torch.zeros(2, 4, 5, dtype=torch.bfloat16)
    out = token_logprobs(logits, torch.zeros(2, 4, dtype=torch.long))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[:, 1:], torch.full((2, 3), math.log(0.2)))


def test_masked_mean_by_hand() -> None:
    """Mean over the masked entries only: (1 + 3 + 6) / 3."""
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]])
    torch.testing.assert_close(masked_mean(values, mask), torch.tensor(10.0 / 3.0))


def test_masked_mean_of_empty_mask_is_zero() -> None:
    """No masked entry: 0, not 0/0 = NaN, and the gradient is finite (zero)."""
    values = torch.tensor([[1.0, -2.0]], requires_grad=True)
    out = masked_mean(values, torch.zeros(1, 2, dtype=torch.long))
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(values.grad, torch.zeros(1, 2))


def test_sft_loss_is_masked_nll() -> None:
    """Loss = -(sum of masked log-probs) / #masked; env, prompt and padding tokens contribute nothing."""
    # row 0 masks log(0.5), log(0.25); row 1 masks log(0.1) -> loss = -(ln .5 + ln .25 + ln .1) / 3 ≈ 1.4608
    # mean target probability on the masked tokens = (0.5 + 0.25 + 0.1) / 3 = 0.2833
    # the unmasked entries (-7, -9 and the position-0 zeros) must not enter the mean
    logprobs = torch.tensor([[0.0, math.log(0.5), math.log(0.25)], [0.0, math.log(0.1), -9.0]])
    logprobs[0, 0] = -7.0
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    loss, metrics = sft_loss(logprobs, mask)
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.1)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["loss/sft"] == pytest.approx(expected, rel=1e-6)
    assert metrics["sft/tokens"] == 3.0
    assert metrics["sft/mean_token_prob"] == pytest.approx(0.85 / 3, rel=1e-6)


def test_entropy_from_logits_by_hand() -> None:
    """Entry t is the entropy of softmax(logits[t-1]): uniform over V = 4 -> ln 4; probabilities [.75, .25,
    0-ish] -> -(.75 ln .75 + .25 ln .25) = 0.5623; entry 0 has no prefix (0); bfloat16 input gives float32."""
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -1e4, -1e4], [9.0, 9.0, 9.0, 9.0]]])
    ent = entropy_from_logits(logits.to(torch.bfloat16))
    assert ent.dtype == torch.float32
    expected = torch.tensor([[0.0, math.log(4), 0.5623]])
    torch.testing.assert_close(ent, expected, rtol=1e-2, atol=1e-3)  # bf16 ln 3
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([[0.0, math.log(4), 0.562335]]))


def test_check_shapes_names_every_shape() -> None:
    check_shapes({"a": torch.zeros(2, 3), "b": torch.ones(2, 3)})  # one (B, T) shape: fine
    with pytest.raises(ValueError, match=r"\{'a': \(2, 3\), 'b': \(2, 4\)\}"):
        check_shapes({"a": torch.zeros(2, 3), "b": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match=r"one shape \(B, T\)"):
        check_shapes({"a": torch.zeros(6)})
