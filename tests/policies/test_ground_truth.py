"""A policy sees what a model sees, never the answer: the ground truth reaches only a policy that declares
``reads_ground_truth = True`` (the oracle), through :attr:`PolicyInput.ground_truth`.

The leak checks walk every object reachable from what the policy is handed (``gc.get_referents``), so a
sample, a task, an env or the sample's full-resolution pixels hidden anywhere in a ``PolicyInput`` — a field,
a nested dict, a closure — would be found.
"""

from __future__ import annotations

import gc
import types
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from vgym.env import VisualToolEnv
from vgym.policies.base import GroundTruth, PolicyInput, PolicyOutput
from vgym.policies.oracle import OraclePolicy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout
from vgym.rollout.workers import EnvRunner
from vgym.task import Sample, Solution, Task

SPECS = [EpisodeSpec("train", i, group_id=i, seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def processor(tiny_dir: Any) -> Any:
    from vgym.engine.tiny import load_vlm

    return load_vlm(tiny_dir)[1]


class Recorder:
    """A learned-policy stand-in: keeps every input and answers without tools (it declares nothing)."""

    def __init__(self) -> None:
        self.inputs: list[PolicyInput] = []

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        self.inputs += batch
        return [PolicyOutput("<answer>vertical</answer>") for _ in batch]


class Sneaky(Recorder):
    """Claims the channel with a truthy value that is not ``True``: it gets nothing."""

    reads_ground_truth = "yes"


class Peeker:
    """A policy that asks for the ground truth, to check what the channel carries."""

    reads_ground_truth = True

    def __init__(self) -> None:
        self.inputs: list[PolicyInput] = []

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        self.inputs += batch
        return [PolicyOutput(f"<answer>{item.ground_truth.solution.answer}</answer>") for item in batch]


def _reachable(root: Any) -> Iterator[Any]:
    """Every object reachable from ``root`` through references, classes, modules and functions excluded."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(
            obj, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)
        ):
            continue
        seen.add(id(obj))
        yield obj
        stack.extend(gc.get_referents(obj))


def _assert_blind(root: Any, sample: Sample) -> None:
    """Nothing of the sample is reachable: no sample/task/solution/env object, not its metadata mapping, and
    no array sharing memory with its full-resolution images."""
    for obj in _reachable(root):
        assert not isinstance(obj, (Sample, Task, Solution, GroundTruth, VisualToolEnv)), type(obj)
        assert obj is not sample.metadata
        if isinstance(obj, np.ndarray):
            assert not any(np.shares_memory(obj, image) for image in sample.images)


@pytest.mark.parametrize("with_encoder", [False, True], ids=["text", "tokens"])
def test_a_learned_policy_cannot_reach_the_sample(with_encoder: bool, processor: Any) -> None:
    recorder = Recorder()
    envs: list[VisualToolEnv] = []

    def env_fn() -> VisualToolEnv:
        envs.append(VisualToolEnv("visual_search"))
        return envs[-1]

    encoder = ChatEncoder(processor) if with_encoder else None
    rollout(env_fn, recorder, encoder, SPECS, RolloutConfig(batch_size=3))
    assert len(recorder.inputs) == 3
    samples = {envs[0].task.sample("train", s.index, 0).id: s for s in SPECS}
    for item in recorder.inputs:
        assert item.ground_truth is None
        assert item.episode_id in samples and item.task_name == "visual_search"
        assert item.answer_choices == ("horizontal", "vertical", "checkered")
        assert (item.input_ids.numel() > 0) is with_encoder
        _assert_blind(item, envs[0].task.sample("train", samples[item.episode_id].index, 0))


def test_a_truthy_claim_that_is_not_true_gets_nothing() -> None:
    sneaky = Sneaky()
    rollout(lambda: VisualToolEnv("visual_search"), sneaky, None, SPECS[:1])
    assert sneaky.inputs[0].ground_truth is None


def test_only_a_declared_reader_gets_the_solution_of_the_env_task() -> None:
    peeker = Peeker()
    (traj,) = rollout(lambda: VisualToolEnv("visual_search"), peeker, None, SPECS[:1])
    truth = peeker.inputs[0].ground_truth
    sample = VisualToolEnv("visual_search").task.sample("train", 0, 0)
    assert truth.solution.answer == truth.tools_off.answer == sample.answer
    assert truth.solution.tool_calls == (("crop", {"box": list(sample.metadata["region"])}),)
    assert truth.tools_off.tool_calls == ()
    assert traj.reward_parts["accuracy"] == 1.0


def test_an_env_slot_reports_public_facts_only(processor: Any) -> None:
    """What crosses from an env slot to the driver (a Ray actor's reply) holds no sample unless asked for."""
    runner = EnvRunner(lambda: VisualToolEnv("visual_search"), ChatEncoder(processor))
    step = runner.reset("train", 2, 2)
    sample = runner.env.sample
    assert step.start.sample_id == sample.id and step.start.ground_truth is None
    _assert_blind(step, sample)
    asked = runner.reset("train", 2, 2, with_ground_truth=True)
    assert asked.start.ground_truth.solution.answer == sample.answer
    runner.close()


def test_the_oracle_refuses_to_guess_without_the_channel() -> None:
    item = PolicyInput(np.zeros(0), None, None, [], 0, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs PolicyInput.ground_truth"):
        OraclePolicy().act([item])
