"""Tests of vgym/workers.py and the rollout scheduler: lockstep vs async vs threads vs Ray give the same
episodes, continuous batching refills slots, a killed Ray worker loses and duplicates nothing, budgets
truncate and flag, and placeholder/grid mismatches are caught before generation."""

from __future__ import annotations

import ast
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from vgym.env import VisualToolEnv
from vgym.policies.base import PolicyInput, PolicyOutput
from vgym.policies.oracle import OraclePolicy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout
from vgym.rollout.trajectory import Trajectory
from vgym.rollout.workers import RayEnvPool

SPECS = [EpisodeSpec("train", i, group_id=i // 2, seed=i) for i in range(8)]  # groups of two share a group id


# 1-3 tool turns per episode, so episodes end at different turns. A partial of an importable class (not a
# function
# of this module) so Ray workers can unpickle it.
geometry_env = functools.partial(VisualToolEnv, "geometry")


def _content(trajs: Sequence[Trajectory]) -> list[tuple[Any, ...]]:
    return [(t.sample_id, t.group_id, t.input_ids.tolist(), t.loss_mask.tolist(), t.reward, t.answer,
             t.num_turns, t.pixel_values.sum().item() if t.pixel_values is not None else None) for t in trajs]


class BatchLog:
    """The oracle, recording each call's batch (sample id, turn)."""

    reads_ground_truth = True  # it plays the oracle's solution

    def __init__(self) -> None:
        self.oracle, self.calls = OraclePolicy(), []

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        self.calls.append([(item.episode_id, item.turn) for item in batch])
        return self.oracle.act(batch)


@pytest.fixture(scope="module")
def processor(tiny_dir):  # type: ignore[no-untyped-def]
    from vgym.engine.tiny import load_vlm

    return load_vlm(tiny_dir)[1]


@pytest.fixture(scope="module")
def reference(processor) -> list[Trajectory]:  # type: ignore[no-untyped-def]
    return rollout(geometry_env, OraclePolicy(), ChatEncoder(processor), SPECS, RolloutConfig(batch_size=4))


def test_reference_is_varied(reference: list[Trajectory]) -> None:
    assert [t.sample_id for t in reference] == [f"geometry/train/0/{i}" for i in range(8)]
    assert len({t.num_turns for t in reference}) > 1 and all(t.reward > 0.99 for t in reference)


@pytest.mark.parametrize("options", [{"mode": "async"}, {"threads": 2}, {"mode": "async", "threads": 2}],
                         ids=["async", "threads", "async-threads"])
def test_same_episodes_whatever_the_schedule(processor, reference, options) -> None:  # type: ignore[no-untyped-def]
    trajs = rollout(
        geometry_env, OraclePolicy(), ChatEncoder(processor), SPECS, RolloutConfig(batch_size=4, **options)
    )
    assert _content(trajs) == _content(reference)


def test_async_refills_a_finished_slot_at_once(processor) -> None:  # type: ignore[no-untyped-def]
    lock, free = BatchLog(), BatchLog()
    rollout(geometry_env, lock, ChatEncoder(processor), SPECS, RolloutConfig(batch_size=4))
    rollout(geometry_env, free, ChatEncoder(processor), SPECS, RolloutConfig(batch_size=4, mode="async"))
    # Lockstep: the second batch's first turn waits until every episode of the first batch ended.
    assert lock.calls[0] == [(f"geometry/train/0/{i}", 0) for i in range(4)]
    first_of_next = next(k for k, call in enumerate(lock.calls) if ("geometry/train/0/4", 0) in call)
    assert all(sid >= "geometry/train/0/4" for call in lock.calls[first_of_next:] for sid, _ in call)
    # Async: sample 4 starts while some of samples 0-3 are still playing, so some call mixes the two batches.
    assert any(
        {sid for sid, _ in call} & {f"geometry/train/0/{i}" for i in range(4)}
        and {sid for sid, _ in call} & {f"geometry/train/0/{i}" for i in range(4, 8)}
        for call in free.calls
    )
    assert sum(len(c) for c in free.calls) == sum(len(c) for c in lock.calls)  # the same turns, other batches


def test_context_budget_truncates_and_flags(processor, reference) -> None:  # type: ignore[no-untyped-def]
    # tokens before the first policy token
    prompt_tokens = min(int(t.loss_mask.nonzero()[0]) for t in reference)
    trajs = rollout(
        geometry_env,
        OraclePolicy(),
        ChatEncoder(processor),
        SPECS[:2],
        RolloutConfig(max_context_tokens=prompt_tokens - 1),
    )
    assert all(t.truncated and t.truncated_reason == "context_tokens" and t.num_turns == 0 for t in trajs)
    assert all(t.reward == 0.0 and t.loss_mask.sum() == 0 for t in trajs)
    # any first turn uses it up
    trajs = rollout(
        geometry_env, OraclePolicy(), ChatEncoder(processor), SPECS[:4], RolloutConfig(max_policy_tokens=1)
    )
    assert all(t.truncated_reason == "policy_tokens" and t.num_turns == 1 for t in trajs if t.num_turns < 2)
    assert all(t.num_turns == 1 for t in trajs)
    done = rollout(
        geometry_env,
        OraclePolicy(),
        ChatEncoder(processor),
        SPECS[:2],
        RolloutConfig(max_context_tokens=10**6, max_policy_tokens=10**6),
    )
    assert _content(done) == _content(reference[:2])  # generous budgets change nothing
    with pytest.raises(ValueError, match="max_policy_tokens must be a positive int"):
        RolloutConfig(max_policy_tokens=0)


def test_placeholder_mismatch_is_a_clear_error(processor) -> None:  # type: ignore[no-untyped-def]
    encoder = ChatEncoder(processor)
    ep = rollout(geometry_env, OraclePolicy(), encoder, SPECS[:1])[0]
    encoder.check_image_tokens([ep.input_ids], [ep.image_grid_thw])  # consistent: passes
    wrong = ep.image_grid_thw.clone()
    wrong[0, 1] += 2  # two more patch rows than the sequence has placeholders for
    with pytest.raises(ValueError, match=r"placeholders but its images need"):
        encoder.check_image_tokens([ep.input_ids], [wrong])


def test_mode_is_checked(processor) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="mode must be 'lockstep' or 'async'"):
        rollout(geometry_env, OraclePolicy(), ChatEncoder(processor), SPECS, RolloutConfig(mode="eager"))
    with pytest.raises(ValueError, match="parallel must be 'local' or 'ray'"):
        rollout(geometry_env, OraclePolicy(), ChatEncoder(processor), SPECS, RolloutConfig(parallel="dask"))


# ---------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_session():  # type: ignore[no-untyped-def]
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_same_episodes(ray_session, processor, reference) -> None:  # type: ignore[no-untyped-def]
    pool = RayEnvPool(geometry_env, ChatEncoder(processor), 4, num_workers=2)
    try:
        assert len(set(pool.worker_pids()) | {os.getpid()}) == 3  # two worker processes besides this one
        trajs = rollout(
            geometry_env,
            OraclePolicy(),
            ChatEncoder(processor),
            SPECS,
            RolloutConfig(batch_size=4, mode="async"),
            pool=pool,
        )
    finally:
        pool.close()
    assert _content(trajs) == _content(reference)


def test_a_killed_worker_loses_and_duplicates_nothing(ray_session, processor, reference) -> None:  # type: ignore[no-untyped-def]
    pool = RayEnvPool(geometry_env, ChatEncoder(processor), 4, num_workers=2)
    victim = pool.worker_pids()[0]
    finished: list[str] = []

    def kill_after_first(traj: Trajectory) -> None:
        finished.append(traj.sample_id)
        if len(finished) == 1:
            os.kill(victim, signal.SIGKILL)  # mid-rollout: worker 0 still hosts episodes in flight

    try:
        trajs = rollout(
            geometry_env,
            OraclePolicy(),
            ChatEncoder(processor),
            SPECS,
            RolloutConfig(batch_size=4, mode="async"),
            pool=pool,
            on_episode=kill_after_first,
        )
        assert victim not in pool.worker_pids()  # it was replaced
    finally:
        pool.close()
    assert _content(trajs) == _content(reference)  # every spec exactly once, in order, the same content
    # each reported once: nothing duplicated
    assert sorted(finished) == sorted(t.sample_id for t in reference)


class DepthThenAnswer:
    """Calls the depth tool on turn 0, answers on turn 1 (driver-side; never pickled)."""

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        call = '<tool_call>{"name": "depth", "arguments": {"points": [[10, 10]]}}</tool_call>'
        return [PolicyOutput(text=call if item.turn == 0 else "<answer>A</answer>") for item in batch]


def test_one_tool_server_serves_every_env_worker(ray_session, processor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessorPil

    from vgym.tool_runtime import tool_server_name
    from vgym.tooling import TOOLS

    # a tiny random DPT (ViT of 4 layers of width 16; real: 24 x 1024), saved as a checkpoint
    torch.manual_seed(0)
    config = DPTConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=16,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8] * 4,
        fusion_hidden_size=8,
    )
    DPTForDepthEstimation(config).save_pretrained(tmp_path / "dpt")
    DPTImageProcessorPil(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(
        tmp_path / "dpt"
    )
    options = {"model": str(tmp_path / "dpt")}
    env_fn = functools.partial(VisualToolEnv, "depth_3d", tools=("depth",), tool_runtime={
        "backends": {"depth": "hf"}, "options": {"depth": options}, "isolation": "ray"})
    name = tool_server_name(TOOLS.get("depth"), "hf", options)
    pool = RayEnvPool(env_fn, ChatEncoder(processor), 4, num_workers=2)
    try:
        workers = set(pool.worker_pids())
        trajs = rollout(
            env_fn,
            DepthThenAnswer(),
            ChatEncoder(processor),
            SPECS,
            RolloutConfig(batch_size=4, mode="async"),
            pool=pool,
        )
        stats = ray_session.get(ray_session.get_actor(name).stats.remote())
    finally:
        pool.close()
    calls = [c for t in trajs for turn in t.turns for c in turn["tool_calls"]]
    assert len(calls) == len(SPECS) and all(c["ok"] and c["backend"] == "hf" for c in calls)
    # one copy of the model served both env workers
    assert stats["calls"] == len(SPECS) and stats["loaded"] == 1
    assert stats["pid"] not in workers | {os.getpid()}
    # the server was owned by the env worker that asked first: it ends with the pool (it was detached, and
    # outlived every worker and the driver, holding its model)
    assert _gone(ray_session, name)


def _gone(ray, name: str, wait_s: float = 30.0) -> bool:
    """Whether no actor is named ``name`` in any namespace, waiting up to ``wait_s`` for a kill to land."""
    from ray.util import list_named_actors

    deadline = time.monotonic() + wait_s
    while any(a["name"] == name for a in list_named_actors(all_namespaces=True)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


_DRIVER = """
import sys
import ray
from vgym.env import VisualToolEnv
ray.init(address=sys.argv[1], log_to_driver=False)
env = VisualToolEnv("spatial_2d", tools=("crop",), tool_runtime={"isolation": "ray"})
env.reset(seed=0)
_, _, _, _, info = env.step('<tool_call>{"name": "crop", "arguments": {"box": [0, 0, 20, 20]}}</tool_call>')
assert info["tool_calls"][0]["ok"], info["tool_calls"]
from ray.util import list_named_actors
print(sorted(a["name"] for a in list_named_actors(all_namespaces=True) if a["name"].startswith("vgym-tool-")))
"""


def test_a_tool_server_ends_with_the_driver_that_started_it(ray_session) -> None:  # type: ignore[no-untyped-def]
    """Another driver on the same cluster (a finished ``vgym train`` job) leaves no tool server behind."""
    address = ray_session.get_runtime_context().gcs_address
    done = subprocess.run([sys.executable, "-c", _DRIVER, address], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (name,) = ast.literal_eval(done.stdout.strip().splitlines()[-1])  # it ran on a server of its own
    assert name.startswith("vgym-tool-crop-")
    assert _gone(ray_session, name)
