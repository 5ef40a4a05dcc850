"""Where env and tool work runs during a rollout: in the driver process, in threads, or in Ray actors.

Contents: :class:`EpisodeStart`, :class:`Step`, :class:`EnvRunner`, :class:`EnvPool`, :class:`LocalEnvPool`,
:class:`RayEnvPool`, :func:`make_pool`.

A pool owns ``num_slots`` env slots. Each slot is an :class:`EnvRunner`: an env plus the chat encoder, so the
CPU work of a turn — tools, image resizing, the processor's patching and tokenising of the env's message —
happens where the env lives, off the policy's critical path. The sample and the task stay in the slot: a reset
reports only the episode's public facts (:class:`EpisodeStart`), plus the task's solution when the rollout
asks for it (for a policy that reads the ground truth). ``reset``/``step`` return
:class:`concurrent.futures.Future` objects; the rollout scheduler (:func:`vgym.rollout.loop.rollout`) waits on
them.

Ray: :class:`RayEnvPool` starts ``num_workers`` actors, each hosting ``num_slots / num_workers`` runners (many
envs per process, one copy of each model-backed tool per process). ``ray.init`` runs only here and only when
Ray is not initialised yet: pass ``address="auto"`` or ``"ray://host:10001"`` to join an existing cluster,
which is how a rollout scales beyond one machine. A dead actor is replaced by :meth:`RayEnvPool.restart`; the
scheduler then re-runs the episodes it hosted from their seeds.

Bad data: when a reset fails with :class:`~vgym.errors.MediaError` (the sample's image or video file is
missing, truncated, corrupt, ...), :meth:`EnvRunner.reset` returns a :class:`Step` with ``error`` set instead
of raising, so one bad record ends one episode, not the rollout. Every other exception propagates: it is a bug
or a bad config.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vgym.env import VisualToolEnv
from vgym.errors import MediaError
from vgym.policies.base import GroundTruth, ground_truth

__all__ = ["EpisodeStart", "Step", "EnvRunner", "EnvPool", "LocalEnvPool", "RayEnvPool", "make_pool"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeStart:
    """What a reset tells the rollout about its episode.

    Attributes:
        sample_id: the sample's id (``MediaError.sample_id``, else ``"<task>/<split>/<index>"``, when it
            failed to load).
        task_name: the task's registry name.
        tools_enabled: whether the env offers tools.
        answer_choices: the task's finite answer set (its prompt states it), or None.
        ground_truth: the task's solution, only when the rollout asked for it; else None.
        tool_schemas: the JSON schemas of the tools the env offers, as its system prompt lists them.
    """

    sample_id: str
    task_name: str
    tools_enabled: bool
    answer_choices: tuple[str, ...] | None = None
    ground_truth: GroundTruth | None = None
    tool_schemas: tuple[dict[str, Any], ...] = ()


@dataclass
class Step:
    """The outcome of a ``reset`` or ``step`` on a slot, encoded for the policy's model.

    Attributes:
        chunk: the env message's ids and image tensors (a :class:`vgym.rollout.chat.Encoded`), or None when
            the episode ended or the rollout has no encoder (text-only policies).
        images: the message's images as shown to the model.
        messages: the new chat messages.
        observation: the message's text.
        reward / terminated / truncated / info: as returned by the env (reset: 0, False, False, its info).
        start: set after ``reset`` only: the episode's :class:`EpisodeStart`.
        error: set only by a failed ``reset``: why the sample could not be loaded (a :class:`MediaError`
            message naming the file). The episode is over before it began: ``chunk`` is None, ``truncated``
            True.
    """

    chunk: Any
    images: tuple[np.ndarray, ...]
    messages: list[dict[str, Any]]
    observation: str
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    start: EpisodeStart | None = None
    error: str | None = None


class EnvRunner:
    """One env slot: resets and steps its env and encodes each new message with ``encoder``."""

    def __init__(self, env_fn: Callable[[], VisualToolEnv], encoder: Any) -> None:
        """Args:
        env_fn: builds the env (called once).
        encoder: a :class:`vgym.rollout.chat.ChatEncoder`, or None (text-only: nothing is encoded).
        """
        self.env = env_fn()
        self.encoder = encoder

    def reset(self, split: str, index: int, seed: int, with_ground_truth: bool = False) -> Step:
        """Start the episode of item ``index`` of ``split``, env RNG seeded with ``seed``.

        Args:
            split / index / seed: which sample, and the env's seed.
            with_ground_truth: also report the task's solution (for a policy that reads the ground truth).

        Returns:
            The prompt's :class:`Step`; or, when the sample's media cannot be loaded (:class:`MediaError`), a
            Step with ``error`` set, ``truncated`` True and nothing to encode.
        """
        task = self.env.task
        choices = task.answer_choices()
        try:
            obs, info = self.env.reset(seed=seed, options={"split": split, "index": index})
        except MediaError as error:  # one record's bad file: this episode fails, the rollout goes on
            sample_id = error.sample_id or f"{task.name}/{split}/{index}"
            start = EpisodeStart(sample_id, task.name, self.env.tools_enabled, choices)
            return Step(None, (), [], "", truncated=True, start=start, error=str(error))
        sample = self.env.sample
        truth = ground_truth(task, sample, self.env.tools_enabled) if with_ground_truth else None
        schemas = tuple(tool.schema for tool in self.env.tools.values())
        start = EpisodeStart(sample.id, sample.task, self.env.tools_enabled, choices, truth, schemas)
        chunk = (
            self.encoder.encode_prompt(info["messages"], obs["images"]) if self.encoder is not None else None
        )
        return Step(chunk, obs["images"], info["messages"], obs["text"], info=info, start=start)

    def step(self, action: str) -> Step:
        """Play the model's turn ``action``; encode the env's reply unless the episode ended."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        done = terminated or truncated or self.encoder is None
        chunk = None if done else self.encoder.encode_delta(info["messages"], obs["images"])
        return Step(
            chunk, obs["images"], info["messages"], obs["text"], float(reward), terminated, truncated, info
        )

    def close(self) -> None:
        self.env.close()


