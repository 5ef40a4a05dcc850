"""The policy protocol: what the rollout engine gives a policy each turn and what it gets back.

Contents: :class:`GroundTruth`, :class:`PolicyInput`, :class:`PolicyOutput`, :class:`Policy`,
:class:`StatefulPolicy`, :func:`reads_ground_truth`, :func:`ground_truth`.

A policy sees what a model would see — the sequence so far, its images, the chat, the tools offered — and the
episode's public facts (its id, task name and the answer choices the prompt states). It never sees the sample
or the task, whose metadata holds the answer. Scripted policies that need the answer (the oracle playing the
task's solution) say so with a class attribute ``reads_ground_truth = True``; only for them does the rollout
fill :attr:`PolicyInput.ground_truth` with the task's :class:`~vgym.task.Solution` — the one explicit channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from vgym.task import Sample, Solution, Task

__all__ = ["GroundTruth", "PolicyInput", "PolicyOutput", "Policy", "StatefulPolicy", "reads_ground_truth",
           "ground_truth"]


@dataclass(frozen=True)
class GroundTruth:
    """What a scripted policy may know of its episode and a learned one must not.

    Attributes:
        solution: the task's plan for the episode (tool calls, then the answer) with the env's tools setting.
        tools_off: the plan without tools (what to answer when skipping them).
    """

    solution: Solution
    tools_off: Solution


def ground_truth(task: Task, sample: Sample, tools_enabled: bool) -> GroundTruth:
    """The :class:`GroundTruth` of ``sample``: ``task.solution`` with the env's tools setting and without
    tools."""
    return GroundTruth(task.solution(sample, tools_enabled), task.solution(sample, False))


@dataclass
class PolicyInput:
    """One episode's state at the start of a model turn.

    Attributes:
        input_ids: (T,) the whole sequence so far, ending with the generation prompt (empty for rollouts
            without a processor, which play text-only policies).
        pixel_values: (P, D) the processor's patches of every image so far, or None.
        image_grid_thw: (N, 3) the processor's grid per image, or None.
        messages: the chat so far (images as ``{"type": "image"}`` items).
        turn: 0-based index of the turn to play.
        tools_enabled: whether the env offers tools.
        images: the images so far as shown to the model (budget-fitted RGB uint8 (H, W, 3)), in the order of
            the ``{"type": "image"}`` items of ``messages`` (for policies that send pixels themselves, e.g.
            over HTTP).
        episode_id: the sample's id (``"<task>/<split>/<seed>/<index>"`` or ``"<task>/<record id>"``): names
            the episode, e.g. to seed a baseline per sample; it reveals nothing of the answer.
        task_name: the task's registry name.
        answer_choices: the task's finite answer set, which its prompt states, or None.
        ground_truth: the task's solution, only for a policy whose ``reads_ground_truth`` is True; else None.
        tool_schemas: the JSON schemas of the tools the env offers (those its system prompt lists), in the
            prompt's order; empty without tools. For policies that describe the tools to a server
            themselves (e.g. an OpenAI-compatible endpoint's ``tools`` field).
    """

    input_ids: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    messages: list[dict[str, Any]]
    turn: int
    tools_enabled: bool
    images: list[np.ndarray] = field(default_factory=list)
    episode_id: str = ""
    task_name: str = ""
    answer_choices: tuple[str, ...] | None = None
    ground_truth: GroundTruth | None = None
    tool_schemas: tuple[dict[str, Any], ...] = ()


@dataclass
class PolicyOutput:
    """One turn's output.

    Attributes:
        text: the turn's text (without the end-of-turn token).
        token_ids: the generated ids including the end-of-turn token when generation stopped there, or None
            for text-only policies (the rollout then tokenises ``text`` and appends the end-of-turn token).
        logprobs: (len(token_ids),) behaviour log-probabilities of ``token_ids``, or None; for text-only
            policies (``token_ids`` None) the server's per-token log-probs, for analysis only (not aligned
            with the rollout's ids, so the rollout ignores them).
        error: why the turn could not be played (e.g. a server refused this episode's request with an HTTP
            4xx), or None. When set, ``text`` is ignored and the rollout ends this episode with reward 0 and
            ``truncated_reason`` ``"policy_error: <error>"``; the other episodes of the batch go on.
    """

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = field(default=None)
    error: str | None = None


class Policy(Protocol):
    """Anything that plays one turn for a batch of episodes.

    A scripted policy that plays the task's solution sets the class attribute ``reads_ground_truth = True``
    (see :func:`reads_ground_truth`); every other policy leaves it unset and gets ``ground_truth=None``.
    """

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        """Return one :class:`PolicyOutput` per input, in order."""
        ...


@runtime_checkable
class StatefulPolicy(Policy, Protocol):
    """A policy with sampling state (e.g. the generator its per-call seeds come from) that a training
    checkpoint must keep so that a resumed run samples what the uninterrupted run would have.

    Implement both methods, or neither: a trainer saves :meth:`state_dict` with its checkpoint and hands it
    back to :meth:`load_state_dict` on resume only when ``isinstance(policy, StatefulPolicy)``. Model weights
    are not part of it (the trainer saves those).
    """

    def state_dict(self) -> dict[str, Any]:
        """The sampling state, as plain Python values (dicts, lists, str, int, float) that ``torch.save`` can
        store and ``torch.load(weights_only=True)`` can read back."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next :meth:`act` then draws what it would have drawn."""
        ...


def reads_ground_truth(policy: Any) -> bool:
    """Whether ``policy`` declared ``reads_ground_truth = True`` (a scripted policy given the solution)."""
    return getattr(policy, "reads_ground_truth", False) is True
