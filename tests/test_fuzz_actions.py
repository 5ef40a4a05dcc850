"""Action fuzzing (issue 9): every registered env takes thousands of hostile and near-valid turns without
raising.

Two generators: the seeded grammar of ``benchmarks/fuzz_grammar.py`` with the checks of ``benchmarks/fuzz.py``
(imported from there, so the benchmark and this test share one grammar and one set of checks: no exception,
observation inside the space, bool flags, finite reward, UTF-8/JSON-writable observation and records, no tool
crash, every error naming its problem, every malformed turn rejected, and the oracle's episode replayed
exactly after fuzzing), over every registered env id (the five dataset loaders play
:mod:`vgym.data.sample_data`'s datasets, written once per module); and hypothesis over arbitrary JSON in
tool-call tags. Then one regression test per bug the fuzzing found.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vgym  # noqa: F401  (registers the envs)
from vgym.protocol import MAX_ARGUMENT_DEPTH, MAX_CALL_CHARS, HermesProtocol, _between
from vgym.task import TASKS, env_id
from vgym.tool_runtime import ToolRuntime, ToolRuntimeConfig
from vgym.tooling import TOOLS, ToolContext

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # benchmarks/ is a folder of scripts, importable from the repository root
    sys.path.insert(0, ROOT)

from benchmarks.fuzz import FuzzReport, Target, check_step, fuzz_target, fuzz_targets, oracle_reward  # noqa: E402
from benchmarks.fuzz_grammar import ActionGrammar, FuzzAction  # noqa: E402

_WITHOUT_DATA, _NEED_DATA = fuzz_targets(fast=True)
LABELS = [t.label for t in _WITHOUT_DATA] + [
    f"{eid}{kind}" for eid in sorted(_NEED_DATA) for kind in ("", " deep")
]
"""Every target's label, known at collection time; the dataset-backed envs' targets need the sample data."""


@pytest.fixture(scope="module")
def fuzz_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Target], dict[str, str]]:
    """``fuzz_targets(fast=True)`` with vgym.data.sample_data's datasets written once for this module: label
    -> target, and the skipped ids."""
    targets, skipped = fuzz_targets(fast=True, data_root=tmp_path_factory.mktemp("sample_data"))
    return {target.label: target for target in targets}, skipped


def _describe(report: FuzzReport) -> str:
    lines = [f"{category}: {report.problems[category]}" for category in report.problems]
    lines += [f"  {detail}" for details in report.samples.values() for detail in details]
    return "\n".join(lines + list(report.exceptions.values()))


def test_every_registered_env_is_fuzzed(fuzz_setup: tuple[dict[str, Target], dict[str, str]]) -> None:
    targets, skipped = fuzz_setup
    registered = {name for name in gymnasium.registry if name.startswith("vgym/")}
    fuzzed = {target.env_id for target in targets.values()}
    assert fuzzed == registered and skipped == {}  # nothing skipped: the loaders play the sample datasets
    assert sorted(targets) == sorted(LABELS)
    by_id = {env_id(TASKS.get(name)): TASKS.get(name) for name in TASKS.names()}
    assert set(_NEED_DATA) == {eid for eid in registered if not by_id[eid].procedural} - {"vgym/RealMini-v0"}
    assert {
        "vgym/VideoQa-v0",
        "vgym/VideoGrounding-v0",
        "vgym/MultiTool-v0",
        "vgym/RealMini-v0",
        "vgym/Vstar-v0",
        "vgym/Refcoco-v0",
        "vgym/CharadesSta-v0",
        "vgym/ChartqaDataset-v0",
        "vgym/VgymJsonl-v0",
    } <= fuzzed
    offered = {tool for target in targets.values() for tool in target.kwargs.get("tools", ())}
    assert offered == set(TOOLS.names())  # the deep targets offer every tool
    for eid in _NEED_DATA:  # the default target plays train where the sample has it, the deep one test
        assert targets[f"{eid} deep"].kwargs["split"] == "test"
        assert (
            targets[eid].kwargs["task_config"]["root"] == targets[f"{eid} deep"].kwargs["task_config"]["root"]
        )


@pytest.mark.parametrize("label", LABELS)
def test_grammar_fuzzing(fuzz_setup: tuple[dict[str, Target], dict[str, str]], label: str) -> None:
    # 150 turns per target (32 targets: 4,800 turns); 200 kB "huge" strings instead of the benchmark's 1 MB
    # (both
    # exceed MAX_CALL_CHARS; a 1 MB answer takes ~2 s to score) and 3 samples per target (video tasks render a
    # clip
    # per new sample; a split with fewer records wraps around). test_one_megabyte_strings covers 1 MB.
    report = fuzz_target(fuzz_setup[0][label], 150, seed=0, huge_chars=200_000, samples=3)
    assert report.actions == 150 and report.episodes > 10
    assert report.ok, _describe(report)
    assert report.rejected > 50  # most generated turns are malformed and the env said so


# ----------------------------------------------------------------------------------------------------
# hypothesis

_ARG_NAMES = sorted(
    {a for n in TOOLS.names() for a in TOOLS.get(n).schema["function"]["parameters"]["properties"]}
)
_scalars = (st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.sampled_from([10**400, -(2**64)])
            | st.floats() | st.text(max_size=12))


def _containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=3)


_json = st.recursive(_scalars, _containers, max_leaves=12)
_calls = st.builds(
    lambda name, arguments, ascii_only: "<tool_call>" + json.dumps({"name": name, "arguments": arguments},
                                                                   ensure_ascii=ascii_only) + "</tool_call>",
    st.sampled_from(TOOLS.names()) | st.sampled_from(["", "zoom", "Crop"]) | st.text(max_size=8),
    st.dictionaries(st.sampled_from(_ARG_NAMES) | st.text(max_size=6), _json, max_size=4),
    st.booleans(),
)
_FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    "{",
    "}",
    "[",
    '"name"',
    ":",
    "NaN",
    "1e999",
]
_turns = st.one_of(
    _calls,
    st.lists(_calls, min_size=2, max_size=4).map("\n".join),
    _calls.map(lambda call: f"<answer>4{call}</answer>"),
    st.text().map(lambda text: f"<answer>{text}</answer>"),
    st.text(),
    st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=3), max_size=12).map("".join),
)


@pytest.fixture(scope="module", params=["vgym/MultiTool-v0 deep", "vgym/Geometry-v0 deep"])
def deep_env(request: pytest.FixtureRequest) -> Iterator[tuple[gymnasium.Env, float]]:
    """A deep target's env (every tool offered; MultiTool has images and a video) and its fresh oracle
    reward."""
    target = next(t for t in _WITHOUT_DATA if t.label == request.param)
    fresh = gymnasium.make(target.env_id, **target.kwargs)
    reference = oracle_reward(fresh, 0, {"index": 0})
    fresh.close()
    env = gymnasium.make(target.env_id, **target.kwargs)
    yield env, reference
    env.close()


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(turns=st.lists(_turns, min_size=1, max_size=5))
def test_hypothesis_turns(deep_env: tuple[gymnasium.Env, float], turns: list[str]) -> None:
    env, reference = deep_env
    env.reset(seed=0, options={"index": 0})
    for text in turns:
        untagged = not any(tag in text for tag in ("<tool_call>", "</tool_call>", "<answer>"))
        action = FuzzAction(text, "hypothesis", must_fail=untagged, expect=("no tool call",))
        before = env.unwrapped._format_errors
        result = env.step(text)
        assert check_step(env, action, result, before) == []
        if result[2] or result[3]:
            break
    assert oracle_reward(env, 0, {"index": 0}) == reference  # still plays exactly as a fresh env


# ------------------------------------------------------------------------------------ regressions found by
# fuzzing


def test_grammar_draws_video_times_inside_a_dataset_clip(
    fuzz_setup: tuple[dict[str, Target], dict[str, str]],
) -> None:
    # Was: the grammar read "duration_s" from the top of the sample metadata (procedural video tasks); dataset
    # records keep it under "video", so it assumed 4 s and most "valid" times fell outside the 2 s sample
    # clip.
    target = fuzz_setup[0]["vgym/CharadesSta-v0"]  # default tools: sample_frames and get_frame
    env = gymnasium.make(target.env_id, **target.kwargs)
    try:
        env.reset(seed=0)
        grammar = ActionGrammar(np.random.default_rng(0), huge_chars=10)
        grammar.start_episode(env.unwrapped)
        calls = [grammar.valid_call(env.unwrapped) for _ in range(40)]
        times = [args[key] for _, args in calls for key in ("t_s", "start_s", "end_s") if key in args]
        duration = env.unwrapped.sample.metadata["video"]["duration_s"]
    finally:
        env.close()
    assert duration == 2.0 and len(times) > 20 and max(times) <= duration


@pytest.fixture
def search_env() -> Iterator[gymnasium.Env]:
    env = gymnasium.make("vgym/VisualSearch-v0", tools=("crop", "ground"))
    env.reset(seed=0, options={"index": 0})
    yield env
    env.close()


def test_arguments_nested_too_deep_are_a_format_error(search_env: gymnasium.Env) -> None:
    # Was: json parsed a 500-deep box, then ToolCallRecord.as_dict (dataclasses.asdict, two frames per level)
    # raised RecursionError out of env.step. Deeper than json's own limit was already an "invalid JSON" error.
    body = '{"name": "crop", "arguments": {"box": ' + "[" * 500 + "]" * 500 + "}}"
    obs, _, _, _, info = search_env.step(f"<tool_call>{body}</tool_call>")
    assert "nested too deep" in obs["text"] and info["tool_calls"] == [] and info["format_errors"] == 1


@pytest.mark.parametrize("depth, ok", [(MAX_ARGUMENT_DEPTH, True), (MAX_ARGUMENT_DEPTH + 1, False)])
def test_argument_depth_limit_boundary(depth: int, ok: bool) -> None:
    # The arguments object is level 1, so depth - 1 list levels inside it reach `depth`.
    value = json.loads("[" * (depth - 1) + "]" * (depth - 1))
    parsed = HermesProtocol().parse(HermesProtocol().format_tool_call("crop", {"box": value}))
    assert (parsed.errors == ()) == ok and len(parsed.tool_calls) == int(ok)


@pytest.mark.parametrize("extra, ok", [(0, True), (1, False)])
def test_call_length_limit_boundary(extra: int, ok: bool) -> None:
    head = '{"name": "ground", "arguments": {"query": "'
    body = head + "a" * (MAX_CALL_CHARS + extra - len(head) - 3) + '"}}'
    assert len(body) == MAX_CALL_CHARS + extra
    parsed = HermesProtocol().parse(f"<tool_call>{body}</tool_call>")
    assert len(parsed.tool_calls) == int(ok)
    assert ok or parsed.errors[0].startswith(f"Tool call is too long: {MAX_CALL_CHARS + 1} characters")


@settings(max_examples=300, derandomize=True)
@given(text=st.lists(st.sampled_from(["<tool_call>", "</tool_call>", "<answer>", "</answer>", "x", "<", "/"]),
                     max_size=16).map("".join))
def test_tag_scan_matches_the_regex(text: str) -> None:
    for start, end in (("<tool_call>", "</tool_call>"), ("<answer>", "</answer>")):
        assert _between(text, start, end) == re.findall(
            re.escape(start) + "(.*?)" + re.escape(end), text, re.DOTALL
        )


@pytest.mark.parametrize("tag", ["<tool_call>", "<answer>"])
def test_unclosed_tags_do_not_stall_the_parser(tag: str) -> None:
    # Was: the regex rescanned the rest of the turn from every unclosed tag (quadratic): 16,000 tags took 71
    # s,
    # so these 50,000 would take ~12 minutes; the linear scan takes milliseconds. A hang detector, not a
    # timing.
    result: list = []
    worker = threading.Thread(target=lambda: result.append(HermesProtocol().parse(tag * 50_000)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert result and result[0].errors, "parse() did not return within 60 s"


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, 10**400], ids=["nan", "inf", "-inf", "10**400"]
)
def test_non_finite_numbers_are_rejected_by_name(value: float) -> None:
    # Was: 10**400 reached sample_frames, whose math.isfinite raised OverflowError: "internal error" for the
    # model.
    env = gymnasium.make("vgym/VideoQa-v0")
    env.reset(seed=0, options={"index": 0})
    call = HermesProtocol().format_tool_call("sample_frames", {"start_s": value, "end_s": 1.0})
    obs, _, _, _, info = env.step(call)
    [record] = info["tool_calls"]
    assert "'start_s' must be a finite number" in obs["text"] and record["error"].startswith("sample_frames:")
    env.close()


def test_grabcut_on_a_flat_figure_finishes() -> None:
    # Was: a point on the white of this 512x512 geometry figure ran GrabCut's max-flow for 80 s (singular
    # colour
    # models on flat colours); dithered, ~1 s. Through the runtime, whose 30 s timeout would report it as an
    # error.
    task = TASKS.get("geometry")(None)
    sample = task.sample("train", 759873424, 0)
    runtime = ToolRuntime(ToolRuntimeConfig(backends={"segment": "grabcut"}, timeout_s=30.0))
    ctx = ToolContext(list(sample.images), sample.metadata, np.random.default_rng(0), 224 * 224)
    try:
        result, _ = runtime.call(TOOLS.get("segment"), ctx, {"point": [25.5, 360.1]})
    finally:
        runtime.close()
    assert result.text.startswith("segment of image 0 from point [25, 360]: mask area")


def test_one_megabyte_strings(search_env: gymnasium.Env) -> None:
    huge = "é" * (1 << 20)
    for text, expect in [
        (HermesProtocol().format_tool_call("ground", {"query": huge}), "too long"),
        (HermesProtocol().format_tool_call(huge, {}), "too long"),
        (huge, "No tool call or answer"),
    ]:
        obs, reward, terminated, truncated, _ = search_env.step(text)
        assert expect in obs["text"] and search_env.observation_space.contains(obs)
        assert len(obs["text"]) < 10_000  # the env quotes at most a snippet of the model's text
        if terminated or truncated:
            search_env.reset(seed=0, options={"index": 0})
    search_env.reset(seed=0, options={"index": 0})
    _, reward, terminated, _, info = search_env.step(f"<answer>{huge}</answer>")
    assert terminated and info["reward_parts"]["accuracy"] == 0.0
