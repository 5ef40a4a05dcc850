"""Tests of vgym/env.py: the gymnasium contract of every registered env, episodes, errors-as-observations and
limits. A fuzz test of ``step`` and vectorised use: ``test_env_fuzz.py``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import vgym  # noqa: F401  (registers the envs)
from vgym.env import IMAGE_BUDGET_ERROR, VisualToolEnv
from vgym.errors import InvalidConfigError, UnknownNameError
from vgym.task import TASKS, env_id
from vgym.tasks.visual_search import PATTERNS
from vgym.tooling import fit_to_budget

ALL_ENV_IDS = sorted(k for k in gymnasium.registry if k.startswith("vgym/"))
ENV_IDS = sorted(env_id(TASKS.get(name)) for name in TASKS.names() if TASKS.get(name).procedural)
"""Procedural tasks: their default config works anywhere. Dataset loaders need a root and have their own
tests."""
VS = "vgym/VisualSearch-v0"


def _make(env_name: str = VS, **kwargs: Any) -> gymnasium.Env:
    return gymnasium.make(env_name, disable_env_checker=True, **kwargs)


@pytest.fixture
def env() -> Iterator[gymnasium.Env]:
    env = _make()
    yield env
    env.close()


def _crop(env: gymnasium.Env, box: Any, **extra: Any) -> str:
    return env.unwrapped.protocol.format_tool_call("crop", {"box": box, **extra})


def _answer(env: gymnasium.Env, text: str) -> str:
    return env.unwrapped.protocol.format_answer(text)


def _region(env: gymnasium.Env) -> list[int]:
    return list(env.unwrapped.sample.metadata["region"])


def _assert_obs_valid(env: gymnasium.Env, obs: dict) -> None:
    assert env.observation_space.contains(obs)
    max_pixels = env.unwrapped.config.max_pixels
    assert all(im.shape[0] * im.shape[1] <= max_pixels for im in obs["images"])


# ---------------------------------------------------------------- contract tests over every registered env


def test_every_task_has_a_registered_env() -> None:
    assert ENV_IDS  # guards the parametrised tests below against silently running on nothing
    assert ALL_ENV_IDS == sorted(env_id(TASKS.get(name)) for name in TASKS.names())


@pytest.mark.parametrize("env_name", ENV_IDS)
def test_check_env(env_name: str) -> None:
    env = gymnasium.make(env_name)
    try:
        check_env(env.unwrapped)
    finally:
        env.close()


@pytest.mark.parametrize("env_name", ENV_IDS)
@pytest.mark.parametrize("tools", [None, ()], ids=["default-tools", "tools-off"])
def test_oracle_episode_earns_full_reward(env_name: str, tools: tuple | None) -> None:
    env = _make(env_name, tools=tools)
    try:
        obs, info = env.reset(seed=0)
        sample, task, protocol = env.unwrapped.sample, env.unwrapped.task, env.unwrapped.protocol
        solution = task.solution(sample, env.unwrapped.tools_enabled)
        for name, arguments in solution.tool_calls:
            obs, reward, terminated, truncated, info = env.step(protocol.format_tool_call(name, arguments))
            assert all(r["ok"] for r in info["tool_calls"]), info["tool_calls"]
            assert (reward, terminated, truncated) == (0.0, False, False)
            _assert_obs_valid(env, obs)
        obs, reward, terminated, truncated, info = env.step(protocol.format_answer(solution.answer))
        used_tool = float(bool(solution.tool_calls))
        # Default weights: 0.9 * accuracy + 0.1 * format = 0.9 + 0.1 = 1.0 (the tool part has weight 0).
        assert reward == pytest.approx(1.0)
        assert (terminated, truncated) == (True, False)
        assert info["reward_parts"] == {"accuracy": 1.0, "format": 1.0, "tool": used_tool, "total": reward}
        assert info["answer"] == solution.answer
        assert env.observation_space.contains(obs)
    finally:
        env.close()


# ---------------------------------------------------------------- reset


def test_reset_same_seed_same_sample(env: gymnasium.Env) -> None:
    obs_a, info_a = env.reset(seed=123)
    obs_b, info_b = env.reset(seed=123)
    assert info_a["sample_id"] == info_b["sample_id"]
    assert obs_a["text"] == obs_b["text"]
    assert len(obs_a["images"]) == len(obs_b["images"]) == 1
    assert np.array_equal(obs_a["images"][0], obs_b["images"][0])


def test_reset_different_seed_different_sample(env: gymnasium.Env) -> None:
    obs_a, info_a = env.reset(seed=123)
    obs_b, info_b = env.reset(seed=124)
    assert info_a["sample_id"] != info_b["sample_id"]
    assert not np.array_equal(obs_a["images"][0], obs_b["images"][0])


def test_reset_options_pick_the_sample(env: gymnasium.Env) -> None:
    obs, info = env.reset(seed=1, options={"split": "val", "index": 7})
    assert info["sample_id"] == "visual_search/val/0/7"  # task/split/data_seed/index
    expected = env.unwrapped.task.sample("val", 7, 0)
    assert np.array_equal(obs["images"][0], fit_to_budget(expected.images[0], 224 * 224))
    assert expected.question in obs["text"]
    # The seed does not matter once the index is given.
    _, info_other = env.reset(seed=2, options={"split": "val", "index": 7})
    assert info_other["sample_id"] == info["sample_id"]


def test_data_seed_and_default_split_come_from_the_config() -> None:
    env = _make(data_seed=3, split="test")
    try:
        _, info = env.reset(options={"index": 4})
        assert info["sample_id"] == "visual_search/test/3/4"
    finally:
        env.close()


def test_reset_observation_and_info(env: gymnasium.Env) -> None:
    obs, info = env.reset(seed=0)
    _assert_obs_valid(env, obs)
    assert obs["images"][0].shape == (224, 224, 3)  # 1344^2 shrunk to the 224^2 budget
    assert "<tools>" in obs["text"] and '"name":"crop"' in obs["text"]
    assert "[image 0: 1344x1344]" in obs["text"]  # tools need full-resolution coordinates
    assert [m["role"] for m in info["messages"]] == ["system", "user"]
    assert {"type": "image"} in info["messages"][1]["content"]
    assert (info["num_turns"], info["format_errors"], info["tool_calls"]) == (0, 0, [])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"split": "dev"}, InvalidConfigError, "split must be one of"),
        ({"max_turns": 0}, InvalidConfigError, "need max_turns >= 1"),
        ({"max_pixels": 100}, InvalidConfigError, "max_pixels >= 784"),
        ({"tools": ("crpo",)}, UnknownNameError, "Did you mean 'crop'"),
        ({"reward": {"format_weight": 0.9, "tool_weight": 0.2}}, InvalidConfigError, "format_weight"),
    ],
)
def test_invalid_env_config(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        VisualToolEnv("visual_search", **kwargs)


# ---------------------------------------------------------------- episodes


def test_crop_then_answer(env: gymnasium.Env) -> None:
    env.reset(seed=0)
    region = _region(env)
    obs, reward, terminated, truncated, info = env.step(_crop(env, region))
    assert (reward, terminated, truncated) == (0.0, False, False)
    (record,) = info["tool_calls"]
    assert record["ok"] and record["error"] is None and record["image_indices"] == [1]
    assert record["name"] == "crop" and record["arguments"] == {"box": region} and record["turn"] == 1
    # The square region crop (w x h at full resolution, w == h) is zoomed to fill the 224x224 budget.
    w, h = region[2] - region[0], region[3] - region[1]
    assert w == h and obs["images"][0].shape == (224, 224, 3)
    assert f"[image 1: {w}x{h}]" in obs["text"] and obs["text"].startswith("<tool_response>")
    _assert_obs_valid(env, obs)
    obs, reward, terminated, truncated, info = env.step(_answer(env, env.unwrapped.sample.answer))
    assert (reward, terminated, truncated) == (pytest.approx(1.0), True, False)
    assert info["reward_parts"]["tool"] == 1.0


def test_tool_weight_is_paid_only_with_a_correct_answer() -> None:
    env = _make(reward={"format_weight": 0.1, "tool_weight": 0.2})
    try:
        env.reset(seed=0)
        wrong = next(p for p in PATTERNS if p != env.unwrapped.sample.answer)
        env.step(_crop(env, _region(env)))
        _, reward, *_, info = env.step(_answer(env, wrong))
        # accuracy 0: 0.7 * 0 + 0.1 * format + 0.2 * tool * [0 > 0] = 0.1
        assert reward == pytest.approx(0.1)
        assert info["reward_parts"]["tool"] == 1.0  # the crop did succeed; it is just not paid
        env.reset(seed=0)
        _, reward, *_, info = env.step(_answer(env, env.unwrapped.sample.answer))
        # correct but no tool: 0.7 * 1 + 0.1 * 1 + 0.2 * 0 = 0.8
        assert reward == pytest.approx(0.8)
        assert info["reward_parts"] == {
            "accuracy": 1.0,
            "format": 1.0,
            "tool": 0.0,
            "total": pytest.approx(0.8),
        }
    finally:
        env.close()


def test_format_error_costs_the_format_part(env: gymnasium.Env) -> None:
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("I think it is red.")  # no tags at all
    assert obs["text"].startswith("Error: No tool call or answer found.")
    assert (reward, terminated, truncated, info["format_errors"]) == (0.0, False, False, 1)
    _, reward, terminated, _, info = env.step(_answer(env, env.unwrapped.sample.answer))
    # 0.9 * accuracy 1 + 0.1 * format 0 = 0.9
    assert terminated and reward == pytest.approx(0.9)
    assert info["reward_parts"]["format"] == 0.0


def test_tools_off() -> None:
    env = _make(tools=())
    try:
        obs, _ = env.reset(seed=0)
        assert "<tools>" not in obs["text"] and "<tool_call>" not in obs["text"]
        assert "[image 0:" not in obs["text"]
        obs, reward, terminated, truncated, info = env.step(_crop(env, [0, 0, 112, 112]))
        assert "Unknown tool 'crop'. Available tools: none (answer directly)." in obs["text"]
        assert obs["images"] == ()
        (record,) = info["tool_calls"]
        assert not record["ok"] and "Unknown tool 'crop'" in record["error"]
        assert (reward, terminated, truncated) == (0.0, False, False)
    finally:
        env.close()


@pytest.mark.parametrize(
    "action, message",
    [
        (
            '<tool_call>{"name": "zoom", "arguments": {"box": [0, 0, 9, 9]}}</tool_call>',
            "Unknown tool 'zoom'. Available tools: ['crop'].",
        ),
        (
            '<tool_call>{"name": "crop", "arguments": {"box": [2000, 2000, 2100, 2100]}}</tool_call>',
            "box [2000, 2000, 2100, 2100] lies outside the image; the image is 1344x1344",
        ),
        (
            '<tool_call>{"name": "crop", "arguments": {"box": [50, 50, 10, 10]}}</tool_call>',
            "box [50, 50, 10, 10] is empty or inverted: need x1 < x2 and y1 < y2",
        ),
        (
            '<tool_call>{"name": "crop", "arguments": {"box": [0, 0, 10, 10], "image_index": 3}}</tool_call>',
            "image_index 3 does not exist; valid indices are 0..0",
        ),
        (
            '<tool_call>{"name": "crop", "arguments": {"bbox": [0, 0, 10, 10]}}</tool_call>',
            "crop: unknown argument(s) ['bbox']",
        ),
        (  # a 1-px-high strip: a vision processor would reject it (Qwen2-VL refuses ratios above 200)
            '<tool_call>{"name": "crop", "arguments": {"box": [0, 0, 340, 1]}}</tool_call>',
            "crop returned a 340x1 image, more elongated than 100:1",
        ),
    ],
    ids=["wrong-tool", "outside", "inverted", "bad-index", "bad-arg", "too-thin"],
)
def test_bad_tool_calls_become_error_observations(env: gymnasium.Env, action: str, message: str) -> None:
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(action)
    assert obs["text"].startswith("<tool_response>Error: ") and message in obs["text"]
    assert obs["images"] == ()
    (record,) = info["tool_calls"]
    assert record["ok"] is False and message in record["error"] and record["image_indices"] == []
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["format_errors"] == 0  # a well-formed call that fails is not a format error


def test_malformed_call_is_a_format_error_observation(env: gymnasium.Env) -> None:
    env.reset(seed=0)
    obs, _, terminated, truncated, info = env.step("<tool_call>{not json}</tool_call>")
    assert obs["text"].startswith("Error: Tool call is not valid JSON")
    assert info["tool_calls"] == [] and info["format_errors"] == 1
    assert not terminated and not truncated


def test_max_turns_truncates() -> None:
    env = _make(max_turns=2)
    try:
        env.reset(seed=0)
        _, reward, terminated, truncated, info = env.step(_crop(env, _region(env)))
        assert (reward, terminated, truncated) == (0.0, False, False)
        _, reward, terminated, truncated, info = env.step(_crop(env, _region(env)))
        assert (terminated, truncated) == (False, True)
        # No answer: accuracy 0 and format 0; a tool succeeded but the tool weight is 0 -> total 0.
        assert info["reward_parts"] == {"accuracy": 0.0, "format": 0.0, "tool": 1.0, "total": 0.0}
        assert reward == 0.0 and info["answer"] is None
        with pytest.raises(
            RuntimeError, match=r"step\(\) called on a finished episode; call reset\(\) first"
        ):
            env.step(_answer(env, "red"))
    finally:
        env.close()


def test_step_after_answer_raises(env: gymnasium.Env) -> None:
    env.reset(seed=0)
    env.step(_answer(env, "red"))
    with pytest.raises(RuntimeError, match="finished episode"):
        env.step(_answer(env, "red"))


def test_step_before_reset_raises() -> None:
    env = VisualToolEnv("visual_search")
    with pytest.raises(RuntimeError, match="call reset"):
        env.step("<answer>red</answer>")


def test_non_text_action_raises(env: gymnasium.Env) -> None:
    env.reset(seed=0)
    with pytest.raises(TypeError, match="action must be a str, got int"):
        env.unwrapped.step(5)


def test_a_call_past_the_image_budget_is_an_error_and_the_episode_goes_on() -> None:
    env = _make(max_images=2)  # the scene is image 0, so one crop fits
    try:
        env.reset(seed=0)
        obs, _, _, truncated, info = env.step(_crop(env, _region(env)))
        assert not truncated and info["tool_calls"][0]["image_indices"] == [1]
        obs, reward, terminated, truncated, info = env.step(_crop(env, [0, 0, 50, 50], image_index=1))
        assert (terminated, truncated, reward) == (False, False, 0.0)
        assert "this call returns 1 image but all of the episode's 2 images are used" in obs["text"]
        assert obs["images"] == ()
        (record,) = info["tool_calls"]
        assert record["ok"] is False and record["error"] == IMAGE_BUDGET_ERROR
        assert record["image_indices"] == []
        # the model can still answer from what it saw, and is scored as usual
        obs, reward, terminated, truncated, info = env.step(_answer(env, env.unwrapped.sample.answer))
        assert (terminated, truncated) == (True, False) and info["reward_parts"]["accuracy"] == 1.0
    finally:
        env.close()


def test_the_budget_error_says_how_many_images_remain() -> None:
    env = _make("vgym/VideoGrounding-v0", tools=("sample_frames",), max_images=10)
    try:
        env.reset(seed=0)  # 4 overview frames
        call = env.unwrapped.protocol.format_tool_call("sample_frames", {"start_s": 0.0, "end_s": 1.0})
        obs, _, _, truncated, info = env.step(call)
        assert info["tool_calls"][0]["error"] == IMAGE_BUDGET_ERROR and not truncated
        assert "this call returns 8 images but only 6 of the episode's 10 images remain" in obs["text"]
        call = env.unwrapped.protocol.format_tool_call(
            "sample_frames", {"start_s": 0.0, "end_s": 1.0, "num_frames": 6}
        )
        obs, _, _, _, info = env.step(call)  # the model asks for fewer, and gets them
        assert info["tool_calls"][0]["ok"] and len(obs["images"]) == 6
    finally:
        env.close()


def test_max_turns_still_ends_an_episode_of_budget_errors() -> None:
    env = _make(max_images=1, max_turns=3)
    try:
        env.reset(seed=0)
        for turn in range(3):
            obs, reward, terminated, truncated, info = env.step(_crop(env, _region(env)))
            assert info["tool_calls"][0]["error"] == IMAGE_BUDGET_ERROR
            assert truncated == (turn == 2) and not terminated
        assert reward == 0.0 and info["answer"] is None
    finally:
        env.close()


def test_the_default_budget_fits_a_video_record_and_two_sample_frames_calls() -> None:
    env = _make("vgym/VideoGrounding-v0", tools=("sample_frames", "get_frame"))
    try:
        obs, _ = env.reset(seed=0)
        assert len(obs["images"]) == 4  # the overview frames
        call = env.unwrapped.protocol.format_tool_call("sample_frames", {"start_s": 0.0, "end_s": 1.0})
        for expected_first in (4, 12):
            obs, _, terminated, truncated, info = env.step(call)
            (record,) = info["tool_calls"]
            assert record["ok"], record["error"]
            assert record["image_indices"] == list(range(expected_first, expected_first + 8))
            assert len(obs["images"]) == 8 and not (terminated or truncated)
        obs, _, _, truncated, info = env.step(call)  # a third would be images 21..28
        assert info["tool_calls"][0]["error"] == IMAGE_BUDGET_ERROR and not truncated
        assert "this call returns 8 images but all of the episode's 20 images are used" in obs["text"]
    finally:
        env.close()


@pytest.mark.parametrize("max_pixels", [28 * 28, 100 * 60, 224 * 224, 1400 * 1400])
def test_every_observation_fits_the_budget(max_pixels: int) -> None:
    env = _make(max_pixels=max_pixels, max_turns=6)
    try:
        obs, _ = env.reset(seed=0)
        _assert_obs_valid(env, obs)
        x1, y1, x2, y2 = _region(env)
        # The oracle region, two full-length strips as thin as MAX_ASPECT_RATIO allows (1344 / 14 = 96), a
        # crop of a
        # crop and a single pixel.
        boxes = [([x1, y1, x2, y2], 0), ([0, 0, 1344, 14], 0), ([0, 0, 14, 1344], 0), ([0, 0, 10, 10], 1)]
        boxes.append(([0, 0, 1, 1], 0))
        for box, index in boxes:
            obs, _, terminated, truncated, info = env.step(_crop(env, box, image_index=index))
            assert info["tool_calls"][0]["ok"], info["tool_calls"][0]["error"]
            assert len(obs["images"]) == 1
            _assert_obs_valid(env, obs)
            assert not (terminated or truncated)
    finally:
        env.close()
