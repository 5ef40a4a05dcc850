"""Advantage estimators for the GRPO family, and turn-level credit: pure functions, tensors in, tensors out.

Contents:

- :class:`AdvantageEstimator` (``str`` Enum of the registry keys) and :data:`ADVANTAGE_ESTIMATORS`
  (``Registry``): :func:`compute_grpo_advantage`, :func:`compute_rloo_advantage`,
  :func:`compute_reinforce_pp_advantage`, :func:`compute_dgrpo_advantage`; :func:`compute_advantages` looks
  one up by name and hands it the options it takes.
- Turn-level credit: :func:`broadcast_advantages` (the outcome on every policy token, as Flow-GRPO,
  arXiv:2510.05592) and :func:`turn_advantages` (outcome plus per-turn tool-step rewards). A trainer's config
  chooses between them; ``turn_advantages(..., step_weight=0.0)`` equals ``broadcast_advantages`` on every
  token of a model turn.

Shapes: B trajectories, T tokens, G group size, K model turns. A batch holds whole groups: ``group_ids`` (B,)
int64 maps each trajectory to its group (any integer labels, in any order), and every group needs at least 2
members.

Every estimator has the form ``compute_<name>_advantage(rewards (B,) float, group_ids (B,) long, *, <its
options>) -> (advantages (B,) float32, metrics)``, and every estimator reports ``"adv/zero_std_groups"``: the
fraction of groups whose rewards are all equal. Such a group carries no learning signal; its advantages are
exactly 0.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from enum import Enum

import torch

from vgym.registry import Registry

__all__ = [
    "AdvantageEstimator",
    "ADVANTAGE_ESTIMATORS",
    "compute_grpo_advantage",
    "compute_rloo_advantage",
    "compute_reinforce_pp_advantage",
    "compute_dgrpo_advantage",
    "compute_advantages",
    "broadcast_advantages",
    "turn_advantages",
]


class AdvantageEstimator(str, Enum):
    """Registry keys of :data:`ADVANTAGE_ESTIMATORS`; the Enum exists so a misspelt name fails at import."""

    GRPO = "grpo"
    RLOO = "rloo"
    REINFORCE_PP = "reinforce_pp"
    DGRPO = "dgrpo"


AdvantageFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]
ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator")


class _Groups:
    """Per-group bookkeeping for a (B,) batch: ``index`` (B,) maps each trajectory to 0..n-1, ``size``
    (n,)."""

    def __init__(self, rewards: torch.Tensor, group_ids: torch.Tensor) -> None:
        if rewards.dim() != 1 or group_ids.shape != rewards.shape:
            raise ValueError(
                f"rewards and group_ids must both have shape (B,); got {tuple(rewards.shape)} and "
                f"{tuple(group_ids.shape)}."
            )
        if not torch.isfinite(rewards).all():
            raise ValueError(f"rewards must be finite; got {rewards.tolist()}.")
        _, self.index, self.size = torch.unique(group_ids, return_inverse=True, return_counts=True)
        self.n = int(self.size.numel())
        if (self.size < 2).any():
            raise ValueError(
                f"every group needs at least 2 trajectories (a baseline needs company); group sizes "
                f"{self.size.tolist()}. Sample G >= 2 completions per prompt and keep groups whole."
            )
        r = rewards.float()
        zeros = r.new_zeros(self.n)
        self.mean = zeros.index_add(0, self.index, r) / self.size  # (n,)
        dev = r - self.mean[self.index]  # (B,)
        # Bessel-corrected (n - 1) std, as torch.std: the convention of TRL and verl.
        self.std = (zeros.index_add(0, self.index, dev**2) / (self.size - 1)).sqrt()  # (n,)
        hi = r.new_full((self.n,), -torch.inf).scatter_reduce(0, self.index, r, "amax")
        lo = r.new_full((self.n,), torch.inf).scatter_reduce(0, self.index, r, "amin")
        # Exact equality, not std < eps: a zero-std group is one where every reward is the same number.
        self.zero_std = hi == lo  # (n,) bool

    def metrics(self, advantages: torch.Tensor) -> dict[str, float]:
        """The metrics every estimator reports."""
        return {
            "adv/zero_std_groups": float(self.zero_std.float().mean()),
            "adv/mean_abs": float(advantages.abs().mean()),
        }

    def silence_zero_std(self, advantages: torch.Tensor) -> torch.Tensor:
        """Set the advantages of zero-std groups to exactly 0.

        Guard: a float32 mean of equal rewards can be off by one ulp (three rewards of 0.9 average to
        0.9 - 6e-8), and dividing that residue by ``std + eps`` would turn a group with no signal into
        advantages of ~0.06.
        """
        return torch.where(self.zero_std[self.index], torch.zeros_like(advantages), advantages)

    def grpo(self, rewards: torch.Tensor, *, scale_rewards: bool, eps: float) -> torch.Tensor:
        """(B,) ``R - mean_g``, divided by ``std_g + eps`` when ``scale_rewards``; 0 in zero-std groups."""
        adv = rewards.float() - self.mean[self.index]
        if scale_rewards:
            adv = adv / (self.std[self.index] + eps)
        return self.silence_zero_std(adv)


def compute_grpo_advantage(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, scale_rewards: bool = True, eps: float = 1e-6
) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO group-relative advantage (DeepSeekMath, arXiv:2402.03300), optionally without std scaling
    (Dr.GRPO).

    ``A_i = (R_i - mean_g(R)) / (std_g(R) + eps)`` with mean and (n-1) std over the trajectory's group g. With
    ``scale_rewards=False``, ``A_i = R_i - mean_g(R)``: Dr.GRPO (arXiv:2503.20783) drops the division because
    it up-weights groups whose rewards barely differ (too easy or too hard prompts).

    Args:
        rewards: (B,) float, one scalar outcome reward per trajectory.
        group_ids: (B,) int64, the group (prompt) of each trajectory; every group has >= 2 members.
        scale_rewards: divide by the group's reward std (True, GRPO) or not (False, Dr.GRPO).
        eps: added to the std; keeps the division finite for near-constant groups.

    Returns:
        ``(advantages, metrics)``: advantages (B,) float32, exactly 0 in zero-std groups; metrics
        ``{"adv/zero_std_groups", "adv/mean_abs"}``. Broadcast them to tokens with
        :func:`broadcast_advantages`.

    Raises:
        ValueError: if the shapes differ, a reward is not finite, or a group has fewer than 2 members.
    """
    g = _Groups(rewards, group_ids)
    adv = g.grpo(rewards, scale_rewards=scale_rewards, eps=eps)
    return adv, g.metrics(adv)


