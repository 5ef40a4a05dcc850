"""Training monitors: rollout metrics and training alarms (the reporters that emit them live in
:mod:`vgym.trainers.reporters`).

Contents:
    :func:`rollout_metrics` — ``rollout/…`` and ``tool/<name>/…`` metrics of a batch of trajectories.
    :class:`AlarmConfig` and :class:`AlarmMonitor` — the tool-collapse, likelihood-drift (LLD) and optional
    entropy-collapse alarms.

Contracts: step functions return metric dicts and only reporters emit them (STYLE.md §9);
:func:`rollout_metrics` is pure; :class:`AlarmMonitor` returns the messages of the alarms that fire, logs them
as warnings on this module's logger, and round-trips its state through :meth:`~AlarmMonitor.state_dict` for an
exact resume.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vgym.errors import InvalidConfigError
from vgym.rollout.trajectory import Trajectory
from vgym.tooling import TOOLS

__all__ = [
    "rollout_metrics",
    "AlarmConfig",
    "AlarmMonitor",
]

logger = logging.getLogger(__name__)

UNKNOWN_TOOL = "_unknown"
"""The ``tool/<name>/…`` bucket for calls to names that are not registered tools (model-invented names would
otherwise add a new metric column per typo)."""


def rollout_metrics(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Summarise a batch of finished episodes.

    Args:
        trajectories: the episodes of one rollout batch (any number of GRPO groups).

    Returns:
        Means over episodes: ``rollout/reward``, ``rollout/accuracy`` and ``rollout/format`` (reward parts; a
        missing part counts 0), ``rollout/<part>_reward`` for any other part except ``total`` (the env's
        ``tool`` part gives ``rollout/tool_reward``), ``rollout/tool_calls_per_episode``, ``rollout/turns``,
        ``rollout/policy_tokens`` (``loss_mask`` sum), ``rollout/truncated_rate``. Ratios:
        ``rollout/tool_error_rate`` (failed calls / calls; 0 when no call was made),
        ``rollout/zero_std_groups`` (fraction of ``group_id`` groups whose rewards are all exactly equal, so
            GRPO
        gets no signal from them; a group of one counts as zero-std). ``rollout/episodes``: the batch size.
        Per tool with at least one call: ``tool/<name>/calls`` (calls per episode) and
            ``tool/<name>/error_rate``;
        unregistered names are pooled under ``tool/_unknown/…``.

    Raises:
        ValueError: if ``trajectories`` is empty.
    """
    if not trajectories:
        raise ValueError("rollout_metrics needs at least one trajectory, got an empty batch")
    n = len(trajectories)
    parts = sorted({p for t in trajectories for p in t.reward_parts} - {"accuracy", "format", "total"})
    out = {
        "rollout/reward": float(np.mean([t.reward for t in trajectories])),
        "rollout/accuracy": float(np.mean([t.reward_parts.get("accuracy", 0.0) for t in trajectories])),
        "rollout/format": float(np.mean([t.reward_parts.get("format", 0.0) for t in trajectories])),
    }
    for part in parts:
        out[f"rollout/{part}_reward"] = float(np.mean([t.reward_parts.get(part, 0.0) for t in trajectories]))
    calls: dict[str, int] = defaultdict(int)
    errors: dict[str, int] = defaultdict(int)
    for traj in trajectories:
        for turn in traj.turns:
            for call in turn["tool_calls"]:
                name = call["name"] if call["name"] in TOOLS else UNKNOWN_TOOL
                calls[name] += 1
                errors[name] += not call["ok"]
    total_calls = sum(calls.values())
    groups: dict[int, list[float]] = defaultdict(list)
    for traj in trajectories:
        groups[traj.group_id].append(traj.reward)
    out |= {
        "rollout/tool_calls_per_episode": total_calls / n,
        "rollout/tool_error_rate": sum(errors.values()) / total_calls if total_calls else 0.0,
        "rollout/truncated_rate": sum(t.truncated for t in trajectories) / n,
        "rollout/turns": float(np.mean([t.num_turns for t in trajectories])),
        "rollout/policy_tokens": float(np.mean([float(t.loss_mask.sum()) for t in trajectories])),
        "rollout/zero_std_groups": sum(len(set(r)) == 1 for r in groups.values()) / len(groups),
        "rollout/episodes": float(n),
    }
    for name in sorted(calls):
        out[f"tool/{name}/calls"] = calls[name] / n
        out[f"tool/{name}/error_rate"] = errors[name] / calls[name]
    return out


