"""Batched multi-turn rollout with append-only token sequences: lockstep or asynchronous, local or on Ray.

Contents: :class:`EpisodeSpec`, :class:`RolloutBudgets`, :func:`rollout` (and :class:`~vgym.chat.ChatEncoder`,
re-exported).

Sequences are built by :class:`~vgym.chat.ChatEncoder`: the prompt templated once, then each env message appended
as a template delta, so earlier tokens never change and the loss mask marks exactly the policy's tokens. Env work
(tools and the encoding of env messages) runs in a pool of slots (:mod:`vgym.workers`); the policy runs in the
caller's process on batches of episodes that are ready for their next turn.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vgym.chat import ChatEncoder, Encoded, text_message
from vgym.env import VisualToolEnv
from vgym.policies.base import Policy, PolicyInput
from vgym.trajectory import SAMPLE_ERROR, Trajectory
from vgym.workers import EnvPool, Step, make_pool

__all__ = ["EpisodeSpec", "ChatEncoder", "RolloutBudgets", "rollout"]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class EpisodeSpec:
    """Which sample to play: ``split``/``index`` pick it, ``group_id`` groups episodes of one sample."""

    split: str
    index: int
    group_id: int = 0
    seed: int = 0
    """Seeds the env's RNG for this episode (tool randomness)."""


@dataclass(frozen=True)
class RolloutBudgets:
    """Per-episode caps enforced by the rollout (the env enforces turns and images: ``EnvConfig.max_turns`` /
    ``max_images``). An episode over a cap is truncated before the next generation and flagged in
    ``Trajectory.truncated_reason`` so trainers can mask it (over-turn / over-long masking, Mini-o3
    arXiv:2509.07969, DAPO arXiv:2503.14476)."""

    max_context_tokens: int | None = None
    """Most tokens in the whole sequence (prompt, turns, env messages); None = no cap."""
    max_policy_tokens: int | None = None
    """Most tokens the policy may generate over all its turns; None = no cap."""

    def __post_init__(self) -> None:
        for name in ("max_context_tokens", "max_policy_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive int or None, got {value}")


class _Episode:
    """Mutable per-episode state during a rollout (lives in the driver; the env lives in a pool slot)."""

    def __init__(self, position: int, spec: EpisodeSpec) -> None:
        self.position = position
        self.spec = spec
        self.ids: list[torch.Tensor] = []
        self.mask: list[torch.Tensor] = []
        self.logprobs: list[torch.Tensor] = []
        self.pixels: list[torch.Tensor] = []
        self.grids: list[torch.Tensor] = []
        self.images: list[np.ndarray] = []
        self.messages: list[dict[str, Any]] = []
        self.turns: list[dict[str, Any]] = []
        self.sample: Any = None
        self.task: Any = None
        self.sample_id = ""  # the sample's id and task name (known even when its sample failed to load)
        self.task_name = ""
        self.tools_enabled = False
        self.pending_text = ""
        self.policy_tokens = 0
        self.done = False
        self.result: dict[str, Any] = {}

    def append(self, chunk: Encoded, images: Sequence[np.ndarray], messages: list[dict[str, Any]]) -> None:
        n = len(chunk.input_ids)
        self.ids.append(chunk.input_ids)
        self.mask.append(torch.zeros(n, dtype=torch.long))
        self.logprobs.append(torch.zeros(n))
        if chunk.pixel_values is not None:
            self.pixels.append(chunk.pixel_values)
            self.grids.append(chunk.image_grid_thw)  # type: ignore[arg-type]
        self.images.extend(images)
        self.messages.extend(messages)

    def append_policy(self, ids: list[int], logprobs: list[float] | None, trained: list[int]) -> None:
        self.ids.append(torch.tensor(ids, dtype=torch.long))
        self.mask.append(torch.tensor(trained, dtype=torch.long))
        lp = logprobs + [0.0] * (len(ids) - len(logprobs)) if logprobs is not None else [0.0] * len(ids)
        self.logprobs.append(torch.tensor(lp))
        self.policy_tokens += len(ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.ids)

    def policy_input(self) -> PolicyInput:
        return PolicyInput(
            input_ids=torch.cat(self.ids),
            pixel_values=torch.cat(self.pixels) if self.pixels else None,
            image_grid_thw=torch.cat(self.grids) if self.grids else None,
            messages=list(self.messages),  # a snapshot: the episode keeps appending to its own list
            sample=self.sample,
            turn=len(self.turns),
            tools_enabled=self.tools_enabled,
            task=self.task,
            images=list(self.images),
        )

    def trajectory(self) -> Trajectory:
        r = self.result
        empty = torch.zeros(0, dtype=torch.long)  # an episode whose sample failed to load has no tokens
        return Trajectory(
            sample_id=self.sample_id,
            group_id=self.spec.group_id,
            task=self.task_name,
            input_ids=torch.cat(self.ids) if self.ids else empty,
            loss_mask=torch.cat(self.mask) if self.mask else empty,
            logprobs=torch.cat(self.logprobs) if self.logprobs else torch.zeros(0),
            images=self.images,
            pixel_values=torch.cat(self.pixels) if self.pixels else None,
            image_grid_thw=torch.cat(self.grids) if self.grids else None,
            turns=self.turns,
            reward=float(r.get("reward", 0.0)),
            reward_parts=r.get("reward_parts", {}),
            answer=r.get("answer"),
            terminated=bool(r.get("terminated", False)),
            truncated=bool(r.get("truncated", False)),
            truncated_reason=r.get("truncated_reason"),
        )


