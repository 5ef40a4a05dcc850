"""The scripted oracle: exact play, seeded answer noise and the lazy teacher's skipped tool calls."""

from __future__ import annotations

import numpy as np
import pytest
from oracle_play import oracle_input

from vgym.env import VisualToolEnv
from vgym.policies.oracle import OraclePolicy


def _play(policy: OraclePolicy, index: int) -> tuple[list[str], float, str]:
    env = VisualToolEnv("visual_search", data_seed=0)
    obs, info = env.reset(seed=index, options={"split": "train", "index": index})
    texts, done, turn = [], False, 0
    while not done:
        item = oracle_input(env, turn, info["messages"])
        text = policy.act([item])[0].text
        texts.append(text)
        obs, reward, terminated, truncated, info = env.step(text)
        done, turn = terminated or truncated, turn + 1
    return texts, reward, env.sample.answer


def test_clean_oracle_crops_then_answers_right() -> None:
    for index in range(5):
        texts, reward, answer = _play(OraclePolicy(), index)
        assert len(texts) == 2 and "<tool_call>" in texts[0] and '"crop"' in texts[0]
        assert answer in texts[1] and reward == pytest.approx(1.0)


def test_skip_tools_answers_at_once_with_a_seeded_uniform_guess() -> None:
    policy = OraclePolicy(skip_tools=0.5, seed=3)
    runs = [_play(policy, index) for index in range(200)]
    skipped = [r for r in runs if len(r[0]) == 1]
    assert 70 <= len(skipped) <= 130  # Binomial(200, 0.5): outside this range with probability < 1e-4
    assert all("<answer>" in texts[0] and "<tool_call>" not in texts[0] for texts, _, _ in skipped)
    guesses = [texts[0].split("<answer>")[1].split("</answer>")[0].strip() for texts, _, _ in skipped]
    assert set(guesses) == {"horizontal", "vertical", "checkered"}
    hits = np.mean([answer == guess for (_, _, answer), guess in zip(skipped, guesses)])
    assert 0.15 < hits < 0.55  # a guess among 3 patterns, not the gold answer
    assert all(reward == pytest.approx(1.0) for texts, reward, _ in runs if len(texts) == 2)
    again = OraclePolicy(skip_tools=0.5, seed=3)
    assert [_play(again, index)[0] for index in range(20)] == [texts for texts, _, _ in runs[:20]]


def test_noise_and_skip_tools_are_validated() -> None:
    with pytest.raises(ValueError, match="skip_tools"):
        OraclePolicy(skip_tools=1.5)
    with pytest.raises(ValueError, match="noise"):
        OraclePolicy(noise=-0.1)
