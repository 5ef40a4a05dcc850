"""The statistics of evaluation reports: pass@k, bootstrap confidence intervals, and a set of episodes in
numbers.

Contents: :func:`pass_at_k`, :func:`bootstrap_ci`, :func:`summarize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any

import numpy as np

from vgym.rollout.trajectory import Trajectory

__all__ = ["pass_at_k", "bootstrap_ci", "summarize"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` attempts of which ``c`` are correct: ``1 - C(n-c, k) / C(n, k)``.

    Chen et al. 2021 (arXiv:2107.03374), computed exactly with integer binomials; when ``n - c < k`` every
    k-subset holds a correct attempt, so the value is 1.0.

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def bootstrap_ci(values: Sequence[float], *, level: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (seeded, so reports are
    reproducible)."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), (resamples, len(data)))].mean(axis=1)
    tail = (1.0 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def summarize(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    """Mean accuracy (with its 95 % bootstrap interval), reward, tool calls per episode and format success."""
    accuracy = [t.reward_parts.get("accuracy", 0.0) for t in trajectories]
    return {
        "accuracy": float(np.mean(accuracy)),
        "accuracy_ci": list(bootstrap_ci(accuracy)),
        "reward": float(np.mean([t.reward for t in trajectories])),
        "tool_calls_per_episode": float(np.mean([t.num_tool_calls for t in trajectories])),
        "format_ok": float(np.mean([t.reward_parts.get("format", 0.0) for t in trajectories])),
    }