def rollout(
    env_fn: Callable[[], VisualToolEnv],
    policy: Policy,
    encoder: ChatEncoder,
    specs: Sequence[EpisodeSpec],
    *,
    batch_size: int = 16,
    on_episode: Callable[[Trajectory], None] | None = None,
    mode: str = "lockstep",
    parallel: str | EnvPool = "local",
    num_workers: int = 2,
    address: str | None = None,
    threads: int = 0,
    budgets: RolloutBudgets | None = None,
    min_batch_fraction: float = 0.5,
) -> list[Trajectory]:
    """Play one episode per spec with at most ``batch_size`` in flight.

    Args:
        env_fn: builds an env; called once per slot (``min(batch_size, len(specs))`` slots), envs are reused.
        policy: plays the turns.
        encoder: templates and tokenises with the policy model's processor (copied to Ray workers).
        specs: the episodes to play.
        batch_size: episodes in flight, i.e. the most the policy sees in one call.
        on_episode: called with each finished trajectory (progress bars, streaming writes), in finishing order.
        mode: ``"lockstep"`` — every in-flight episode plays turn t, then all play turn t + 1, and a new batch
            starts when the whole batch ended; ``"async"`` — continuous batching: the policy is called with the
            episodes whose env work is done while the others' tools still run, and a finished episode's slot takes
            the next spec at once. Content is the same for a deterministic policy; only the order of calls differs.
        parallel: ``"local"``, ``"ray"`` or an :class:`~vgym.workers.EnvPool` (see :mod:`vgym.workers`).
        num_workers / address: Ray actors and the cluster to join (``parallel="ray"``).
        threads: for ``parallel="local"``, run env work in this many threads (0: inline).
        budgets: per-episode token caps (:class:`RolloutBudgets`).
        min_batch_fraction: async mode calls the policy once this fraction of the episodes in flight is ready for
            it (or when no env work is pending); 0 calls it as soon as one is ready.

    Returns:
        Trajectories in the order of ``specs``. With Ray, an episode whose worker died is re-run from its seed on a
        fresh worker: none is lost or returned twice. An episode whose sample cannot be loaded
        (:class:`~vgym.dataset_io.MediaError`: its image or video file is missing, truncated, corrupt, too large)
        comes back as a trajectory without tokens, images or turns, with reward 0, ``truncated`` True and
        ``truncated_reason`` ``"sample_error: <the error, naming the file>"``, and a warning is logged on this
        module's logger; every other episode plays as if it were absent.

    Raises:
        ValueError: for an unknown mode, or when a sequence's image placeholders disagree with its image grids.
        Exception: whatever else the env raises (a bug or a bad configuration, e.g. an unknown split), unchanged.
    """
    if mode not in ("lockstep", "async"):
        raise ValueError(f"mode must be 'lockstep' or 'async', got {mode!r}")
    budgets = budgets or RolloutBudgets()
    num_slots = min(batch_size, len(specs))
    if num_slots == 0:
        return []
    pool = make_pool(parallel, env_fn, encoder, num_slots, num_workers=num_workers, address=address, threads=threads)
    try:
        return _Scheduler(pool, policy, encoder, specs, mode, budgets, on_episode, min_batch_fraction).run()
    finally:
        clear = getattr(policy, "clear_cache", None)
        if callable(clear):  # e.g. HFPolicy's kept keys and values: no use after the episodes, and GPU memory
            clear()
        if isinstance(parallel, str):  # a pool the caller passed in is the caller's to close
            pool.close()