def compute_rloo_advantage(
    rewards: torch.Tensor, group_ids: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """RLOO leave-one-out advantage (Ahmadian et al., arXiv:2402.14740): each trajectory's baseline is the
    mean reward of the *other* members of its group.

    ``A_i = R_i - (sum_g(R) - R_i) / (G - 1)``, which equals ``G / (G - 1) * (R_i - mean_g(R))``. No std
    scaling.

    Args:
        rewards: (B,) float, one scalar outcome reward per trajectory.
        group_ids: (B,) int64, the group of each trajectory; every group has >= 2 members.

    Returns:
        ``(advantages (B,) float32, metrics)`` as :func:`compute_grpo_advantage`.

    Raises:
        ValueError: as :func:`compute_grpo_advantage`.
    """
    g = _Groups(rewards, group_ids)
    r = rewards.float()
    others_mean = (g.mean[g.index] * g.size[g.index] - r) / (g.size[g.index] - 1)  # (B,)
    adv = g.silence_zero_std(r - others_mean)
    return adv, g.metrics(adv)


def compute_reinforce_pp_advantage(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, eps: float = 1e-6
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE++ with baseline (Hu et al., arXiv:2501.03262, the "REINFORCE++ w/ baseline" variant for k > 1
    samples per prompt): subtract the group mean, then normalise by the std of the *whole batch*.

    ``Ã_i = R_i - mean_g(R)``; ``A_i = (Ã_i - mean_B(Ã)) / (std_B(Ã) + eps)`` where mean_B and (n-1) std_B run
    over all B trajectories (global advantage normalisation). With whole groups mean_B(Ã) is 0; it is
    subtracted anyway, as the paper's whitening does. The outcome-reward form is used (no per-token KL folded
    into the reward; apply KL as a loss term instead, see :func:`vgym.trainers.regularisers.kl_penalty`).

    Args:
        rewards: (B,) float, one scalar outcome reward per trajectory.
        group_ids: (B,) int64, the group of each trajectory; every group has >= 2 members.
        eps: added to the batch std; keeps the division finite when almost every group is zero-std.

    Returns:
        ``(advantages (B,) float32, metrics)`` as :func:`compute_grpo_advantage`.

    Raises:
        ValueError: as :func:`compute_grpo_advantage`.
    """
    g = _Groups(rewards, group_ids)
    centred = rewards.float() - g.mean[g.index]  # (B,)
    adv = (centred - centred.mean()) / (centred.std() + eps)
    adv = g.silence_zero_std(adv)
    return adv, g.metrics(adv)


def compute_dgrpo_advantage(
    rewards: torch.Tensor, group_ids: torch.Tensor, *, scale_rewards: bool = True, eps: float = 1e-6
) -> tuple[torch.Tensor, dict[str, float]]:
    """Difficulty-aware GRPO: the GRPO advantage of each group scaled by the group's difficulty.

    Named after DGRPO in VITAL ("Thinking With Videos", Zhang et al., arXiv:2508.04416), which reweights GRPO
    by task and sample difficulty so easy tasks do not dominate multi-task RL. **The paper's exact formula
    could not be verified** (only its abstract and summaries were reachable), so this is a documented stand-in
    with the same intent, at the sample (group) level:

    - accuracy ``p_g = mean_g(R)`` (rewards must lie in [0, 1]), difficulty ``d_g = 1 - p_g``;
    - weight ``w_g = d_g / mean(d over informative groups)``, informative = not zero-std, so the weights of
      the groups that carry signal average 1 and the overall step size matches GRPO's;
    - ``A_i = w_g * A_i^GRPO`` (with ``scale_rewards`` as in :func:`compute_grpo_advantage`).

    Example: groups at accuracy 0.25 and 0.75 have d = 0.75 and 0.25, weights 1.5 and 0.5: the hard prompt's
    update is three times the easy one's.

    Args:
        rewards: (B,) float in [0, 1] (an accuracy-like reward), one per trajectory.
        group_ids: (B,) int64, the group of each trajectory; every group has >= 2 members.
        scale_rewards: as in :func:`compute_grpo_advantage`.
        eps: as in :func:`compute_grpo_advantage`; also floors the mean difficulty.

    Returns:
        ``(advantages (B,) float32, metrics)``: metrics as :func:`compute_grpo_advantage` plus
        ``"adv/difficulty_weight_max"`` (the largest group weight).

    Raises:
        ValueError: as :func:`compute_grpo_advantage`, or if a reward lies outside [0, 1].
    """
    if ((rewards < 0) | (rewards > 1)).any():
        raise ValueError(
            f"dgrpo reads the group mean reward as an accuracy, so rewards must lie in [0, 1]; got "
            f"min {float(rewards.min())}, max {float(rewards.max())}. Rescale the reward or use 'grpo'."
        )
    g = _Groups(rewards, group_ids)
    grpo_adv = g.grpo(rewards, scale_rewards=scale_rewards, eps=eps)
    difficulty = 1.0 - g.mean  # (n,)
    informative = ~g.zero_std
    # Guard: with no informative group every advantage is already 0; the floor avoids 0 / 0 = NaN.
    mean_d = difficulty[informative].mean() if informative.any() else difficulty.new_tensor(1.0)
    weight = difficulty / mean_d.clamp(min=eps)  # (n,)
    adv = weight[g.index] * grpo_adv
    metrics = g.metrics(adv)
    metrics["adv/difficulty_weight_max"] = float(weight[informative].max()) if informative.any() else 0.0
    return adv, metrics


def compute_advantages(
    estimator: str, rewards: torch.Tensor, group_ids: torch.Tensor, *, scale_rewards: bool = True
) -> tuple[torch.Tensor, dict[str, float]]:
    """Run the estimator registered as ``estimator``, passing each option only to an estimator that takes it.

    Args:
        estimator: an :class:`AdvantageEstimator` value (a key of :data:`ADVANTAGE_ESTIMATORS`).
        rewards: (B,) float, one scalar outcome reward per trajectory.
        group_ids: (B,) int64, the group of each trajectory; every group has >= 2 members.
        scale_rewards: for the estimators with this option (grpo, dgrpo): divide by the group's reward std
            (GRPO) or not (Dr.GRPO, arXiv:2503.20783); the others have no such option and do not read it.

    Returns:
        ``(advantages (B,) float32, metrics)`` of the estimator.

    Raises:
        UnknownNameError: an unknown ``estimator`` (the message lists the valid names and the closest match).
        ValueError: as the estimator.
    """
    compute = ADVANTAGE_ESTIMATORS.get(estimator)
    options = {"scale_rewards": scale_rewards}
    taken = inspect.signature(compute).parameters
    return compute(rewards, group_ids, **{k: v for k, v in options.items() if k in taken})


def broadcast_advantages(advantages: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Outcome credit on every policy token of every turn (Flow-GRPO of AgentFlow, arXiv:2510.05592).

    Args:
        advantages: (B,) float, one advantage per trajectory (from an estimator above).
        loss_mask: (B, T) 0/1, 1 on the tokens the policy produced (all of its turns).

    Returns:
        (B, T) float32: ``advantages[b]`` where ``loss_mask[b, t]`` is 1, else 0. Pass it to a policy loss.

    Raises:
        ValueError: if the batch sizes differ.
    """
    if advantages.dim() != 1 or loss_mask.dim() != 2 or advantages.shape[0] != loss_mask.shape[0]:
        raise ValueError(
            f"advantages must be (B,) and loss_mask (B, T); got {tuple(advantages.shape)} and "
            f"{tuple(loss_mask.shape)}."
        )
    return advantages.float()[:, None] * loss_mask.float()  # (B, 1) * (B, T)


def turn_advantages(
    outcome_adv: torch.Tensor,
    turn_ids: torch.Tensor,
    step_rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    step_weight: float,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Turn-level credit: the outcome advantage plus a group-normalised tool-step reward for each model turn.

    ``A[b, t] = outcome_adv[b] + step_weight * z[b, k]`` on the tokens of turn k (``turn_ids[b,
    t] = k >= 1``), 0 on other tokens. The step reward of turn k (e.g. 1 for a valid tool call with a useful
    result) is normalised against every tool step the same group took, pooled over turns and trajectories:
    ``z[b, k] = (s[b, k] - mean_g(s)) / (std_g(s) + eps)``, where the (n-1) mean and std run over the pairs
    (b', k') with b' in b's group and turn k' present in trajectory b' (some token has ``turn_ids == k'``).
    Pooling (rather than per turn index) keeps the statistics meaningful when few trajectories reach a late
    turn. A group whose present step rewards are all equal, or that has a single step, gets ``z = 0``.

    Args:
        outcome_adv: (B,) float, the trajectory's outcome advantage (from an estimator above).
        turn_ids: (B, T) int64: 0 on non-policy tokens (prompt, tool output, padding), k >= 1 on the tokens of
            the k-th model turn.
        step_rewards: (B, K) float, the tool-step reward of turn k in column k-1; columns of absent turns are
            ignored (any value).
        group_ids: (B,) int64, the group of each trajectory (as for the estimators).
        step_weight: weight of the step term; 0.0 gives the outcome broadcast (:func:`broadcast_advantages`).
        eps: added to the std; keeps the division finite.

    Returns:
        (B, T) float32 token advantages for a policy loss.

    Raises:
        ValueError: if shapes disagree or a turn id exceeds K.
    """
    if turn_ids.dim() != 2 or step_rewards.dim() != 2 or not (
        outcome_adv.shape[0] == turn_ids.shape[0] == step_rewards.shape[0] == group_ids.shape[0]
    ):
        raise ValueError(
            f"expected outcome_adv (B,), turn_ids (B, T), step_rewards (B, K), group_ids (B,); got "
            f"{tuple(outcome_adv.shape)}, {tuple(turn_ids.shape)}, {tuple(step_rewards.shape)}, "
            f"{tuple(group_ids.shape)}."
        )
    n_turns = step_rewards.shape[1]
    if int(turn_ids.max()) > n_turns or int(turn_ids.min()) < 0:
        raise ValueError(
            f"turn_ids must lie in [0, K={n_turns}] (K = step_rewards.shape[1]); got range "
            f"[{int(turn_ids.min())}, {int(turn_ids.max())}]. Give step_rewards one column per model turn."
        )
    turns = torch.arange(1, n_turns + 1, device=turn_ids.device)
    present = (turn_ids[:, :, None] == turns).any(dim=1)  # (B, T, K) -> (B, K)
    _, group, _ = torch.unique(group_ids, return_inverse=True, return_counts=True)
    n_groups = int(group.max()) + 1
    pair_group = group[:, None].expand(-1, n_turns)[present]  # (P,) group of each present (b, k) pair
    s = step_rewards.float()[present]  # (P,)
    zeros = s.new_zeros(n_groups)
    count = zeros.index_add(0, pair_group, torch.ones_like(s))
    mean = zeros.index_add(0, pair_group, s) / count.clamp(min=1)
    dev = s - mean[pair_group]
    # Guard: a group with one present step has no spread; clamp(min=1) keeps (n - 1) from being 0.
    std = (zeros.index_add(0, pair_group, dev**2) / (count - 1).clamp(min=1)).sqrt()
    hi = s.new_full((n_groups,), -torch.inf).scatter_reduce(0, pair_group, s, "amax")
    lo = s.new_full((n_groups,), torch.inf).scatter_reduce(0, pair_group, s, "amin")
    flat = (hi == lo)[pair_group]  # (P,) all steps of the group equal (or a single step): no step signal
    z_pairs = torch.where(flat, torch.zeros_like(s), dev / (std[pair_group] + eps))
    z = torch.zeros_like(step_rewards, dtype=torch.float32)
    z[present] = z_pairs  # (B, K)
    z = torch.nn.functional.pad(z, (1, 0))  # (B, K + 1): column 0 serves turn id 0 (non-policy tokens)
    per_token_step = z.gather(1, turn_ids)  # (B, T)
    on_turn = (turn_ids > 0).float()
    return (outcome_adv.float()[:, None] + step_weight * per_token_step) * on_turn


ADVANTAGE_ESTIMATORS.register(AdvantageEstimator.GRPO.value, compute_grpo_advantage)
ADVANTAGE_ESTIMATORS.register(AdvantageEstimator.RLOO.value, compute_rloo_advantage)
ADVANTAGE_ESTIMATORS.register(AdvantageEstimator.REINFORCE_PP.value, compute_reinforce_pp_advantage)
ADVANTAGE_ESTIMATORS.register(AdvantageEstimator.DGRPO.value, compute_dgrpo_advantage)
