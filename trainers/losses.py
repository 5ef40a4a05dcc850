"""Losses as pure functions: tensors in, ``(loss, metrics)`` out.

Contents: :func:`token_logprobs`, :func:`masked_mean`, :func:`sft_loss`.

Shapes use B (batch), T (tokens), V (vocabulary). Metrics are detached Python floats.
"""

from __future__ import annotations

import torch

__all__ = ["token_logprobs", "masked_mean", "sft_loss"]


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token given the tokens before it.

    Args:
        logits: (B, T, V) model outputs; position t predicts token t+1.
        input_ids: (B, T) int64.

    Returns:
        (B, T) float32: entry t is log p(input_ids[t] | input_ids[:t]); entry 0 (no prefix) is 0.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return torch.nn.functional.pad(picked, (1, 0))  # (B, T): shift back so entry t scores token t


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1.

    Args:
        values: (B, T) float.
        mask: (B, T) 0/1, same shape.

    Returns:
        A scalar; 0 when the mask is empty (the clamp avoids a division by zero, which would give NaN).
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def sft_loss(logprobs: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Behaviour-cloning loss: mean negative log-likelihood over the policy's tokens.

    Args:
        logprobs: (B, T) from :func:`token_logprobs`.
        loss_mask: (B, T) 1 on tokens the policy produced (env, prompt and padding tokens are 0).

    Returns:
        ``(loss, {"loss/sft": float, "sft/tokens": float, "sft/mean_token_prob": float})``; the last is
        the mean probability the model gives the target token on policy tokens.
    """
    loss = -masked_mean(logprobs, loss_mask)
    with torch.no_grad():
        prob = masked_mean(logprobs.exp(), loss_mask)
    return loss, {
        "loss/sft": float(loss.detach()),
        "sft/tokens": float(loss_mask.sum()),
        "sft/mean_token_prob": float(prob),
    }
