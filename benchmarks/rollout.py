"""Rollout throughput, measured side by side in one run (ratios; nothing asserted — these machines are noisy).

Run: ``python benchmarks/rollout.py [--episodes 32]``. Goals (issue 6):

1. env + tool overhead with the tiny HF policy (goal ≤ 5 %), as wall / floor: the floor is the same policy
   generating the same tokens with no env — every ``policy.act`` call of the run replayed on its own, same
   batches, same sampling seeds, the replayed tokens checked equal to the run's. Unlike the time spent inside
   ``act`` during the run (the old denominator), the floor does not grow when env threads or Ray workers
   compete with generation for the cores;
2. Ray with 2 env workers vs local on env-bound work (the oracle policy, so generation costs nothing; every
   reset renders and encodes a new 10 s clip; goal ≥ 1.7× on 2 cores);
3. async vs lockstep when tool latency varies (tiny HF policy; every tool call also waits an exponentially
   distributed latency, mean 60 ms, as a remote tool server would; env work in threads; goal ≥ 1.5×).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from vgym.app.quickstart import tokenizer_corpus  # noqa: E402
from vgym.engine.tiny import build_tiny_vlm, load_vlm  # noqa: E402
from vgym.env import VisualToolEnv  # noqa: E402
from vgym.policies.base import PolicyInput, PolicyOutput, reads_ground_truth  # noqa: E402
from vgym.policies.hf import GenerationConfig, HFPolicy  # noqa: E402
from vgym.policies.oracle import OraclePolicy  # noqa: E402
from vgym.rollout.chat import ChatEncoder  # noqa: E402
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout  # noqa: E402


class Recorded:
    """Wraps a policy: adds up the wall time spent in ``act`` and keeps every call's batch and token ids, so
    :func:`replay_seconds` can generate them again without an env."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seconds = inner, 0.0
        self.calls: list[tuple[list[PolicyInput], list[list[int] | None]]] = []
        self.reads_ground_truth = reads_ground_truth(inner)

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        start = time.perf_counter()
        out = self.inner.act(batch)
        self.seconds += time.perf_counter() - start
        self.calls.append((list(batch), [o.token_ids for o in out]))
        return out

    def clear_cache(self) -> None:
        self.inner.clear_cache()


def replay_seconds(policy: HFPolicy, calls: list[tuple[list[PolicyInput], list[list[int] | None]]]) -> float:
    """Wall time of ``policy`` (fresh, seeded as the recorded run's) playing the recorded calls in order with
    no env; raises if any replayed turn differs from the recorded one (then it was not the same work)."""
    start = time.perf_counter()
    outs = [policy.act(batch) for batch, _ in calls]
    seconds = time.perf_counter() - start
    policy.clear_cache()
    differ = sum(o.token_ids != ids for out, (_, want) in zip(outs, calls) for o, ids in zip(out, want))
    if differ:
        raise RuntimeError(f"the replay generated other tokens in {differ} turns: not the run's work")
    return seconds


class SlowToolEnv(VisualToolEnv):
    """A visual-search env whose tool calls also wait a random latency (a remote tool server's)."""

    instances = itertools.count()

    def __init__(self, mean_s: float, **config: Any) -> None:
        super().__init__("visual_search", **config)
        self.mean_s = mean_s
        self.latency_rng = np.random.default_rng(next(self.instances))  # each env its own latency stream

    def step(self, action: str):  # type: ignore[no-untyped-def]
        if "<tool_call>" in action:
            time.sleep(float(self.latency_rng.exponential(self.mean_s)))
        return super().step(action)


class CropThenAnswer:
    """Crops the question's region on turn 0, answers on turn 1 — fixed text, generation done by ``inner``."""

    reads_ground_truth = True  # the oracle's text needs the solution

    def __init__(self, inner: Any) -> None:
        self.inner, self.oracle = inner, OraclePolicy()

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        # pay for real generation, keep the oracle's text so every episode uses the tool
        self.inner.act(batch)
        return self.oracle.act(batch)


def timed_rollout(env_fn: Any, policy: Any, encoder: ChatEncoder, specs: list[EpisodeSpec], pool: Any = None,
                  **config: Any) -> float:
    start = time.perf_counter()
    rollout(env_fn, policy, encoder, specs, RolloutConfig(**config), pool=pool)
    return time.perf_counter() - start


