"""Task diagnostics: oracle success, tool necessity, and answer-prior baselines per task and difficulty.

Contents: :class:`DiagnosticRow`, :class:`BlindPolicy`, :func:`counterfactual_group`, :func:`diagnose_task`,
:func:`diagnose_all`.

For each task and difficulty, on the test split:

- **oracle**: the scripted oracle's mean reward and tool calls with the task's default tools;
- **necessity** (tasks that claim :attr:`~vgym.task.Task.necessary_tools`): each sample's
  :meth:`~vgym.task.Task.counterfactuals` are *checked* — kept only when their images, fitted to the env's
  budget, are byte-identical to the sample's and their answer scores < 1 on the sample. A sample and its kept
  counterfactuals form a group that no policy without tools can tell apart, so its best expected accuracy on
  the group is ``max_a mean_i score(member_i, a)`` over candidate answers ``a`` (the members' own answers:
  exact for tasks with discrete answers, an estimate for continuous scores such as IoU). ``tools_off_bound``
  is the mean of that over samples (a sample without a kept counterfactual counts 1.0: no evidence). Then two
  measured columns: :class:`BlindPolicy` episodes through the env with tools off, and with only the decoy tool
  ``image_info`` offered (it calls it once, then answers): the accuracy of a policy that makes the best use of
  the shown images;
- **baselines**: always the train split's most frequent answer (majority), a uniform guess from the task's
  answer set (random; NaN without a finite set), and the majority-class rate of the test answers.

Dataset tasks (``procedural = False``) are skipped by :func:`diagnose_all`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError
from vgym.policies.base import Policy, PolicyInput, PolicyOutput
from vgym.policies.oracle import OraclePolicy
from vgym.protocol import HermesProtocol
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout
from vgym.task import TASKS, Sample, Task, env_id
from vgym.tooling import fit_to_budget

__all__ = ["DiagnosticRow", "BlindPolicy", "counterfactual_group", "diagnose_task", "diagnose_all"]

DECOY_TOOL = "image_info"
"""The decoy of the necessity columns: it reports what the shown image already shows (see
``tools/image_info.py``)."""


@dataclass
class DiagnosticRow:
    """One (task, difficulty) line of the table."""

    env_id: str
    difficulty: int | None
    oracle_reward: float
    """Mean composite reward of the oracle with the task's default tools (expected ≥ 0.99)."""
    oracle_tool_calls: float
    """Mean tool calls per oracle episode."""
    majority_accuracy: float
    """Accuracy on test of always answering the train split's most frequent answer."""
    random_accuracy: float
    """Accuracy on test of a uniform guess from the answer set (NaN without a finite set)."""
    majority_rate: float
    """Share of the most frequent answer among the test answers."""
    necessary_tools: tuple[str, ...] = ()
    """The task's necessity claim (empty: none; the necessity columns are then NaN)."""
    witnessed: float = float("nan")
    """Share of test samples with at least one checked counterfactual (evidence for the claim)."""
    rejected_counterfactuals: int = 0
    """Counterfactuals the task offered that failed the check (not identical at the budget, or the same
    answer)."""
    tools_off_bound: float = float("nan")
    """Upper bound on the accuracy of any policy without tools (see the module docstring)."""
    tools_off_accuracy: float = float("nan")
    """Measured: mean accuracy of :class:`BlindPolicy` episodes with tools off."""
    decoy_accuracy: float = float("nan")
    """Measured: mean accuracy of :class:`BlindPolicy` episodes that call the decoy tool once, then answer."""
    decoy_tool_calls: float = float("nan")
    """Tool calls per decoy episode (1.0 when the decoy call went through)."""


def counterfactual_group(task: Task, sample: Sample, max_pixels: int) -> tuple[list[Sample], int]:
    """``sample`` followed by its counterfactuals that pass the check, and the number rejected.

    A counterfactual passes when each of its images, fitted to ``max_pixels``, is byte-identical to the
    sample's, and the sample scores its answer below 1.
    """
    shown = [fit_to_budget(im, max_pixels).tobytes() for im in sample.images]
    group, rejected = [sample], 0
    for cf in task.counterfactuals(sample):
        same = len(cf.images) == len(shown) and all(
            fit_to_budget(im, max_pixels).tobytes() == s for im, s in zip(cf.images, shown)
        )
        if same and task.score(sample, cf.answer) < 1.0:
            group.append(cf)
        else:
            rejected += 1
    return group, rejected


def _blind_answer(task: Task, group: Sequence[Sample]) -> tuple[str, float]:
    """The candidate answer with the best mean score over the group (ties: the smallest string), and that
    mean.

    The group is a look-alike class, the same from any member (the task's contract), so the answer depends on
    what the members share, never on which member the episode drew."""
    scored = [(-float(np.mean([task.score(m, a.answer) for m in group])), a.answer) for a in group]
    best, answer = min(scored)
    return answer, -best


class BlindPolicy:
    """Answers what the shown images allow: the best answer for the sample's look-alike class.

    The class is the same for every member (they look identical without tools), so the answer depends on what
    the model is shown only. With ``decoy`` set it first calls that tool on image 0 (one turn), then answers.
    """

    def __init__(self, answers: dict[str, str], decoy: str | None = None) -> None:
        """Args:
        answers: sample id -> the group's blind answer (from :func:`counterfactual_group`).
        decoy: a tool to call once before answering, or None.
        """
        self.answers, self.decoy, self.protocol = answers, decoy, HermesProtocol()

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        out = []
        for item in batch:
            if self.decoy and item.turn == 0:
                out.append(PolicyOutput(text=self.protocol.format_tool_call(self.decoy, {"image_index": 0})))
            else:
                out.append(PolicyOutput(text=self.protocol.format_answer(self.answers[item.episode_id])))
        return out


