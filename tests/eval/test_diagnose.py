"""Tests of vgym/diagnose.py: the oracle solves, baselines sit at the answer prior, and every necessity claim
holds.

The necessity tests are parametrised over the registry: each procedural task that claims ``necessary_tools``
must back it with counterfactuals that pass the check, and a policy without tools (or with the decoy tool)
must do no better than the bound those counterfactuals give.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

import vgym  # noqa: F401
from vgym.eval.diagnose import counterfactual_group, diagnose_task
from vgym.task import TASKS, Sample
from vgym.tasks.visual_search import VisualSearchTask

CLAIMS = sorted(n for n in TASKS.names() if TASKS.get(n).necessary_tools and TASKS.get(n).procedural)


def test_visual_search_diagnostics() -> None:
    row = diagnose_task("visual_search", 0, episodes=30)
    assert row.env_id == "vgym/VisualSearch-v0" and row.difficulty == 0
    assert row.oracle_reward >= 0.99 and row.oracle_tool_calls == 1.0  # crop, then answer
    # Three balanced patterns: a constant answer or a uniform guess is right about 1/3 of the time. With 30
    # episodes the binomial standard deviation is ~0.09, so [0.05, 0.65] is a > 3-sigma band that still fails
    # for
    # a leaked answer (1.0) or a broken scorer (0.0).
    assert 0.05 <= row.majority_accuracy <= 0.65
    assert 0.05 <= row.random_accuracy <= 0.65
    assert 1 / 3 <= row.majority_rate <= 0.65
    assert not math.isnan(row.random_accuracy)
    # Necessity is exact here: every scene has two look-alikes with the other patterns, so the bound is 1/3.
    assert row.necessary_tools == ("crop",) and row.witnessed == 1.0 and row.rejected_counterfactuals == 0
    assert row.tools_off_bound == pytest.approx(1 / 3)
    assert 0.05 <= row.tools_off_accuracy <= 0.65


def test_tasks_make_necessity_claims() -> None:
    # guards the parametrised test against running empty
    assert {"visual_search", "video_grounding"} <= set(CLAIMS)


@pytest.mark.parametrize("name", CLAIMS)
def test_necessity_claim_holds(name: str) -> None:
    row = diagnose_task(name, None, episodes=24)
    assert row.oracle_reward >= 0.99 and row.oracle_tool_calls >= 1
    assert row.rejected_counterfactuals == 0  # every offered look-alike really is one
    assert row.witnessed >= 0.5  # the claim is backed for most samples, not a few
    assert row.tools_off_bound <= 0.9  # and it bites: without tools at least 10 % is out of reach
    # The measured blind policy cannot beat the bound beyond sampling noise (24 episodes: sd <= 0.1).
    assert row.tools_off_accuracy <= row.tools_off_bound + 0.3
    # The decoy reveals nothing: the same answers, the same accuracy; its call went through.
    assert row.decoy_accuracy == row.tools_off_accuracy and row.decoy_tool_calls == 1.0


@pytest.mark.parametrize("name", CLAIMS)
def test_lookalike_classes_are_canonical(name: str) -> None:
    """The class computed from a look-alike has the same answers as the class it came from, so a blind answer
    chosen from the class cannot depend on which member the episode drew."""
    task = TASKS.get(name)()
    checked = 0
    for index in range(10):
        sample = task.sample("test", index, 0)
        others = task.counterfactuals(sample)
        if not others:
            continue
        answers = sorted({sample.answer, *(cf.answer for cf in others)})
        for member in (others[0], others[-1]):
            assert sorted({member.answer, *(cf.answer for cf in task.counterfactuals(member))}) == answers
        checked += 1
    assert checked >= 5


def _with_counterfactuals(make: object) -> VisualSearchTask:
    task = VisualSearchTask()
    task.counterfactuals = make  # type: ignore[method-assign]  # an instance attribute: the class is untouched
    return task


def test_counterfactual_check_rejects_a_visible_difference_and_a_same_answer() -> None:
    honest = VisualSearchTask()
    sample = honest.sample("test", 0, 0)
    good = honest.counterfactuals(sample)
    assert len(good) == 2 and {cf.answer for cf in good} | {sample.answer} == {
        "horizontal",
        "vertical",
        "checkered",
    }

    def visible(s: Sample) -> list[Sample]:  # the other pattern drawn 6x larger: visible at the budget
        x1, y1, x2, y2 = s.metadata["target_box"]
        image = s.images[0].copy()
        image[y1:y2, x1:x2] = 0
        return [dataclasses.replace(good[0], images=(image,))]

    def same_answer(s: Sample) -> list[Sample]:
        return [dataclasses.replace(s, id=s.id + "/copy")]

    def ids(result: tuple[list[Sample], int]) -> tuple[list[str], int]:
        return [s.id for s in result[0]], result[1]

    assert ids(counterfactual_group(honest, sample, 224 * 224)) == ([sample.id, *(cf.id for cf in good)], 0)
    assert ids(counterfactual_group(_with_counterfactuals(visible), sample, 224 * 224)) == ([sample.id], 1)
    assert ids(counterfactual_group(_with_counterfactuals(same_answer), sample, 224 * 224)) == (
        [sample.id],
        1,
    )
    # At a 6x larger budget the patterns are resolved, so the honest look-alikes no longer pass.
    assert ids(counterfactual_group(honest, sample, 1344 * 1344)) == ([sample.id], 2)


def test_tasks_without_a_claim_report_nan() -> None:
    row = diagnose_task("counting", 0, episodes=4)
    assert row.necessary_tools == () and math.isnan(row.tools_off_bound) and math.isnan(row.decoy_accuracy)


def test_the_oracle_follows_the_env_task_config_not_the_default() -> None:
    """The oracle's plan comes from the env's own task (its config), through the rollout's ground-truth
    channel."""
    from vgym.env import VisualToolEnv
    from vgym.policies.oracle import OraclePolicy
    from vgym.rollout.loop import EpisodeSpec, rollout
    from vgym.tasks.geometry import GeometryTask

    short = GeometryTask()
    # An angle or area question: the full plan points at each label first, the default one measures at once.
    index = next(i for i in range(50) if short.sample("train", i, 0).metadata["kind"] != "length")
    spec = EpisodeSpec("train", index, seed=index)
    for config, first_tool in (({"oracle_calls": 5}, "point"), (None, "measure")):
        (traj,) = rollout(lambda: VisualToolEnv("geometry", task_config=config), OraclePolicy(), None, [spec])
        assert traj.turns[0]["tool_calls"][0]["name"] == first_tool, config