def _span(values: list[float]) -> str:
    """``"median (min-max)"`` of a few timings."""
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:.2f} ({ordered[0]:.2f}-{ordered[-1]:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each part-1 schedule (median shown)")
    args = parser.parse_args()
    specs = [EpisodeSpec("train", i, group_id=i, seed=i) for i in range(args.episodes)]
    with tempfile.TemporaryDirectory() as tmp:
        model, processor = load_vlm(
            build_tiny_vlm(f"{tmp}/vlm", corpus=tokenizer_corpus("visual_search", 0, n=40))
        )
    encoder = ChatEncoder(processor)
    hf = HFPolicy(model, processor, GenerationConfig(max_new_tokens=args.new_tokens, temperature=1.0), seed=0)

    try:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        from vgym.rollout.workers import RayEnvPool
    except ImportError:
        ray = None
        print("Ray is not installed (pip install 'vgym[ray]'): the Ray rows are skipped")

    # 1. overhead with the tiny HF policy
    search = functools.partial(VisualToolEnv, "visual_search")
    variants: list[tuple[str, dict[str, Any]]] = [("lockstep, inline", {}),
                                                  ("async, 4 env threads", {"mode": "async", "threads": 4})]
    if ray is not None:
        search_pool = RayEnvPool(search, encoder, 16, num_workers=2)
        timed_rollout(search, OraclePolicy(), encoder, specs[:4], batch_size=16, pool=search_pool)  # warm up
        variants.append(("async, 2 Ray env workers", {"mode": "async", "pool": search_pool}))
    config = GenerationConfig(max_new_tokens=args.new_tokens, temperature=1.0)
    lockstep_floor = 0.0  # the first schedule's: generation in the fullest batches, the common yardstick
    for label, kw in variants:
        walls, insides, floors = [], [], []
        for _ in range(args.repeats):
            policy = Recorded(HFPolicy(model, processor, config, seed=0))
            walls.append(timed_rollout(search, policy, encoder, specs, batch_size=16, **kw))
            insides.append(policy.seconds)
            floors.append(replay_seconds(HFPolicy(model, processor, config, seed=0), policy.calls))
        ratios = [w / f for w, f in zip(walls, floors)]
        lockstep_floor = lockstep_floor or sorted(floors)[len(floors) // 2]
        turns = sum(len(batch) for batch, _ in policy.calls)
        print(f"1. env+tool overhead, tiny HF policy, {label} ({args.episodes} episodes, {turns} turns, "
              f"{len(policy.calls)} act calls; {args.repeats} runs, median (min-max)): "
              f"wall {_span(walls)} s, "
              f"floor {_span(floors)} s (its act calls replayed, no env; in act during the run "
              f"{_span(insides)} s) -> wall / floor {_span(ratios)}, wall / lockstep floor "
              f"{_span([w / lockstep_floor for w in walls])} (goal <= 1.05)")

    # 2. Ray vs local on env-bound work
    clips = tempfile.mkdtemp(prefix="vgym-bench-clips-")  # cold: every reset renders and encodes a 10 s clip

    def env_bound(data_seed: int) -> Any:
        return functools.partial(VisualToolEnv, "video_grounding", data_seed=data_seed,
                                 task_config={"difficulty": 2, "clip_dir": clips})

    local = timed_rollout(env_bound(1), OraclePolicy(), encoder, specs, batch_size=8)
    if ray is not None:
        search_pool.close()
        pool = RayEnvPool(env_bound(2), encoder, 8, num_workers=2)  # another data seed: new clips, as cold
        timed_rollout(env_bound(2), OraclePolicy(), encoder, specs[-4:], batch_size=8, pool=pool)  # warm up
        distributed = (
            timed_rollout(
                env_bound(2), OraclePolicy(), encoder, specs[:-4], batch_size=8, pool=pool, mode="async"
            )
            * len(specs)
            / (len(specs) - 4)
        )
        pool.close()
        ray.shutdown()
        print(
            f"2. env-bound (video_grounding difficulty 2, cold clips, oracle): local {local:.2f} s, Ray 2 "
            "workers async "
            f"{distributed:.2f} s -> {local / distributed:.2f}x (goal >= 1.7x on 2 cores)"
        )

    # 3. async vs lockstep with variable tool latency
    for mean_s in (0.06, 0.3):
        slow = functools.partial(SlowToolEnv, mean_s)
        lock = timed_rollout(slow, CropThenAnswer(hf), encoder, specs, batch_size=8, threads=8)
        free = timed_rollout(slow, CropThenAnswer(hf), encoder, specs, batch_size=8, threads=8, mode="async")
        print(
            f"3. variable tool latency (exponential, mean {1000 * mean_s:.0f} ms), tiny HF policy: lockstep "
            f"{lock:.2f} s, async {free:.2f} s -> {lock / free:.2f}x (goal >= 1.5x)"
        )


if __name__ == "__main__":
    main()