class _Scheduler:
    """Event loop of :func:`rollout`: starts episodes in free slots, waits on env futures, calls the policy."""

    def __init__(self, pool: EnvPool, policy: Policy, encoder: ChatEncoder, specs: Sequence[EpisodeSpec],
                 mode: str, budgets: RolloutBudgets, on_episode: Callable[[Trajectory], None] | None,
                 min_batch_fraction: float) -> None:
        self.pool, self.policy, self.encoder, self.mode, self.budgets = pool, policy, encoder, mode, budgets
        self.on_episode = on_episode
        self.queue: collections.deque[tuple[int, EpisodeSpec]] = collections.deque(enumerate(specs))
        self.results: list[Trajectory | None] = [None] * len(specs)
        self.episodes: dict[int, _Episode] = {}  # slot -> its episode
        self.epoch = [0] * pool.num_slots  # bumped when a slot's worker restarts: older futures are stale
        self.running: dict[cf.Future, tuple[int, int]] = {}  # future -> (slot, epoch)
        self.ready: list[int] = []  # slots waiting for the policy
        self.min_batch_fraction = min_batch_fraction

    def run(self) -> list[Trajectory]:
        for slot in range(self.pool.num_slots):
            self._start(slot)
        while self.running or self.ready:
            lockstep = self.mode == "lockstep"
            if self.running and (lockstep or len(self.ready) < self._enough()):
                cf.wait(list(self.running), return_when=cf.ALL_COMPLETED if lockstep else cf.FIRST_COMPLETED)
            for future in [f for f in self.running if f.done()]:
                self._collect(future)
            if lockstep and not self.episodes:
                for slot in range(self.pool.num_slots):  # the batch ended: the next one starts
                    self._start(slot)
                continue
            if self.ready and not (lockstep and self.running) and (lockstep or len(self.ready) >= self._enough()):
                self._generate()
        return [t for t in self.results if t is not None]

    def _enough(self) -> int:
        """Async mode: how many ready episodes make a policy call worth it now. Half of those in flight (at least
        one), or every ready one when no env work is pending: batched generation costs about as much for eight
        sequences as for one, so calling per episode would multiply generation time instead of hiding tool time."""
        if not self.running:
            return 1
        return max(1, math.ceil(self.min_batch_fraction * (len(self.ready) + len(self.running))))

    def _start(self, slot: int) -> None:
        if not self.queue:
            return
        position, spec = self.queue.popleft()
        self.episodes[slot] = _Episode(position, spec)
        self._track(self.pool.reset(slot, spec.split, spec.index, spec.seed), slot)

    def _track(self, future: cf.Future, slot: int) -> None:
        self.running[future] = (slot, self.epoch[slot])

    def _collect(self, future: cf.Future) -> None:
        slot, epoch = self.running.pop(future)
        if epoch != self.epoch[slot]:
            return  # from a worker that was replaced; its episode is being re-run
        exc = future.exception()
        if exc is not None:
            if not self.pool.is_worker_failure(exc):
                raise exc
            self._recover(slot)
            return
        step: Step = future.result()
        ep = self.episodes[slot]
        if step.error is not None:  # the sample's media could not be loaded: this episode fails, the rest go on
            logger.warning("episode %d (split %r, index %d) ends with reward 0: its sample could not be loaded: %s",
                           ep.position, ep.spec.split, ep.spec.index, step.error)
            ep.sample_id, ep.task_name = step.sample_id or "", step.task.name if step.task is not None else ""
            self._finish(slot, {"reward": 0.0, "truncated": True, "truncated_reason": f"{SAMPLE_ERROR}: {step.error}"})
            return
        if step.sample is not None:  # a reset
            ep.sample, ep.task, ep.tools_enabled = step.sample, step.task, step.tools_enabled
            ep.sample_id, ep.task_name = step.sample.id, step.sample.task
        else:
            ep.turns.append({"text": ep.pending_text, "observation": step.observation,
                             "tool_calls": step.info["tool_calls"]})
        if step.terminated or step.truncated:
            self._finish(slot, {"reward": step.reward, "reward_parts": step.info.get("reward_parts", {}),
                                "answer": step.info.get("answer"), "terminated": step.terminated,
                                "truncated": step.truncated,
                                "truncated_reason": "turns_or_images" if step.truncated else None})
            return
        ep.append(step.chunk, step.images, step.messages)
        reason = self._over_budget(ep)
        if reason is not None:
            self._finish(slot, {"reward": 0.0, "truncated": True, "truncated_reason": reason})
            return
        self.encoder.check_image_tokens(ep.ids, ep.grids)
        self.ready.append(slot)

    def _over_budget(self, ep: _Episode) -> str | None:
        b = self.budgets
        if b.max_context_tokens is not None and ep.num_tokens > b.max_context_tokens:
            return "context_tokens"
        if b.max_policy_tokens is not None and ep.policy_tokens >= b.max_policy_tokens:
            return "policy_tokens"
        return None

    def _recover(self, slot: int) -> None:
        """A worker died: replace it and re-queue (at the front, in order) the episodes it hosted."""
        lost = self.pool.restart(slot)
        requeue = []
        for s in lost:
            self.epoch[s] += 1
            if s in self.ready:
                self.ready.remove(s)
            ep = self.episodes.pop(s, None)
            if ep is not None:
                requeue.append((ep.position, ep.spec))
        logger.warning("re-running %d episode(s) from their seeds", len(requeue))
        self.queue.extendleft(sorted(requeue, reverse=True))
        for s in lost:
            self._start(s)

    def _finish(self, slot: int, result: dict[str, Any]) -> None:
        ep = self.episodes.pop(slot)
        ep.result = result
        traj = ep.trajectory()
        self.results[ep.position] = traj
        if self.on_episode is not None:
            self.on_episode(traj)
        if self.mode == "async":
            self._start(slot)

    def _generate(self) -> None:
        slots, self.ready = self.ready, []
        outputs = self.policy.act([self.episodes[s].policy_input() for s in slots])
        for slot, output in zip(slots, outputs):
            ep = self.episodes[slot]
            if output.token_ids is None:
                ids = self.encoder.encode_policy_text(output.text)
                ep.append_policy(ids, None, [1] * len(ids))
            else:
                ids, trained = list(output.token_ids), [1] * len(output.token_ids)
                if not ids or ids[-1] != self.encoder.turn_end_id:  # cut at max_new_tokens: close the turn
                    ids, trained = ids + [self.encoder.turn_end_id], trained + [0]
                ep.append_policy(ids, output.logprobs, trained)
            ep.messages.append(text_message("assistant", output.text))
            ep.pending_text = output.text
            self._track(self.pool.step(slot, output.text), slot)
