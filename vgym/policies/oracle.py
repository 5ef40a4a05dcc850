"""The scripted oracle: plays the task's solution (tool calls, then the answer), optionally with noise.

Contents: :class:`OraclePolicy`.

It is the one policy that reads the ground truth: it declares ``reads_ground_truth = True``, so the rollout
hands it the task's solution in :attr:`~vgym.policies.base.PolicyInput.ground_truth`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vgym.policies.base import PolicyInput, PolicyOutput
from vgym.protocol import ActionProtocol, HermesProtocol

__all__ = ["OraclePolicy"]


class OraclePolicy:
    """Replays the task's solution (:attr:`PolicyInput.ground_truth`) one step per turn.

    With ``noise > 0`` a turn's answer is replaced by a wrong one with that probability (negative examples for
    reward models and RL baselines). With ``skip_tools > 0`` an episode skips its tool calls with that
    probability and guesses at once among the task's answer choices: a lazy teacher, whose SFT student
    under-uses the tools (the quickstart's GRPO stage starts from it). Both choices come from the policy's own
    seeded generator.
    """

    reads_ground_truth = True
    """The rollout hands this policy the task's solution (see :mod:`vgym.policies.base`)."""

    def __init__(
        self,
        *,
        protocol: ActionProtocol | None = None,
        noise: float = 0.0,
        skip_tools: float = 0.0,
        wrong_answers: Sequence[str] | None = None,
        seed: int = 0,
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

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        """One turn per input; each input must carry ``ground_truth``.

        Raises:
            ValueError: for an input without ground truth (played by a loop that did not ask for it).
        """
        return [PolicyOutput(text=self._turn_text(item)) for item in batch]

    def _turn_text(self, item: PolicyInput) -> str:
        if item.ground_truth is None:
            raise ValueError(
                "OraclePolicy needs PolicyInput.ground_truth; play it with vgym.rollout.loop.rollout, "
                "which fills it for policies that set reads_ground_truth"
            )
        solution = item.ground_truth.solution
        if item.turn == 0 and solution.tool_calls and self.skip_tools and self.rng.random() < self.skip_tools:
            choices = item.answer_choices
            if not choices:
                return self.protocol.format_answer(item.ground_truth.tools_off.answer)
            return self.protocol.format_answer(choices[int(self.rng.integers(len(choices)))])
        if item.turn < len(solution.tool_calls):
            name, arguments = solution.tool_calls[item.turn]
            return self.protocol.format_tool_call(name, arguments)
        answer = solution.answer
        if self.noise and self.rng.random() < self.noise:
            candidates = self.wrong_answers or item.answer_choices or ("unknown",)
            wrong = [a for a in candidates if a != answer]
            if wrong:
                answer = wrong[int(self.rng.integers(len(wrong)))]
        return self.protocol.format_answer(answer)
