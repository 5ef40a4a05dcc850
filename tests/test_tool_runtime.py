"""Tests of vgym/tool_runtime.py: backend selection, byte-identical cache replay, timeouts, crash
isolation."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import vgym  # noqa: F401  (registers crop)
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError, ToolError, UnknownNameError
from vgym.tool_runtime import ResourcePool, ToolCache, ToolRuntime, ToolRuntimeConfig
from vgym.tooling import TOOLS, Backend, Tool, ToolContext, ToolResult


def _echo(ctx: ToolContext, value: int = 0) -> ToolResult:
    """Echo a value and the loaded resource.

    Args:
        value: Any integer.
    """
    return ToolResult(
        text=f"{ctx.resource}:{value}", images=[np.full((2, 3, 3), value % 256, dtype=np.uint8)]
    )


def _sleepy(ctx: ToolContext, value: int = 0) -> ToolResult:
    time.sleep(value)
    return ToolResult(text="woke")


def _die(ctx: ToolContext, value: int = 0) -> ToolResult:
    os._exit(3)  # what an out-of-memory kill looks like from outside: the worker process vanishes


LOADS: list[dict] = []


def _load(options):  # type: ignore[no-untyped-def]
    LOADS.append(dict(options))
    return options.get("name", "unnamed")


ECHO = Tool(
    _echo, backends={"fast": Backend(_echo, loader=_load), "slow": Backend(_sleepy), "die": Backend(_die)}
)


def _ctx(seed: int = 0) -> ToolContext:
    image = np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    return ToolContext([image], {"k": 1}, np.random.default_rng(0), 224 * 224)


def test_default_backend_is_the_first_and_unknown_backends_are_listed() -> None:
    assert ECHO.default_backend == "fast"
    with pytest.raises(
        UnknownNameError, match="no backend 'fsat'. Did you mean 'fast'.*'die', 'fast', 'slow'"
    ):
        ECHO.backend("fsat")


def test_loader_runs_once_per_options() -> None:
    pool, before = ResourcePool(), len(LOADS)
    assert pool.get(ECHO, "fast", {"name": "a"}) == "a"
    assert pool.get(ECHO, "fast", {"name": "a"}) == "a"
    assert pool.get(ECHO, "fast", {"name": "b"}) == "b"
    assert len(LOADS) - before == 2  # "a" once, "b" once
    assert pool.get(ECHO, "slow", {}) is None  # no loader, nothing loaded


def test_cache_replay_is_a_hit_with_identical_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    crop = TOOLS.get("crop")
    runtime = ToolRuntime(ToolRuntimeConfig(cache_dir=str(tmp_path)))
    first, info1 = runtime.call(crop, _ctx(), {"box": [5, 6, 30, 20]})
    second, info2 = runtime.call(crop, _ctx(), {"box": [5, 6, 30, 20]})
    assert (info1.cache_hit, info2.cache_hit) == (False, True)
    assert second.text == first.text
    assert [im.tobytes() for im in second.images] == [im.tobytes() for im in first.images]
    assert second.images[0].dtype == np.uint8 and second.images[0].shape == (14, 25, 3)
    # Different arguments or different input pixels are misses.
    assert not runtime.call(crop, _ctx(), {"box": [5, 6, 30, 21]})[1].cache_hit
    assert not runtime.call(crop, _ctx(seed=1), {"box": [5, 6, 30, 20]})[1].cache_hit
    assert len(list(tmp_path.rglob("*.npz"))) == 3


def test_cache_key_depends_on_options_metadata_and_arrays() -> None:
    base = _ctx()
    key = ToolCache.key(ECHO, "fast", {"value": 1}, base)
    changed = [
        ToolContext(base.images, {"k": 2}, base.rng, base.max_pixels),
        ToolContext(
            base.images, base.metadata, base.rng, base.max_pixels, arrays={"depth": np.zeros((2, 2))}
        ),
        ToolContext(base.images, base.metadata, base.rng, base.max_pixels, options={"model": "/x"}),
    ]
    assert all(ToolCache.key(ECHO, "fast", {"value": 1}, c) != key for c in changed)
    assert ToolCache.key(ECHO, "slow", {"value": 1}, base) != key
    assert ToolCache.key(ECHO, "fast", {"value": 1}, _ctx()) == key  # equal inputs, equal key


def test_timeout_becomes_a_tool_error_and_the_next_call_works() -> None:
    runtime = ToolRuntime(ToolRuntimeConfig(backends={"_echo": "slow"}, timeout_s=0.2))
    start = time.perf_counter()
    with pytest.raises(ToolError, match="timed out after 0.2 s"):
        runtime.call(ECHO, _ctx(), {"value": 3})
    assert time.perf_counter() - start < 2.0  # did not wait for the 3 s sleep
    result, _ = runtime.call(ECHO, _ctx(), {"value": 0})
    assert result.text == "woke"
    runtime.close()
    runtime.close()  # twice is harmless


def test_invalid_arguments_fail_before_running() -> None:
    runtime = ToolRuntime()
    with pytest.raises(ToolError, match="argument 'value' must be a JSON integer"):
        runtime.call(ECHO, _ctx(), {"value": "3"})


@pytest.mark.parametrize(
    "config, message", [({"isolation": "docker"}, "isolation must be"), ({"timeout_s": 0}, "timeout_s")]
)
def test_invalid_config(config: dict, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        ToolRuntimeConfig(**config)


def test_subprocess_isolation_survives_a_dying_backend() -> None:
    runtime = ToolRuntime(ToolRuntimeConfig(isolation="subprocess", timeout_s=60, backends={"_echo": "die"}))
    with pytest.raises(ToolError, match="crashed its worker process"):
        runtime.call(ECHO, _ctx(), {"value": 1})
    crop = TOOLS.get("crop")  # the next call gets a fresh worker
    result, _ = runtime.call(crop, _ctx(), {"box": [0, 0, 10, 10]})
    assert result.images[0].shape == (10, 10, 3)
    assert np.array_equal(result.images[0], _ctx().images[0][:10, :10])
    runtime.close()


def test_env_records_backend_and_cache_hit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = VisualToolEnv("visual_search", tool_runtime={"cache_dir": str(tmp_path)})
    records = []
    for _ in range(2):
        env.reset(seed=0)
        region = env.sample.metadata["region"]  # type: ignore[union-attr]
        _, _, _, _, info = env.step(
            '<tool_call>{"name": "crop", "arguments": {"box": %s}}</tool_call>' % region
        )
        records.append(info["tool_calls"][0])
    assert [(r["backend"], r["cache_hit"], r["ok"]) for r in records] == [
        ("default", False, True),
        ("default", True, True),
    ]
    env.close()


def test_env_rejects_an_unknown_backend_at_construction() -> None:
    with pytest.raises(UnknownNameError, match="tool 'crop' has no backend 'gpu'"):
        VisualToolEnv("visual_search", tool_runtime={"backends": {"crop": "gpu"}})


def test_a_crashing_tool_becomes_an_error_observation() -> None:
    env = VisualToolEnv("visual_search")
    env.tools["_echo"] = Tool(_echo, backends={"boom": Backend(_boom)})  # this env instance only
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(
        '<tool_call>{"name": "_echo", "arguments": {}}</tool_call>'
    )
    assert "internal error in _echo: ZeroDivisionError" in obs["text"]
    assert info["tool_calls"][0]["ok"] is False and not terminated
    env.close()


def _boom(ctx: ToolContext, value: int = 0) -> ToolResult:
    return ToolResult(text=str(1 / 0))


def _refuse(ctx: ToolContext, value: int = 0) -> ToolResult:
    raise ToolError(f"value {value} is not allowed")


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_backend_tool_error_reaches_the_caller_unchanged(timeout: float | None) -> None:
    # Through the worker thread (timeout set) and inline (no timeout) alike.
    tool = Tool(_echo, backends={"refuse": Backend(_refuse)})
    runtime = ToolRuntime(ToolRuntimeConfig(timeout_s=timeout))
    with pytest.raises(ToolError, match="value 7 is not allowed"):
        runtime.call(tool, _ctx(), {"value": 7})
    runtime.close()


def _slow_load(options):  # type: ignore[no-untyped-def]
    time.sleep(1.0)  # a model load: longer than the call timeout below
    return "model"


@pytest.mark.parametrize("isolation", ["none", "subprocess"])
def test_worker_start_and_loading_do_not_count_against_the_call_timeout(isolation: str) -> None:
    # Before the fix, start-up (a fresh worker process's imports, ~3.5 s) and loading ran inside the call's
    # 0.5 s,
    # so every call timed out, killed its worker and the next call started over: no call could ever succeed.
    tool = Tool(_echo, backends={"slow_load": Backend(_echo, loader=_slow_load)})
    runtime = ToolRuntime(ToolRuntimeConfig(isolation=isolation, timeout_s=0.5))
    try:
        for value in (1, 2):
            result, _ = runtime.call(tool, _ctx(), {"value": value})
            assert result.text == f"model:{value}"
        assert runtime.counters["timeouts"] == 0 and runtime.counters["worker_starts"] == 1
    finally:
        runtime.close()


def _never_ready(options):  # type: ignore[no-untyped-def]
    time.sleep(30.0)


def test_a_worker_that_cannot_be_readied_is_a_tool_error() -> None:
    tool = Tool(_echo, backends={"stuck": Backend(_echo, loader=_never_ready)})
    runtime = ToolRuntime(ToolRuntimeConfig(isolation="subprocess", timeout_s=0.5, start_timeout_s=1.0))
    try:
        with pytest.raises(ToolError, match="_echo could not be readied within 1.0 s"):
            runtime.call(tool, _ctx(), {"value": 1})
        result, _ = runtime.call(ECHO, _ctx(), {"value": 3})  # another backend on a fresh worker
        assert result.text == "unnamed:3"
    finally:
        runtime.close()