class EnvPool(Protocol):
    """Slots that run env work and return futures."""

    num_slots: int

    def reset(
        self, slot: int, split: str, index: int, seed: int, with_ground_truth: bool = False
    ) -> cf.Future[Step]:
        """Start an episode on ``slot`` (see :meth:`EnvRunner.reset`)."""
        ...

    def step(self, slot: int, action: str) -> cf.Future[Step]:
        """Play a model turn on ``slot``."""
        ...

    def is_worker_failure(self, exc: BaseException) -> bool:
        """Whether ``exc`` (from a future) means the worker process died, not that the env raised."""
        ...

    def restart(self, slot: int) -> list[int]:
        """Replace the worker hosting ``slot``; returns every slot it hosted (their episodes are lost)."""
        ...

    def close(self) -> None:
        """Release every worker; calling it twice is harmless."""
        ...


class LocalEnvPool:
    """Slots in this process: run inline (``threads=0``, the default) or in a thread pool (overlaps tool work
    that releases the GIL — OpenCV, decoders, model-backed tools — with generation)."""

    def __init__(
        self, env_fn: Callable[[], VisualToolEnv], encoder: Any, num_slots: int, *, threads: int = 0
    ) -> None:
        self.num_slots = num_slots
        self._runners = [EnvRunner(env_fn, encoder) for _ in range(num_slots)]
        self._executor = (
            cf.ThreadPoolExecutor(threads, thread_name_prefix="vgym-env") if threads > 0 else None
        )

    def _submit(self, fn: Callable[..., Step], *args: Any) -> cf.Future[Step]:
        if self._executor is not None:
            return self._executor.submit(fn, *args)
        future: cf.Future[Step] = cf.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # delivered through the future, as from a thread
            future.set_exception(exc)
        return future

    def reset(
        self, slot: int, split: str, index: int, seed: int, with_ground_truth: bool = False
    ) -> cf.Future[Step]:
        return self._submit(self._runners[slot].reset, split, index, seed, with_ground_truth)

    def step(self, slot: int, action: str) -> cf.Future[Step]:
        return self._submit(self._runners[slot].step, action)

    def is_worker_failure(self, exc: BaseException) -> bool:
        return False  # an exception in this process is a bug, never a lost worker

    def restart(self, slot: int) -> list[int]:
        raise RuntimeError("local env slots cannot be restarted")

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for runner in self._runners:
            runner.close()
        self._runners = []


