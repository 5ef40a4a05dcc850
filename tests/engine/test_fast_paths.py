"""The fast-path gate: checked transformers versions and model families take the lean decoder, the direct
decode steps and the shared-prompt forward; anything else gets ``generate`` and says why, once."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from vgym.engine import fast_paths as fp
from vgym.env import VisualToolEnv
from vgym.policies.hf import GenerationConfig, HFPolicy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout


@pytest.fixture
def version(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Pretend another transformers version is installed; decisions are made afresh in each test."""
    fp._decide.cache_clear()

    def use(text: str) -> None:
        monkeypatch.setattr(fp, "installed_transformers", lambda: text)

    yield use
    fp._decide.cache_clear()


class _Model:
    def __init__(self, model_type: str) -> None:
        self.config = type("Config", (), {"model_type": model_type})()


@pytest.mark.parametrize("family", fp.FAMILIES)
def test_a_checked_version_and_family_take_every_fast_path(version: Any, family: str) -> None:
    for major, minor in fp.CHECKED_TRANSFORMERS:
        version(f"{major}.{minor}.3")
        assert fp.fast_paths(_Model(family)) == fp.FastPaths(True, True, True)


# 5.4 lies below, 5.26 and 6.0 above the checked releases: none of them ran the tests.
@pytest.mark.parametrize("text", ["5.4.0", "5.26.0", "6.0.0", "weird"])
def test_another_version_gets_generate_and_the_plain_forward(version: Any, text: str) -> None:
    version(text)
    paths = fp.fast_paths(_Model("qwen2_vl"))
    assert not (paths.decoder or paths.direct_steps or paths.shared_prompt)
    assert f"transformers {text} is not a version the fast paths were checked on (5.5–5.25)" in paths.reason


def test_the_lowest_supported_transformers_is_checked() -> None:
    """pyproject's lower bound on transformers (what CI's second venv installs) is a checked release, so the
    oldest version a user may have runs the fast paths the equivalence tests ran there."""
    import re
    from pathlib import Path

    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    low = re.search(r'"transformers>=(\d+)\.(\d+)[^"]*"', pyproject)
    assert low is not None and (int(low[1]), int(low[2])) in fp.CHECKED_TRANSFORMERS


def test_another_family_gets_generate(version: Any) -> None:
    version("5.25.0")
    paths = fp.fast_paths(_Model("llava"))
    assert not paths.decoder and "model family 'llava'" in paths.reason


def test_hf_policy_falls_back_to_generate_and_logs_once(
    version: Any, tiny: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an unchecked transformers the policy decodes with ``generate`` (the real one, counted), and the log
    names the version once however many turns it plays."""
    model, processor = tiny
    calls = []
    real = model.generate

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counted)
    specs = [EpisodeSpec("train", i, group_id=i, seed=i) for i in range(2)]
    policy = HFPolicy(model, processor, GenerationConfig(max_new_tokens=4, temperature=0.0))

    def play() -> None:
        rollout(lambda: VisualToolEnv("visual_search"), policy, ChatEncoder(processor), specs,
                RolloutConfig(batch_size=2))

    version("5.25.0")
    play()
    assert calls == []  # checked: the lean loop, generate untouched
    version("5.26.0")
    with caplog.at_level(logging.INFO, logger="vgym.engine.fast_paths"):
        play()
        play()
    assert len(calls) >= 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "transformers 5.26.0 is not a version" in warnings[0].getMessage()


def test_both_paths_give_the_same_greedy_tokens(version: Any, tiny: Any) -> None:
    """The fallback is the reference the fast paths were checked against: greedy turns agree."""
    model, processor = tiny
    specs = [EpisodeSpec("train", i, group_id=i, seed=i) for i in range(3)]
    outs = {}
    for text in ("5.25.0", "5.26.0"):
        version(text)
        policy = HFPolicy(model, processor, GenerationConfig(max_new_tokens=6, temperature=0.0))
        trajs = rollout(lambda: VisualToolEnv("visual_search"), policy, ChatEncoder(processor), specs,
                        RolloutConfig(batch_size=3))
        outs[text] = [t.input_ids for t in trajs]
    assert all(torch.equal(a, b) for a, b in zip(outs["5.25.0"], outs["5.26.0"]))
