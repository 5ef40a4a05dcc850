"""Token-level basics every loss builds on: pure functions on (B, T) tensors.

Contents: :func:`token_logprobs` and :func:`entropy_from_logits` (per-token quantities from logits),
:func:`masked_mean`, :func:`sft_loss` (the behaviour-cloning loss), and the guards the RL losses share:
:data:`MAX_LOG_RATIO` (the clamp before ``exp`` of a log-ratio) and :func:`check_shapes`.

Shapes use B (batch), T (tokens), V (vocabulary). Metrics are detached Python floats.
"""

from __future__ import annotations

import torch

__all__ = ["token_logprobs", "entropy_from_logits", "masked_mean", "sft_loss", "MAX_LOG_RATIO",
           "check_shapes"]

MAX_LOG_RATIO = 20.0
"""Guard: log-ratios are clamped to ±20 before ``exp``; exp(20) ≈ 4.9e8 is finite in float32, so an outlier
token (or a stale old log-prob) cannot produce inf and then 0 * inf = NaN gradients (EasyR1/verl clamp the
same way)."""


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


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution, aligned with :func:`token_logprobs`.

    Args:
        logits: (B, T, V) model outputs (finite); position t predicts token t+1.

    Returns:
        (B, T) float32: entry t is the entropy (nats) of ``softmax(logits[:, t-1])``, the distribution that
        produced token t; entry 0 (no prefix) is 0. Mask it with the log-probs' ``loss_mask``.
    """
    z = logits[:, :-1].float()  # (B, T-1, V); float32 so bfloat16 logits do not lose the small terms
    ent = torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1)  # (B, T-1): log Σ e^z - Σ p z
    return torch.nn.functional.pad(ent, (1, 0))  # (B, T)


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


def check_shapes(tensors: dict[str, torch.Tensor]) -> None:
    """Check that all ``tensors`` share one (B, T) shape (a loss's inputs must line up token for token).

    Args:
        tensors: the tensors by the names the error should use.

    Raises:
        ValueError: naming every shape, unless all are equal and 2-D.
    """
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"expected tensors of one shape (B, T); got {shapes}.")
