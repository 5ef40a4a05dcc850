"""The scripted oracle: plays the task's solution (tool calls, then the answer), optionally with noise.

Contents: :class:`OraclePolicy`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vgym.policies.base import PolicyInput, PolicyOutput
from vgym.protocol import ActionProtocol, HermesProtocol
from vgym.registry import Registry
from vgym.task import TASKS, Task

__all__ = ["OraclePolicy"]


class OraclePolicy:
    """Replays ``task.solution(sample)`` one step per turn.

    With ``noise > 0`` a turn's answer is replaced by a wrong one with that probability (negative examples for
    reward models and RL baselines). With ``skip_tools > 0`` an episode skips its tool calls with that probability
    and guesses at once among the task's answer choices: a lazy teacher, whose SFT student under-uses the tools (the
    quickstart's GRPO stage starts from it). Both choices come from the policy's own seeded generator.
    """

    def __init__(
        self,
        *,
        protocol: ActionProtocol | None = None,
        noise: float = 0.0,
        skip_tools: float = 0.0,
        wrong_answers: Sequence[str] | None = None,
        seed: int = 0,
        tasks: Registry[type[Task]] = TASKS,
    ) -> None:
        """Args:
        protocol: formats the calls and the answer; defaults to :class:`HermesProtocol`.
        noise: probability of answering with one of ``wrong_answers`` instead of the gold answer.
        skip_tools: probability, drawn at an episode's first turn, of answering at once without the tools: a
            uniform guess among the task's answer choices (the tools-off solution's answer for tasks without a
            finite set).
        wrong_answers: candidates for noisy answers (one equal to the gold answer is skipped); None means the
            task's :meth:`~vgym.task.Task.answer_choices`, or ``("unknown",)`` for tasks without a finite set.
        seed: seeds the noise.
        tasks: registry used to look up each sample's task.
        """
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        if not 0.0 <= skip_tools <= 1.0:
            raise ValueError(f"skip_tools must be in [0, 1], got {skip_tools}")
        self.skip_tools = skip_tools
        self.protocol = protocol or HermesProtocol()
        self.noise = noise
        self.wrong_answers = tuple(wrong_answers) if wrong_answers is not None else None
        self.rng = np.random.default_rng(seed)
        self._tasks = tasks
        self._instances: dict[str, Task] = {}

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        return [PolicyOutput(text=self._turn_text(item)) for item in batch]

    def _turn_text(self, item: PolicyInput) -> str:
        task = item.task or self._instances.get(item.sample.task)
        if task is None:
            task = self._instances[item.sample.task] = self._tasks.get(item.sample.task)()
        solution = task.solution(item.sample, item.tools_enabled)
        if item.turn == 0 and solution.tool_calls and self.skip_tools and self.rng.random() < self.skip_tools:
            choices = task.answer_choices()
            if not choices:
                return self.protocol.format_answer(task.solution(item.sample, False).answer)
            return self.protocol.format_answer(choices[int(self.rng.integers(len(choices)))])
        if item.turn < len(solution.tool_calls):
            name, arguments = solution.tool_calls[item.turn]
            return self.protocol.format_tool_call(name, arguments)
        answer = solution.answer
        if self.noise and self.rng.random() < self.noise:
            candidates = self.wrong_answers or task.answer_choices() or ("unknown",)
            wrong = [a for a in candidates if a != answer]
            if wrong:
                answer = wrong[int(self.rng.integers(len(wrong)))]
        return self.protocol.format_answer(answer)
