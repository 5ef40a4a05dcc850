"""Batched multi-turn rollout with append-only token sequences: lockstep or asynchronous, local or on Ray.

Contents: :class:`EpisodeSpec`, :class:`RolloutConfig`, :func:`rollout`.

Sequences are built by :class:`~vgym.rollout.chat.ChatEncoder`: the prompt templated once, then each env
message appended as a template delta, so earlier tokens never change and the loss mask marks exactly the
policy's tokens. Env work (tools and the encoding of env messages) runs in a pool of slots
(:mod:`vgym.rollout.workers`); the policy runs in the caller's process on batches of episodes that are ready
for their next turn. Without an encoder (policies that take text, such as the oracle or a served model) the
same loop plays the episodes and keeps the chat and the shown images; trajectories then carry no tokens.
Training and evaluation both play their episodes here.
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

from vgym.env import VisualToolEnv
from vgym.policies.base import Policy, PolicyInput, reads_ground_truth
from vgym.rollout.chat import ChatEncoder, Encoded, text_message
from vgym.rollout.trajectory import POLICY_ERROR, SAMPLE_ERROR, Trajectory
from vgym.rollout.workers import EnvPool, EpisodeStart, Step, make_pool

__all__ = ["EpisodeSpec", "RolloutConfig", "rollout"]

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
class RolloutConfig:
    """How :func:`rollout` schedules its episodes and where their env work runs."""

    batch_size: int = 16
    """Episodes in flight, i.e. the most the policy sees in one call."""
    mode: str = "lockstep"
    """``"lockstep"``: every in-flight episode plays turn t, then all play turn t + 1, and a new batch starts
    when the whole batch ended; ``"async"``: continuous batching — the policy is called with the episodes
    whose env work is done while the others' tools still run, and a finished episode's slot takes the next
    spec at once. Content is the same for a deterministic policy; only the order of calls differs."""
    parallel: str = "local"
    """Where env work runs: ``"local"`` (this process) or ``"ray"`` (Ray actors; see
    :mod:`vgym.rollout.workers`)."""
    num_workers: int = 2
    """``parallel="ray"``: env-worker actors."""
    address: str | None = None
    """``parallel="ray"``: the cluster to join (``"auto"``, ``"ray://host:10001"``); None starts a local
    Ray."""
    threads: int = 0
    """``parallel="local"``: run env work in this many threads (0: inline)."""
    max_context_tokens: int | None = None
    """Most tokens in an episode's whole sequence (prompt, turns, env messages); None = no cap. An episode
    over a cap is truncated before its next generation and flagged in ``Trajectory.truncated_reason``
    (over-long masking, DAPO arXiv:2503.14476). The env enforces turns and images (``EnvConfig.max_turns`` /
    ``max_images``)."""
    max_policy_tokens: int | None = None
    """Most tokens the policy may generate over all its turns; None = no cap (over-turn masking, Mini-o3
    arXiv:2509.07969)."""
    min_batch_fraction: float = 0.5
    """Async mode calls the policy once this fraction of the episodes in flight is ready for it (or when no
    env work is pending); 0 calls it as soon as one is ready."""

    def __post_init__(self) -> None:
        if self.mode not in ("lockstep", "async"):
            raise ValueError(f"mode must be 'lockstep' or 'async', got {self.mode!r}")
        if self.parallel not in ("local", "ray"):
            raise ValueError(
                f"parallel must be 'local' or 'ray', got {self.parallel!r} (pass an EnvPool as pool=)"
            )
        if self.batch_size < 1 or self.num_workers < 1 or self.threads < 0:
            raise ValueError(f"need batch_size >= 1, num_workers >= 1, threads >= 0; got {self.batch_size}, "
                             f"{self.num_workers}, {self.threads}")
        for name in ("max_context_tokens", "max_policy_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive int or None, got {value}")
        if not 0.0 <= self.min_batch_fraction <= 1.0:
            raise ValueError(f"min_batch_fraction must be in [0, 1], got {self.min_batch_fraction}")


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
        # the reset's facts (known even when its sample failed to load)
        self.start = EpisodeStart("", "", False)
        self.pending_text = ""
        self.policy_tokens = 0
        self.done = False
        self.result: dict[str, Any] = {}

    def append(
        self, chunk: Encoded | None, images: Sequence[np.ndarray], messages: list[dict[str, Any]]
    ) -> None:
        if chunk is not None:  # None: a rollout without an encoder keeps the chat and images only
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
            input_ids=torch.cat(self.ids) if self.ids else torch.zeros(0, dtype=torch.long),
            pixel_values=torch.cat(self.pixels) if self.pixels else None,
            image_grid_thw=torch.cat(self.grids) if self.grids else None,
            messages=list(self.messages),  # a snapshot: the episode keeps appending to its own list
            turn=len(self.turns),
            tools_enabled=self.start.tools_enabled,
            images=list(self.images),
            episode_id=self.start.sample_id,
            task_name=self.start.task_name,
            answer_choices=self.start.answer_choices,
            ground_truth=self.start.ground_truth,
            tool_schemas=self.start.tool_schemas,
        )

    def trajectory(self) -> Trajectory:
        r = self.result
        empty = torch.zeros(0, dtype=torch.long)  # an episode whose sample failed to load has no tokens
        return Trajectory(
            sample_id=self.start.sample_id,
            group_id=self.spec.group_id,
            task=self.start.task_name,
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
            question=r.get("question"),
            gold_answer=r.get("gold"),
        )


def rollout(
    env_fn: Callable[[], VisualToolEnv],
    policy: Policy,
    encoder: ChatEncoder | None,
    specs: Sequence[EpisodeSpec],
    config: RolloutConfig | None = None,
    *,
    on_episode: Callable[[Trajectory], None] | None = None,
    pool: EnvPool | None = None,
) -> list[Trajectory]:
    """Play one episode per spec with at most ``config.batch_size`` in flight.

    Args:
        env_fn: builds an env; called once per slot (``min(batch_size, len(specs))`` slots), envs are reused.
        policy: plays the turns. Only a policy whose ``reads_ground_truth`` is True gets the task's solution
            (:attr:`~vgym.policies.base.PolicyInput.ground_truth`); every other one sees what the model sees.
        encoder: templates and tokenises with the policy model's processor (copied to Ray workers); None for
            policies that take text (the oracle, a random baseline, a served model): the episodes then keep
            their chat and images but no tokens, and the token budgets do not apply.
        specs: the episodes to play.
        config: scheduling, parallelism and token budgets (:class:`RolloutConfig`; default: its defaults).
        on_episode: called with each finished trajectory (progress bars, streaming writes), in finishing
            order.
        pool: env slots the caller built and keeps (:class:`~vgym.rollout.workers.EnvPool`); overrides
            ``config.parallel`` and is not closed here.

    Returns:
        Trajectories in the order of ``specs``. With Ray, an episode whose worker died is re-run from its seed
            on a
        fresh worker: none is lost or returned twice. An episode whose sample cannot be loaded
        (:class:`~vgym.errors.MediaError`: its image or video file is missing, truncated, corrupt, too large)
        comes back as a trajectory without tokens, images or turns, with reward 0, ``truncated`` True and
        ``truncated_reason`` ``"sample_error: <the error, naming the file>"``, and a warning is logged on this
        module's logger; every other episode plays as if it were absent. Likewise an episode whose turn the
        policy could not play (:attr:`~vgym.policies.base.PolicyOutput.error`, e.g. a server's HTTP 400 on
        that request) ends there with reward 0, its turns so far, ``truncated`` True and ``truncated_reason``
        ``"policy_error: <the error>"``.

    Raises:
        ValueError: when a sequence's image placeholders disagree with its image grids.
        Exception: whatever else the env raises (a bug or a bad configuration, e.g. an unknown split),
            unchanged.
    """
    config = config or RolloutConfig()
    num_slots = min(config.batch_size, len(specs))
    if num_slots == 0:
        return []
    slots = pool or make_pool(config.parallel, env_fn, encoder, num_slots, num_workers=config.num_workers,
                              address=config.address, threads=config.threads)
    try:
        return _Scheduler(slots, policy, encoder, specs, config, on_episode).run()
    finally:
        clear = getattr(policy, "clear_cache", None)
        if callable(clear):  # e.g. HFPolicy's kept keys and values: no use after the episodes, and GPU memory
            clear()
        if pool is None:  # a pool the caller passed in is the caller's to close
            slots.close()


class _Scheduler:
    """Event loop of :func:`rollout`: starts episodes in free slots, waits on env futures, calls the
    policy."""

    def __init__(
        self,
        pool: EnvPool,
        policy: Policy,
        encoder: ChatEncoder | None,
        specs: Sequence[EpisodeSpec],
        config: RolloutConfig,
        on_episode: Callable[[Trajectory], None] | None,
    ) -> None:
        self.pool, self.policy, self.encoder, self.config = pool, policy, encoder, config
        self.mode, self.min_batch_fraction = config.mode, config.min_batch_fraction
        self.with_ground_truth = reads_ground_truth(policy)
        self.on_episode = on_episode
        self.queue: collections.deque[tuple[int, EpisodeSpec]] = collections.deque(enumerate(specs))
        self.results: list[Trajectory | None] = [None] * len(specs)
        self.episodes: dict[int, _Episode] = {}  # slot -> its episode
        self.epoch = [0] * pool.num_slots  # bumped when a slot's worker restarts: older futures are stale
        self.running: dict[cf.Future, tuple[int, int]] = {}  # future -> (slot, epoch)
        self.ready: list[int] = []  # slots waiting for the policy

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
            if (
                self.ready
                and not (lockstep and self.running)
                and (lockstep or len(self.ready) >= self._enough())
            ):
                self._generate()
        return [t for t in self.results if t is not None]

    def _enough(self) -> int:
        """Async mode: how many ready episodes make a policy call worth it now. Half of those in flight (at
        least one), or every ready one when no env work is pending: batched generation costs about as much for
        eight sequences as for one, so calling per episode would multiply generation time instead of hiding
        tool time."""
        if not self.running:
            return 1
        return max(1, math.ceil(self.min_batch_fraction * (len(self.ready) + len(self.running))))

    def _start(self, slot: int) -> None:
        if not self.queue:
            return
        position, spec = self.queue.popleft()
        self.episodes[slot] = _Episode(position, spec)
        self._track(self.pool.reset(slot, spec.split, spec.index, spec.seed, self.with_ground_truth), slot)

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
        if step.start is not None:  # a reset
            ep.start = step.start
        # the sample's media could not be loaded: this episode fails, the rest go on
        if step.error is not None:
            logger.warning(
                "episode %d (split %r, index %d) ends with reward 0: its sample could not be loaded: %s",
                ep.position,
                ep.spec.split,
                ep.spec.index,
                step.error,
            )
            self._finish(
                slot, {"reward": 0.0, "truncated": True, "truncated_reason": f"{SAMPLE_ERROR}: {step.error}"}
            )
            return
        if step.start is None:
            ep.turns.append({"text": ep.pending_text, "observation": step.observation,
                             "tool_calls": step.info["tool_calls"]})
        if step.terminated or step.truncated:
            self._finish(slot, {"reward": step.reward, "reward_parts": step.info.get("reward_parts", {}),
                                "answer": step.info.get("answer"), "terminated": step.terminated,
                                "truncated": step.truncated,
                                "truncated_reason": "max_turns" if step.truncated else None,
                                # the episode is over: its question and gold go to the record, no policy
                                "question": step.info.get("question"), "gold": step.info.get("gold")})
            return
        ep.append(step.chunk, step.images, step.messages)
        reason = self._over_budget(ep)
        if reason is not None:
            self._finish(slot, {"reward": 0.0, "truncated": True, "truncated_reason": reason})
            return
        if self.encoder is not None:
            self.encoder.check_image_tokens(ep.ids, ep.grids)
        self.ready.append(slot)

    def _over_budget(self, ep: _Episode) -> str | None:
        cfg = self.config
        if self.encoder is None:  # no tokens: the budgets are token counts
            return None
        if cfg.max_context_tokens is not None and ep.num_tokens > cfg.max_context_tokens:
            return "context_tokens"
        if cfg.max_policy_tokens is not None and ep.policy_tokens >= cfg.max_policy_tokens:
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
            if output.error is not None:  # e.g. the server refused this request: this episode fails
                logger.warning("episode %d (split %r, index %d) ends with reward 0: the policy could not "
                               "play turn %d: %s", ep.position, ep.spec.split, ep.spec.index, len(ep.turns),
                               output.error)
                self._finish(slot, {"reward": 0.0, "truncated": True,
                                    "truncated_reason": f"{POLICY_ERROR}: {output.error}"})
                continue
            if self.encoder is None:
                pass  # text only: the chat below is the whole record
            elif output.token_ids is None:
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
