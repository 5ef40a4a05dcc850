"""The answer-prior baseline: a uniformly random answer among the task's choices, at once, without tools.

Contents: :class:`RandomAnswerPolicy`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from vgym.policies.base import PolicyInput, PolicyOutput
from vgym.protocol import HermesProtocol

__all__ = ["RandomAnswerPolicy"]


class RandomAnswerPolicy:
    """Answers a uniformly random element of :attr:`PolicyInput.answer_choices` at once, without tools
    (``"unknown"`` for tasks without a finite answer set): the answer-prior baseline.

    The choice is drawn from ``SeedSequence([seed, crc32(episode id)])``, so it depends on the sample and the
    policy's seed only (not on batching or on which episodes ran before): a resumed run draws the same
    answers.
    """

    def __init__(self, seed: int = 0) -> None:
        """Args:
        seed: mixed with each episode's id into the generator of its answer.
        """
        self.seed, self.protocol = seed, HermesProtocol()

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        outputs = []
        for item in batch:
            choices = item.answer_choices or ("unknown",)
            rng = np.random.default_rng(
                np.random.SeedSequence([self.seed, zlib.crc32(item.episode_id.encode())])
            )
            outputs.append(
                PolicyOutput(self.protocol.format_answer(str(choices[int(rng.integers(len(choices)))])))
            )
        return outputs
