"""The SFT recipe shared by ``vgym quickstart`` and ``vgym sft``: oracle data → SFT → held-out evaluation.

Contents: :data:`Progress`, :class:`RunResult`, :func:`collect`, :func:`collect_sft_data`,
:func:`sft_then_evaluate`.

Works the same for the tiny model on a CPU and for a real checkpoint on a GPU: the model and processor come in
already loaded (see :func:`vgym.engine.tiny.load_vlm`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vgym.env import VisualToolEnv
from vgym.eval.stats import summarize
from vgym.policies.base import Policy
from vgym.policies.hf import GenerationConfig, HFPolicy
from vgym.policies.oracle import OraclePolicy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout
from vgym.rollout.trajectory import Trajectory, save_trajectories
from vgym.rollout.workers import make_pool
from vgym.trainers.sft import SFTConfig, SFTTrainer
from vgym.trainers.sft_data import SFTDataset

__all__ = ["Progress", "RunResult", "collect", "collect_sft_data", "sft_then_evaluate"]

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as work advances."""


@dataclass
class RunResult:
    """Outcome of one SFT run and its held-out evaluation."""

    label: str
    accuracy: float
    """Mean held-out accuracy (answer correct)."""
    reward: float
    """Mean held-out composite reward."""
    tool_calls_per_episode: float
    format_ok: float
    """Fraction of held-out episodes with no format error that ended with an answer."""
    accuracy_ci: list[float]
    """``[low, high]``: the 95 % bootstrap confidence interval of ``accuracy`` (episodes resampled)."""
    initial_loss: float
    final_loss: float
    train_seconds: float
    eval_seconds: float
    losses: list[float] = field(default_factory=list)


def collect(
    env_fn: Callable[[], VisualToolEnv],
    policy: Policy,
    encoder: ChatEncoder,
    split: str,
    episodes: int,
    *,
    batch_size: int,
    progress: Progress,
    stage: str,
) -> list[Trajectory]:
    """Play items ``0 .. episodes-1`` of ``split`` (episode i reset with seed i), reporting progress."""
    specs = [EpisodeSpec(split, i, group_id=i, seed=i) for i in range(episodes)]
    done = [0]

    def on_episode(_: Trajectory) -> None:
        done[0] += 1
        progress(stage, done[0], episodes)

    return rollout(
        env_fn, policy, encoder, specs, RolloutConfig(batch_size=batch_size), on_episode=on_episode
    )


def collect_sft_data(
    env_fn: Callable[[], VisualToolEnv],
    teacher: Policy,
    encoder: ChatEncoder,
    split: str,
    episodes: int,
    *,
    batch_size: int,
    progress: Progress,
    stage: str,
    spill_dir: Path | None = None,
    keep: int = 0,
) -> tuple[SFTDataset, list[Trajectory]]:
    """The episodes of :func:`collect` as an :class:`~vgym.trainers.sft_data.SFTDataset`, built as they are
    played so that they never all sit in memory: one lockstep batch of ``batch_size`` episodes at a time, on
    env slots kept across batches, each batch added to the dataset and dropped. Lockstep rollouts play their
    specs in exactly such batches, so the episodes (the teacher's random draws included) are those of
    :func:`collect` with the same arguments.

    Args:
        spill_dir: folder of the dataset's spill file (its images; see
            :class:`~vgym.trainers.sft_data.SpillFile`); None = the system's temporary folder.
        keep: how many of the first trajectories to return whole as well (without their patches), e.g. to
            save a sample of the data.

    Returns:
        The dataset (its images in the spill file: :meth:`~vgym.trainers.sft_data.SFTDataset.close` it when
        done) and the first ``keep`` trajectories.
    """
    dataset = SFTDataset(encoder, spill_dir=spill_dir)
    kept: list[Trajectory] = []
    done = [0]

    def on_episode(_: Trajectory) -> None:
        done[0] += 1
        progress(stage, done[0], episodes)

    pool = make_pool("local", env_fn, encoder, max(1, min(batch_size, episodes)))
    try:
        for start in range(0, episodes, batch_size):
            specs = [EpisodeSpec(split, i, group_id=i, seed=i)
                     for i in range(start, min(start + batch_size, episodes))]
            trajectories = rollout(env_fn, teacher, encoder, specs, RolloutConfig(batch_size=batch_size),
                                   on_episode=on_episode, pool=pool)
            dataset.extend(trajectories)
            kept += [dataclasses.replace(t, pixel_values=None) for t in trajectories[: keep - len(kept)]]
    except BaseException:
        dataset.close()
        raise
    finally:
        pool.close()
    return dataset, kept


def sft_then_evaluate(
    model: Any,
    processor: Any,
    env_fn: Callable[[], VisualToolEnv],
    *,
    label: str,
    out: Path,
    train_episodes: int,
    eval_episodes: int,
    sft: SFTConfig,
    generation: GenerationConfig,
    batch_size: int,
    progress: Progress,
    teacher: Policy | None = None,
) -> RunResult:
    """Behaviour-clone the oracle (or ``teacher``) on the train split, then evaluate greedily on the test
    split.

    Writes ``<out>/oracle_train.jsonl`` (first 16 episodes), ``<out>/checkpoint/`` (a complete model folder:
    model, processor, chat template, with the trainer state beside them) and ``<out>/eval_test.jsonl`` with
    images under ``<out>/images/``.
    """
    encoder = ChatEncoder(processor)
    out.mkdir(parents=True, exist_ok=True)
    data, head = collect_sft_data(env_fn, teacher or OraclePolicy(), encoder, "train", train_episodes,
                                  batch_size=batch_size, progress=progress, stage=f"{label}: oracle data",
                                  spill_dir=out, keep=16)
    try:
        save_trajectories(head, out, "oracle_train")
        trainer = SFTTrainer(model, data, sft, processor=processor)
        start = time.perf_counter()
        history = trainer.train(lambda step, _: progress(f"{label}: SFT", step, sft.steps))
        train_seconds = time.perf_counter() - start
    finally:
        data.close()
    trainer.save(out / "checkpoint")  # a model folder: `vgym eval --policy hf:<out>/checkpoint` loads it
    policy = HFPolicy(model, processor, generation)
    start = time.perf_counter()
    evaluated = collect(env_fn, policy, encoder, "test", eval_episodes, batch_size=batch_size,
                        progress=progress, stage=f"{label}: held-out eval")
    eval_seconds = time.perf_counter() - start
    save_trajectories(evaluated, out, "eval_test")
    losses = [h["loss/sft"] for h in history]
    return RunResult(label=label, **summarize(evaluated), initial_loss=losses[0], final_loss=losses[-1],
                     train_seconds=train_seconds, eval_seconds=eval_seconds, losses=losses)
