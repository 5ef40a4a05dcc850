"""Tests of vgym/env.py under stress: a fuzz test of ``step`` on model-like output (never raises, every
observation valid) and vectorised use (sync and async vector envs, group resets sharing one resize). The
contract and episodes: ``test_env.py``."""

from __future__ import annotations

import json
from collections.abc import Iterator

import gymnasium
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_env import VS, _assert_obs_valid, _make

from vgym.env import VisualToolEnv
from vgym.tasks.visual_search import PATTERNS

# ---------------------------------------------------------------- fuzz

_FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    "{",
    "}",
    '"name"',
    '"arguments"',
    '"crop"',
    ":",
]
_numbers = st.one_of(
    st.integers(-200, 1600), st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**30), 10**30)
)
_box_items = st.one_of(
    _numbers, st.text(max_size=3), st.booleans(), st.none(), st.lists(st.integers(), max_size=2)
)
_tool_calls = st.builds(
    lambda name, box, index, extra: (
        "<tool_call>"
        + json.dumps({"name": name, "arguments": {"box": box, "image_index": index, **extra}})
        + "</tool_call>"
    ),
    name=st.sampled_from(["crop", "crop", "crop", "zoom", ""]),
    box=st.one_of(
        st.lists(_numbers, min_size=4, max_size=4), st.lists(_box_items, max_size=6), st.text(max_size=8)
    ),
    index=st.one_of(st.integers(-2, 4), st.floats(), st.text(max_size=2), st.none()),
    extra=st.dictionaries(st.sampled_from(["scale", "ctx", "image"]), st.integers(), max_size=1),
)
_pairs = st.lists(st.integers(-50, 1400), min_size=2, max_size=2).map(sorted)
_plausible_calls = st.builds(  # mostly valid crops, some degenerate (x1 == x2) or off-image
    lambda xs, ys, index: "<tool_call>"
    + json.dumps({"name": "crop", "arguments": {"box": [xs[0], ys[0], xs[1], ys[1]], **index}})
    + "</tool_call>",
    xs=_pairs,
    ys=_pairs,
    index=st.sampled_from([{}, {}, {"image_index": 0}, {"image_index": 1}, {"image_index": 2}]),
)
_actions = st.one_of(
    st.text(),
    _plausible_calls,
    _plausible_calls,
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=4)), max_size=20).map("".join),
    _tool_calls,
    st.lists(_tool_calls, min_size=2, max_size=3).map("\n".join),
    st.sampled_from(list(PATTERNS)).map(lambda p: f"<answer>{p}</answer>"),
)


@pytest.fixture(scope="module")
def fuzz_env() -> Iterator[gymnasium.Env]:
    env = _make(max_images=3)
    yield env
    env.close()


@settings(max_examples=200, deadline=None)
@given(actions=st.lists(_actions, min_size=1, max_size=4))
def test_step_never_raises_on_model_output(fuzz_env: gymnasium.Env, actions: list[str]) -> None:
    env = fuzz_env
    obs, _ = env.reset(options={"index": 0})
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        _assert_obs_valid(env, obs)
        assert 0.0 <= reward <= 1.0
        assert not (terminated and truncated)
        assert all(isinstance(r["ok"], bool) for r in info["tool_calls"])
        assert all(r["ok"] == (r["error"] is None) for r in info["tool_calls"])
        if terminated or truncated:
            assert set(info["reward_parts"]) == {"accuracy", "format", "tool", "total"}
            assert info["reward_parts"]["total"] == reward
            break
        assert reward == 0.0


# ---------------------------------------------------------------- vectorised


@pytest.mark.parametrize(
    "mode, vector_kwargs", [("sync", {}), ("async", {"shared_memory": False})], ids=["sync", "async"]
)
def test_vector_env(mode: str, vector_kwargs: dict) -> None:
    envs = gymnasium.make_vec(VS, num_envs=2, vectorization_mode=mode, vector_kwargs=vector_kwargs)
    try:
        obs, info = envs.reset(seed=[0, 1])
        assert len(obs["text"]) == 2 and len(obs["images"]) == 2
        assert all(im[0].shape == (224, 224, 3) for im in obs["images"])
        assert info["sample_id"][0] != info["sample_id"][1]
        obs, reward, terminated, truncated, info = envs.step(["<answer>red</answer>", "no tags here"])
        assert terminated.tolist() == [True, False] and truncated.tolist() == [False, False]
        assert obs["text"][1].startswith("Error: No tool call or answer found.")
        assert 0.0 <= reward[0] <= 1.0 and reward[1] == 0.0
    finally:
        envs.close()


def test_group_resets_share_one_resize_and_get_their_own_arrays() -> None:
    """Envs reset to the same sample: the budget-fitted images are computed once (``SAMPLES.fitted`` returns
    the same read-only list), equal ``fit_to_budget`` of the sample's images, and every reset gets new,
    writable arrays."""
    from vgym.env import SAMPLES
    from vgym.tooling import fit_to_budget

    envs = [VisualToolEnv("visual_search", max_pixels=112 * 112) for _ in range(3)]
    shown = [env.reset(seed=0, options={"split": "train", "index": 5})[0]["images"] for env in envs]
    sample = envs[0].sample
    assert all(env.sample is sample for env in envs)
    cached = SAMPLES.fitted(sample, 112 * 112)
    assert SAMPLES.fitted(sample, 112 * 112) is cached and not cached[0].flags.writeable
    expected = fit_to_budget(sample.images[0], 112 * 112)
    for images in shown:
        assert np.array_equal(images[0], expected) and images[0].flags.writeable
        assert not any(np.shares_memory(images[0], other[0]) for other in shown if other is not images)
        assert not np.shares_memory(images[0], cached[0])
