"""The settings of a GRPO-family run (:class:`GRPOConfig`), named as TRL's ``GRPOConfig`` where the knob is
the same, each field citing the paper it comes from. Validated on construction (``InvalidConfigError``, its
message starting with the field's name; a misspelt name gets the closest valid one). The trainer is
:class:`vgym.trainers.grpo.GRPOTrainer`; the loss fields reach the objective as a
:class:`~vgym.trainers.objective.LossSettings` (:meth:`GRPOConfig.loss_settings`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from vgym.errors import InvalidConfigError
from vgym.trainers.advantages import ADVANTAGE_ESTIMATORS
from vgym.trainers.aggregation import LOSS_TYPES
from vgym.trainers.config_checks import check_choice, check_range
from vgym.trainers.monitors import AlarmConfig
from vgym.trainers.objective import LossSettings
from vgym.trainers.policy_losses import POLICY_LOSSES, policy_loss_options
from vgym.trainers.regularisers import KL_ESTIMATORS

__all__ = ["GRPOConfig"]


@dataclass
class GRPOConfig:
    """Settings of a GRPO-family run; names follow TRL's ``GRPOConfig`` where the knob is the same."""

    # -- rollout
    num_generations: int = 8
    """G, episodes per sample (the group); GRPO needs at least 2 (DeepSeekMath, arXiv:2402.03300)."""
    prompts_per_step: int = 4
    """Samples (groups) per step; a step trains on ``prompts_per_step * num_generations`` episodes."""
    split: str = "train"
    """Split the samples come from, read in order from ``data_offset``."""
    data_offset: int = 0
    """First sample index (use different offsets for SFT and RL data)."""
    max_new_tokens: int = 64
    """Tokens per model turn."""
    temperature: float = 1.0
    """Sampling temperature; the loss scores tokens with the same temperature, so the first ratio is 1."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    rollout_mode: str = "lockstep"
    """``"lockstep"`` or ``"async"`` (see :func:`vgym.rollout.loop.rollout`)."""
    # -- rewards and advantages
    advantage: str = "grpo"
    """Estimator: ``grpo``, ``rloo``, ``reinforce_pp`` or ``dgrpo`` (see :mod:`vgym.trainers.advantages`)."""
    scale_rewards: bool = True
    """Divide by the group std (GRPO); False is Dr.GRPO's fix (arXiv:2503.20783). grpo and dgrpo only."""
    otc_weight: float = 0.0
    """Tool-efficiency shaping after OTC-PPO
    (arXiv:2504.14870): ``reward * (1 - w + w * cos(m*pi / (2m + c)))`` for m tool calls; 0 disables it, 1 is
    OTC's multiplicative form."""
    otc_c: float = 2.0
    """OTC's smoothing constant c (larger: a slower decay with the number of calls)."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal (no signal) and roll out new samples instead (DAPO,
    arXiv:2503.14476), at most ``max_resample_rounds`` times per step."""
    max_resample_rounds: int = 3
    """Extra rollout rounds dynamic sampling may spend per step."""
    turn_credit: str = "outcome"
    """``"outcome"``: the outcome advantage on every token of every turn (Flow-GRPO, arXiv:2510.05592);
    ``"steps"``: plus ``step_weight`` times a group-normalised per-turn tool-step reward (valid call +1, tool
    error -1)."""
    step_weight: float = 0.5
    """Weight of the per-turn step reward when ``turn_credit="steps"``."""
    # -- loss
    policy_loss: str = "ppo_clip"
    """``ppo_clip``, ``dual_clip`` or ``gspo`` (see :mod:`vgym.trainers.policy_losses`)."""
    loss_type: str = "grpo"
    """Token aggregation: ``grpo``, ``bnpo``, ``dr_grpo`` or ``dapo`` (see
    :mod:`vgym.trainers.aggregation`)."""
    epsilon: float | None = None
    """Lower clip range of the ratio (PPO, arXiv:1707.06347); None = the loss's default (0.2; GSPO's 3e-4)."""
    epsilon_high: float | None = None
    """Upper clip range; None = the loss's default (``epsilon``; GSPO's 4e-4). DAPO's clip-higher uses 0.28
    (arXiv:2503.14476)."""
    clip_ratio_c: float | None = None
    """Dual-clip bound for negative advantages (Ye et al., arXiv:1912.09729); ``dual_clip`` only
    (ignored, with a warning, for another policy loss), None = 3.0."""
    beta: float = 0.0
    """KL coefficient to the frozen reference model (0: no reference is kept, as Dr.GRPO and DAPO do)."""
    kl_estimator: str = "k3"
    """``k1`` or ``k3`` (Schulman's low-variance estimator)."""
    llds_coef: float = 0.0
    """Weight of the LLDS likelihood-preserving regulariser against GRPO collapse (0 disables it)."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (0 disables it)."""
    mask_truncated_completions: bool = True
    """Exclude episodes cut by a turn, image or token budget from the loss (over-turn masking, Mini-o3
    arXiv:2509.07969; DAPO's overlong filtering)."""
    num_iterations: int = 1
    """Passes over each rollout batch (μ in GRPO); >1 reuses the rollout, and the clip then matters."""
    mini_batch_size: int | None = None
    """Episodes per optimizer step; None = the whole batch in one step."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step (memory); the loss is normalised over the whole minibatch."""
    # -- optimisation
    learning_rate: float = 1e-6
    """AdamW peak learning rate (real checkpoints ~1e-6; the tiny CPU model wants ~1e-4)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 disables it."""
    warmup_steps: int = 0
    """Linear warm-up steps, then a constant learning rate."""
    steps: int = 100
    """Training steps (rollout + update)."""
    seed: int = 0
    """Seeds sampling."""
    alarms: AlarmConfig = field(default_factory=AlarmConfig)
    """Tool-collapse and likelihood-drift alarms (see :mod:`vgym.trainers.monitors`)."""

    def __post_init__(self) -> None:
        """Check every field: names against their registries (with the closest valid one), numbers against
        their ranges, and the combinations.

        Raises:
            InvalidConfigError: naming the first bad field (the message starts with its name).
        """
        if isinstance(self.alarms, dict):
            try:
                self.alarms = AlarmConfig(**self.alarms)
            except InvalidConfigError as exc:
                raise InvalidConfigError(f"alarms: {exc}") from None
        check_range("num_generations", self.num_generations, low=0)
        if self.num_generations < 2:
            raise InvalidConfigError(f"num_generations must be >= 2: GRPO needs at least 2 generations per "
                                     f"sample (a group); got {self.num_generations}")
        for name, low in (("prompts_per_step", 1), ("max_new_tokens", 1),
                          ("num_iterations", 1), ("gradient_accumulation_steps", 1), ("data_offset", 0),
                          ("max_resample_rounds", 0), ("warmup_steps", 0), ("steps", 0), ("seed", 0),
                          ("weight_decay", 0), ("max_grad_norm", 0), ("beta", 0), ("llds_coef", 0),
                          ("entropy_coef", 0), ("step_weight", 0)):
            check_range(name, getattr(self, name), low=low)
        if self.mini_batch_size is not None:
            check_range("mini_batch_size", self.mini_batch_size, low=1)
        check_range("learning_rate", self.learning_rate, low=0, low_open=True)
        check_range("top_p", self.top_p, low=0, high=1, low_open=True)
        check_range("otc_weight", self.otc_weight, low=0, high=1)
        check_range("otc_c", self.otc_c, low=0, low_open=True)
        check_range("temperature", self.temperature)
        if self.temperature <= 0:
            raise InvalidConfigError(f"temperature must be positive (greedy rollouts give no group "
                                     f"variance), got {self.temperature}")
        for name in ("scale_rewards", "dynamic_sampling", "mask_truncated_completions"):
            check_choice(name, getattr(self, name), (True, False))
        check_choice("rollout_mode", self.rollout_mode, ("lockstep", "async"))
        check_choice("advantage", self.advantage, ADVANTAGE_ESTIMATORS.names())
        check_choice("turn_credit", self.turn_credit, ("outcome", "steps"))
        check_choice("policy_loss", self.policy_loss, POLICY_LOSSES.names())
        check_choice("loss_type", self.loss_type, LOSS_TYPES.names())
        check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS.names())
        if self.epsilon is not None:
            check_range("epsilon", self.epsilon, low=0, high=1, low_open=True, high_open=True)
        if self.epsilon_high is not None:
            check_range("epsilon_high", self.epsilon_high, low=0, low_open=True)
        if self.clip_ratio_c is not None:
            check_range("clip_ratio_c", self.clip_ratio_c, low=1, low_open=True)
        ignored = [k for k in _CLIP_FIELDS if getattr(self, k) is not None
                   and k not in policy_loss_options(self.policy_loss)]
        if ignored:
            warnings.warn(f"{', '.join(ignored)} does not apply to policy_loss={self.policy_loss!r} and is "
                          "ignored; leave it unset (None)", stacklevel=3)
        self.loss_settings()  # the objective's own checks

    @property
    def batch_size(self) -> int:
        """Episodes per step."""
        return self.prompts_per_step * self.num_generations

    def loss_settings(self, max_tokens: int | None = None) -> LossSettings:
        """The loss fields as the objective's settings; a clip field the policy loss does not take is left
        out.

        Args:
            max_tokens: ``dr_grpo``'s generation budget in policy tokens per trajectory (the trainer passes
                ``max_new_tokens * max_turns``); None where it is not needed.

        Returns:
            A :class:`~vgym.trainers.objective.LossSettings`.

        Raises:
            UnknownNameError: an unknown ``policy_loss``, ``loss_type`` or ``kl_estimator``.
        """
        taken = policy_loss_options(self.policy_loss)
        clip = {k: getattr(self, k) for k in _CLIP_FIELDS if k in taken}
        return LossSettings(policy_loss=self.policy_loss, loss_type=self.loss_type, max_tokens=max_tokens,
                            beta=self.beta, kl_estimator=self.kl_estimator, llds_coef=self.llds_coef,
                            entropy_coef=self.entropy_coef, **clip)


_CLIP_FIELDS = ("epsilon", "epsilon_high", "clip_ratio_c")
"""The clip-range fields, which reach only a policy loss that takes them (see
:func:`~vgym.trainers.policy_losses.policy_loss_options`)."""
