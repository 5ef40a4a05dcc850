"""How far the rollout engine's log-probs are from the trainer's: the importance ratio of the sampled tokens.

Contents: :class:`ImportanceStats` (with :meth:`~ImportanceStats.merged`, for the stats of several ranks).

The rollout policy's per-token log-probs are the old log-probs of the policy ratio. When the rollout engine
is not the trained model itself (vLLM: other kernels, another dtype path, its own copy of the weights synced
after each optimizer step), ``pi_trainer(a) / pi_rollout(a)`` on the step's own samples, before any update,
is not exactly 1; its spread is the training-inference mismatch that truncated importance sampling corrects
(Yao et al., "Your efficient RL framework secretly brings you off-policy RL training", 2025; TRL logs it as
``sampling/importance_sampling_ratio``). A broken weight sync or a prompt the engine saw differently (e.g.
extra image placeholders) shows up here first. Shapes: B (batch), T (tokens); metrics are Python floats.
"""

from __future__ import annotations

import math

import torch

from vgym.trainers.tokens import MAX_LOG_RATIO

__all__ = ["ImportanceStats"]


class ImportanceStats:
    """Accumulates ``exp(logprobs - rollout_logprobs)`` over the trained tokens of several micro-batches.

    >>> stats = ImportanceStats()
    >>> stats.update(torch.tensor([[0.0, -1.0, -2.0]]), torch.tensor([[0.0, -1.0, -2.5]]),
    ...              torch.tensor([[0.0, 1.0, 1.0]]))
    >>> {k: round(v, 4) for k, v in stats.metrics().items()}  # ratios 1 and exp(0.5)
    {'rollout/is_ratio_mean': 1.3244, 'rollout/is_ratio_min': 1.0, 'rollout/is_ratio_max': 1.6487, \
'rollout/logprob_abs_diff': 0.25}
    """

    def __init__(self) -> None:
        self.tokens = 0
        self.ratio_sum = 0.0
        self.abs_diff_sum = 0.0
        self.ratio_min = math.inf
        self.ratio_max = -math.inf

    def update(self, logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, loss_mask: torch.Tensor) -> None:
        """Add one micro-batch.

        Args:
            logprobs: (B, T) the trainer's log-probs of the tokens (gradients are not kept).
            rollout_logprobs: (B, T) the rollout policy's log-probs of the same tokens.
            loss_mask: (B, T) 1 on the tokens to count (the policy's), else 0.
        """
        mask = loss_mask.detach().bool()
        # clamped as in the losses: a stale or missing rollout log-prob must not make the metric inf
        diff = (logprobs.detach().float() - rollout_logprobs.float())[mask]  # (N,) the counted tokens
        diff = diff.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
        if diff.numel() == 0:
            return
        ratio = diff.exp()
        self.tokens += diff.numel()
        self.ratio_sum += float(ratio.sum())
        self.abs_diff_sum += float(diff.abs().sum())
        self.ratio_min = min(self.ratio_min, float(ratio.min()))
        self.ratio_max = max(self.ratio_max, float(ratio.max()))

    @classmethod
    def merged(cls, parts: list[ImportanceStats]) -> ImportanceStats:
        """The stats of all ``parts`` together (e.g. every rank's, gathered): counts and sums add, extremes
        take the extreme; one part is returned as is.

        >>> a, b = ImportanceStats(), ImportanceStats()
        >>> a.update(torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]))
        >>> b.update(torch.tensor([[0.0]]), torch.tensor([[-0.5]]), torch.tensor([[1.0]]))
        >>> round(ImportanceStats.merged([a, b]).metrics()["rollout/is_ratio_max"], 4)
        1.6487
        """
        if len(parts) == 1:
            return parts[0]
        out = cls()
        for part in parts:
            out.tokens += part.tokens
            out.ratio_sum += part.ratio_sum
            out.abs_diff_sum += part.abs_diff_sum
            out.ratio_min = min(out.ratio_min, part.ratio_min)
            out.ratio_max = max(out.ratio_max, part.ratio_max)
        return out

    def metrics(self) -> dict[str, float]:
        """``rollout/is_ratio_mean``, ``_min``, ``_max`` (token ratio over the counted tokens) and
        ``rollout/logprob_abs_diff`` (mean ``|logprobs - rollout_logprobs|``); empty before any counted
        token."""
        if not self.tokens:
            return {}
        return {"rollout/is_ratio_mean": self.ratio_sum / self.tokens, "rollout/is_ratio_min": self.ratio_min,
                "rollout/is_ratio_max": self.ratio_max,
                "rollout/logprob_abs_diff": self.abs_diff_sum / self.tokens}