# -------------------------------------------------------------------------------------------------------
# alarms
@dataclass
class AlarmConfig:
    """When :class:`AlarmMonitor` warns. Each alarm fires once per episode of trouble and re-arms when its
    condition clears for one step. Steps whose metrics lack an alarm's key, or carry NaN, leave it
    unchanged."""

    # --- tool collapse: the policy stops calling tools (a known failure of RL with tools)
    tool_calls_key: str = "rollout/tool_calls_per_episode"
    """Metric watched by the tool-collapse alarm."""
    tool_collapse_threshold: float | None = 0.2
    """Fire when the watched value stays below this fraction of its baseline for ``patience`` steps; in (0,
    1). None disables the alarm. A baseline of 0 (a run that never called tools) never fires."""
    baseline_steps: int = 10
    """The baseline is the mean of the first ``baseline_steps`` values seen (no alarm fires before); >= 1."""
    patience: int = 5
    """Consecutive steps below threshold before a collapse alarm fires (tool and entropy alarms); >= 1."""

    # --- LLD: mean log-likelihood of chosen tokens drifting down (likelihood displacement)
    logprob_key: str = "actor/logprob_mean"
    """Metric watched by the LLD alarm: mean log-prob of the sampled tokens under the current policy."""
    lld_patience: int | None = 10
    """Fire when the smoothed value has fallen by more than ``lld_tolerance`` at each of this many consecutive
    steps; a noiseless series falling from step 0 fires at step ``lld_patience``. None disables the alarm."""
    lld_tolerance: float = 1e-3
    """Nats per step a smoothed fall must exceed to count; >= 0. Set it above the smoothed step-to-step noise,
    about ``(1 - lld_ema) * std(step noise)``."""
    lld_ema: float = 0.9
    """Weight of the past in the exponential moving average the LLD alarm watches, in [0, 1); 0 watches raw
    values. Smoothing shrinks step noise by ~``1 - lld_ema`` while a steady drift keeps its slope."""

    # --- entropy collapse (optional)
    entropy_key: str = "actor/entropy"
    """Metric watched by the entropy-collapse alarm."""
    entropy_collapse_threshold: float | None = None
    """Like ``tool_collapse_threshold`` for the entropy (same ``baseline_steps`` and ``patience``); None
    (default) disables it."""

    def __post_init__(self) -> None:
        for name in ("tool_collapse_threshold", "entropy_collapse_threshold"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise InvalidConfigError(
                    f"{name} is a fraction of the baseline in (0, 1) or None, got {value}"
                )
        if (
            self.baseline_steps < 1
            or self.patience < 1
            or (self.lld_patience is not None and self.lld_patience < 1)
        ):
            raise InvalidConfigError(
                f"baseline_steps, patience and lld_patience must be >= 1 (lld_patience may be None); got "
                f"{self.baseline_steps}, {self.patience}, {self.lld_patience}"
            )
        if self.lld_tolerance < 0 or not 0 <= self.lld_ema < 1:
            raise InvalidConfigError(
                f"need lld_tolerance >= 0 and 0 <= lld_ema < 1; got {self.lld_tolerance}, {self.lld_ema}"
            )


class AlarmMonitor:
    """Watches each step's metrics and warns about tool collapse, likelihood drift and entropy collapse.

    Alarm messages are returned by :meth:`update` and logged with ``logging.getLogger(__name__).warning``.

    >>> monitor = AlarmMonitor(AlarmConfig(baseline_steps=2, patience=2, lld_patience=None))
    >>> calls = [2, 2, 0.1, 0.1, 0]
    >>> fired = [monitor.update(s, {"rollout/tool_calls_per_episode": v}) for s, v in enumerate(calls)]
    >>> [len(f) for f in fired], fired[3][0][:33]
    ([0, 0, 0, 1, 0], 'tool-collapse alarm at step 3: ro')
    """

    def __init__(self, config: AlarmConfig | None = None) -> None:
        """Args:
        config: the thresholds; None uses :class:`AlarmConfig` defaults.
        """
        self.config = config or AlarmConfig()
        self._state: dict[str, dict[str, Any]] = {
            "tool_collapse": {"values": [], "baseline": None, "run": 0, "fired": False},
            "entropy_collapse": {"values": [], "baseline": None, "run": 0, "fired": False},
            "lld": {"ema": None, "run": 0, "fired": False},
        }

    def update(self, step: int, metrics: Mapping[str, float]) -> list[str]:
        """Feed one step's metrics.

        Args:
            step: the optimizer step (used in messages).
            metrics: the step's metrics; missing keys leave their alarms unchanged.

        Returns:
            The messages of the alarms that fired at this step (usually empty).
        """
        cfg = self.config
        fired: list[str] = []
        collapses = (("tool_collapse", cfg.tool_calls_key, cfg.tool_collapse_threshold),
                     ("entropy_collapse", cfg.entropy_key, cfg.entropy_collapse_threshold))
        for name, key, threshold in collapses:
            value = _finite(metrics, key)
            if threshold is not None and value is not None:
                message = self._collapse(name, key, threshold, value, step)
                fired += [message] if message else []
        value = _finite(metrics, cfg.logprob_key)
        if cfg.lld_patience is not None and value is not None:
            message = self._lld(value, step, cfg.lld_patience)
            fired += [message] if message else []
        for message in fired:
            logger.warning(message)
        return fired

    def _collapse(self, name: str, key: str, threshold: float, value: float, step: int) -> str | None:
        state, cfg = self._state[name], self.config
        if state["baseline"] is None:
            state["values"].append(value)
            if len(state["values"]) == cfg.baseline_steps:
                state["baseline"] = float(np.mean(state["values"]))
            return None
        limit = threshold * state["baseline"]
        if value >= limit or state["baseline"] <= 0:
            state["run"], state["fired"] = 0, False  # condition cleared: re-arm
            return None
        state["run"] += 1
        if state["run"] < cfg.patience or state["fired"]:
            return None
        state["fired"] = True
        return (f"{name.replace('_', '-')} alarm at step {step}: {key} = {value:.4g} has stayed below "
                f"{threshold:g} x baseline {state['baseline']:.4g} (= {limit:.4g}) for {state['run']} steps")

    def _lld(self, value: float, step: int, patience: int) -> str | None:
        state, cfg = self._state["lld"], self.config
        previous = state["ema"]
        state["ema"] = value if previous is None else cfg.lld_ema * previous + (1 - cfg.lld_ema) * value
        if previous is None:
            return None
        if state["ema"] >= previous - cfg.lld_tolerance:
            state["run"], state["fired"] = 0, False  # no fall this step: re-arm
            return None
        state["run"] += 1
        if state["run"] < patience or state["fired"]:
            return None
        state["fired"] = True
        return (f"LLD alarm at step {step}: {cfg.logprob_key} (EMA {cfg.lld_ema:g}) has fallen by more than "
                f"{cfg.lld_tolerance:g} at each of the last {state['run']} steps, now {state['ema']:.4g}; "
                "the policy is losing likelihood on its own samples")

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy of the alarm state (not the config), for checkpoints."""
        return {name: {k: list(v) if isinstance(v, list) else v for k, v in s.items()}
                for name, s in self._state.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output, so later updates match an uninterrupted monitor exactly.

        Raises:
            ValueError: if ``state`` does not have the layout :meth:`state_dict` writes.
        """
        if {n: set(s) for n, s in state.items()} != {n: set(s) for n, s in self._state.items()}:
            raise ValueError(
                f"not an AlarmMonitor state: expected {self.state_dict()} layout, got {dict(state)}"
            )
        self._state = {name: {k: list(v) if isinstance(v, list) else v for k, v in s.items()}
                       for name, s in state.items()}


def _finite(metrics: Mapping[str, float], key: str) -> float | None:
    """``metrics[key]`` as a float, or None when missing or NaN (a skipped measurement is not evidence)."""
    value = metrics.get(key)
    if value is None or math.isnan(float(value)):
        return None
    return float(value)
