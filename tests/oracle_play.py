"""Test helper: the input a scripted policy gets for the current turn of an env played by hand (the rollout
builds the same from its env slots; these tests drive a bare env to check each step)."""

from __future__ import annotations

import torch

from vgym.env import VisualToolEnv
from vgym.policies.base import PolicyInput, ground_truth


def oracle_input(env: VisualToolEnv, turn: int, messages: list | None = None) -> PolicyInput:
    """The :class:`PolicyInput` of ``turn`` of ``env``'s current episode, with the ground truth filled in."""
    return PolicyInput(
        torch.zeros(0, dtype=torch.long),
        None,
        None,
        list(messages or []),
        turn,
        env.tools_enabled,
        episode_id=env.sample.id,
        task_name=env.task.name,
        answer_choices=env.task.answer_choices(),
        ground_truth=ground_truth(env.task, env.sample, env.tools_enabled),
    )