class _RayWorker:
    """The body of a Ray actor: several runners in one process."""

    def __init__(self, env_fn: Callable[[], VisualToolEnv], encoder: Any, slots: int) -> None:
        self.runners = [EnvRunner(env_fn, encoder) for _ in range(slots)]

    def reset(self, local: int, split: str, index: int, seed: int, with_ground_truth: bool) -> Step:
        return self.runners[local].reset(split, index, seed, with_ground_truth)

    def step(self, local: int, action: str) -> Step:
        return self.runners[local].step(action)

    def pid(self) -> int:
        import os

        return os.getpid()


class RayEnvPool:
    """Slots spread over ``num_workers`` Ray actors (slot ``s`` lives on worker ``s % num_workers``)."""

    def __init__(
        self,
        env_fn: Callable[[], VisualToolEnv],
        encoder: Any,
        num_slots: int,
        *,
        num_workers: int = 2,
        address: str | None = None,
        num_cpus_per_worker: float = 1.0,
    ) -> None:
        """Args:
        env_fn / encoder: as for :class:`EnvRunner`; both are pickled to every actor. num_slots: episodes in
        flight at once. num_workers: actors (processes). address: a Ray cluster to join (``"auto"``,
        ``"ray://host:port"``); None starts a local Ray when none runs. num_cpus_per_worker: the CPUs each
        actor reserves.

        Raises:
            ImportError: when Ray is not installed (``pip install 'vgym[ray]'``).
        """
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ImportError("parallel='ray' needs Ray: pip install 'vgym[ray]'") from exc
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        self._ray = ray
        self.num_slots = num_slots
        self.num_workers = max(1, min(num_workers, num_slots))
        self._actor_cls = ray.remote(num_cpus=num_cpus_per_worker, max_restarts=0)(_RayWorker)
        self._env_fn, self._encoder = ray.put(env_fn), ray.put(encoder)
        self._actors = [self._spawn(w) for w in range(self.num_workers)]

    def _slots_of(self, worker: int) -> list[int]:
        return list(range(worker, self.num_slots, self.num_workers))

    def _spawn(self, worker: int) -> Any:
        return self._actor_cls.remote(self._env_fn, self._encoder, len(self._slots_of(worker)))

    def _where(self, slot: int) -> tuple[Any, int]:
        return self._actors[slot % self.num_workers], slot // self.num_workers

    def reset(
        self, slot: int, split: str, index: int, seed: int, with_ground_truth: bool = False
    ) -> cf.Future[Step]:
        actor, local = self._where(slot)
        return actor.reset.remote(local, split, index, seed, with_ground_truth).future()

    def step(self, slot: int, action: str) -> cf.Future[Step]:
        actor, local = self._where(slot)
        return actor.step.remote(local, action).future()

    def worker_pids(self) -> list[int]:
        """The process id of each worker (tests kill one to check recovery)."""
        return self._ray.get([actor.pid.remote() for actor in self._actors])

    def is_worker_failure(self, exc: BaseException) -> bool:
        return isinstance(exc, self._ray.exceptions.RayActorError)

    def restart(self, slot: int) -> list[int]:
        worker = slot % self.num_workers
        logger.warning("env worker %d died; restarting it and re-running its episodes", worker)
        try:
            self._ray.kill(self._actors[worker])
        except Exception:  # already gone
            pass
        self._actors[worker] = self._spawn(worker)
        return self._slots_of(worker)

    def close(self) -> None:
        for actor in self._actors:
            try:
                self._ray.kill(actor)
            except Exception:  # already gone
                pass
        self._actors = []


def make_pool(parallel: str | EnvPool, env_fn: Callable[[], VisualToolEnv], encoder: Any, num_slots: int, *,
              num_workers: int = 2, address: str | None = None, threads: int = 0) -> EnvPool:
    """The pool named by ``parallel``: ``"local"`` (inline, or ``threads`` threads), ``"ray"``, or a pool
    itself.

    Raises:
        ValueError: for another name.
    """
    if not isinstance(parallel, str):
        return parallel
    if parallel == "local":
        return LocalEnvPool(env_fn, encoder, num_slots, threads=threads)
    if parallel == "ray":
        return RayEnvPool(env_fn, encoder, num_slots, num_workers=num_workers, address=address)
    raise ValueError(f"parallel must be 'local' or 'ray' (or an EnvPool), got {parallel!r}")