def _play(name: str, task_config: dict | None, seed: int, tools: tuple[str, ...] | None, policy: Policy,
          episodes: int) -> list[tuple[float, int, float]]:
    """Play test items ``0 .. episodes-1`` (env seed = index) through :func:`~vgym.rollout.loop.rollout`;
    returns (reward, tool calls, accuracy) per episode."""
    env_fn = functools.partial(VisualToolEnv, name, task_config=task_config, data_seed=seed, tools=tools)
    specs = [EpisodeSpec("test", i, group_id=i, seed=i) for i in range(episodes)]
    trajs = rollout(env_fn, policy, None, specs, RolloutConfig(batch_size=8))
    return [(t.reward, t.num_tool_calls, float(t.reward_parts.get("accuracy", 0.0))) for t in trajs]


def diagnose_task(name: str, difficulty: int | None, *, episodes: int = 50, seed: int = 0,
                  task_config: Mapping[str, Any] | None = None,
                  tools: tuple[str, ...] | None = None) -> DiagnosticRow:
    """Measure one task at one difficulty.

    Args:
        name: the task's registry name.
        difficulty: the level (set in the task config), or None for the config as given.
        episodes: test episodes (at least 1).
        seed: the data seed.
        task_config: other task config fields (e.g. a dataset's ``root``), or None.
        tools: the tools the oracle is offered; None: the task's default tools (``()``: none).

    Raises:
        InvalidConfigError: for ``episodes < 1`` or a bad task config (an unknown field names the closest
            one).
    """
    if episodes < 1:
        raise InvalidConfigError(f"episodes must be at least 1, got {episodes}")
    cls = TASKS.get(name)
    merged = dict(task_config or {}, **({} if difficulty is None else {"difficulty": difficulty}))
    task_config = merged or None
    task: Task = cls(task_config)
    results = _play(name, task_config, seed, tools, OraclePolicy(), episodes)
    test = [task.sample("test", i, seed) for i in range(episodes)]
    row = DiagnosticRow(
        env_id=env_id(cls),
        difficulty=merged.get("difficulty", difficulty),
        oracle_reward=float(np.mean([r[0] for r in results])),
        oracle_tool_calls=float(np.mean([r[1] for r in results])),
        majority_accuracy=float("nan"),
        random_accuracy=float("nan"),
        majority_rate=Counter(s.answer for s in test).most_common(1)[0][1] / len(test),
        necessary_tools=tuple(cls.necessary_tools),
    )
    train = [task.sample("train", i, seed).answer for i in range(episodes)]
    majority = Counter(train).most_common(1)[0][0]
    row.majority_accuracy = float(np.mean([task.score(s, majority) for s in test]))
    choices = task.answer_choices()
    if choices:
        rng = np.random.default_rng(seed)
        row.random_accuracy = float(np.mean([task.score(s, str(choices[int(rng.integers(len(choices)))]))
                                             for s in test]))
    if row.necessary_tools:
        _necessity(row, name, task_config, seed, test)
    return row


def _necessity(
    row: DiagnosticRow, name: str, task_config: dict | None, seed: int, test: list[Sample]
) -> None:
    """Fill the necessity columns of ``row`` from the counterfactual groups of ``test``."""
    env_off = VisualToolEnv(name, task_config=task_config, data_seed=seed, tools=())
    answers, bounds, witnessed = {}, [], 0
    for sample in test:
        group, rejected = counterfactual_group(env_off.task, sample, env_off.config.max_pixels)
        row.rejected_counterfactuals += rejected
        witnessed += len(group) > 1
        answers[sample.id], bound = _blind_answer(env_off.task, group)
        bounds.append(bound)
    env_off.close()
    row.witnessed = witnessed / len(test)
    row.tools_off_bound = float(np.mean(bounds))
    off = _play(name, task_config, seed, (), BlindPolicy(answers), len(test))
    decoy = _play(name, task_config, seed, (DECOY_TOOL,), BlindPolicy(answers, DECOY_TOOL), len(test))
    row.tools_off_accuracy = float(np.mean([a for _, _, a in off]))
    row.decoy_accuracy = float(np.mean([a for _, _, a in decoy]))
    row.decoy_tool_calls = float(np.mean([c for _, c, _ in decoy]))


def diagnose_all(*, episodes: int = 50, seed: int = 0, names: Sequence[str] | None = None,
                 task_config: Mapping[str, Any] | None = None,
                 tools: tuple[str, ...] | None = None) -> list[DiagnosticRow]:
    """:func:`diagnose_task` for every procedural task (or ``names``) at each difficulty its config accepts
    (only the given one when ``task_config`` sets ``difficulty``); ``task_config`` and ``tools`` apply to each
    task."""
    rows = []
    for name in names or TASKS.names():
        cls = TASKS.get(name)
        if not cls.procedural and names is None:
            continue
        fields = {f.name for f in dataclasses.fields(cls.config_cls)}
        levels: list[int | None] = [None]
        if "difficulty" in fields and "difficulty" not in (task_config or {}):
            levels = []
            for level in (0, 1, 2):
                try:
                    cls.config_cls(**{**(task_config or {}), "difficulty": level})
                except Exception:  # a level the config rejects is simply not offered
                    continue
                levels.append(level)
        rows.extend(
            diagnose_task(name, level, episodes=episodes, seed=seed, task_config=task_config, tools=tools)
            for level in levels
        )
    return rows
