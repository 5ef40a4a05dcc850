"""Task diagnostics: oracle success and answer-prior baselines per task and difficulty.

Contents: :class:`DiagnosticRow`, :func:`diagnose_task`, :func:`diagnose_all`.

For each task and difficulty: the scripted oracle's mean reward with its tools; the accuracy of always giving the
train split's most frequent answer (majority baseline) and of a uniformly random answer from the task's answer set
(random baseline), both on the test split; and the majority-class rate of the test answers (how guessable the task
is). Tasks without a finite answer set report NaN for the answer baselines.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np

from vgym.env import VisualToolEnv
from vgym.policies.base import PolicyInput
from vgym.policies.oracle import OraclePolicy
from vgym.task import TASKS, Task, env_id

__all__ = ["DiagnosticRow", "diagnose_task", "diagnose_all"]


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


def _oracle(env: VisualToolEnv, index: int) -> tuple[float, int]:
    oracle = OraclePolicy()
    obs, info = env.reset(seed=index, options={"split": "test", "index": index})
    for turn in range(env.config.max_turns):
        item = PolicyInput(None, None, None, [], env.sample, turn, env.tools_enabled, env.task)  # type: ignore[arg-type]
        obs, reward, terminated, truncated, info = env.step(oracle.act([item])[0].text)
        if terminated or truncated:
            return float(reward), turn
    return 0.0, env.config.max_turns


def diagnose_task(name: str, difficulty: int | None, *, episodes: int = 50, seed: int = 0) -> DiagnosticRow:
    """Measure one task at one difficulty (None: the task's default config)."""
    cls = TASKS.get(name)
    task_config = None if difficulty is None else {"difficulty": difficulty}
    task: Task = cls(task_config)
    env = VisualToolEnv(name, task_config=task_config, data_seed=seed)
    results = [_oracle(env, i) for i in range(episodes)]
    env.close()
    train = [task.sample("train", i, seed).answer for i in range(episodes)]
    test = [task.sample("test", i, seed) for i in range(episodes)]
    majority = Counter(train).most_common(1)[0][0]
    rng = np.random.default_rng(seed)
    choices = task.answer_choices()
    random_acc = (
        float(np.mean([task.score(s, str(choices[int(rng.integers(len(choices)))])) for s in test]))
        if choices else float("nan")
    )
    return DiagnosticRow(
        env_id=env_id(cls),
        difficulty=difficulty,
        oracle_reward=float(np.mean([r for r, _ in results])),
        oracle_tool_calls=float(np.mean([c for _, c in results])),
        majority_accuracy=float(np.mean([task.score(s, majority) for s in test])),
        random_accuracy=random_acc,
        majority_rate=Counter(s.answer for s in test).most_common(1)[0][1] / len(test),
    )


def diagnose_all(*, episodes: int = 50, seed: int = 0) -> list[DiagnosticRow]:
    """:func:`diagnose_task` for every registered task at each difficulty its config accepts (0, 1, 2 tried)."""
    rows = []
    for name in TASKS.names():
        cls = TASKS.get(name)
        fields = {f.name for f in dataclasses.fields(cls.config_cls)}
        levels: list[int | None] = [None]
        if "difficulty" in fields:
            levels = []
            for level in (0, 1, 2):
                try:
                    cls.config_cls(difficulty=level)
                except Exception:  # a level the config rejects is simply not offered
                    continue
                levels.append(level)
        rows.extend(diagnose_task(name, level, episodes=episodes, seed=seed) for level in levels)
    return rows
