"""The quickstart experiment: a tiny VLM learns to use the crop tool, against a tools-off ablation.

Contents: :class:`QuickstartConfig`, :class:`ArmResult`, :func:`run_quickstart`, :func:`tokenizer_corpus`.

Steps: build the tiny Qwen2-VL offline → for each arm (tools on, tools off): oracle trajectories on the train
split → SFT from the same initial weights → greedy evaluation on the held-out test split. Writes the model, the
trajectories (JSONL + PNG), ``results.json`` and ``curves.png`` to the run folder. Progress is reported through
callbacks; the CLI draws the bars.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vgym.env import VisualToolEnv
from vgym.policies.hf import GenerationConfig, HFPolicy
from vgym.policies.oracle import OraclePolicy
from vgym.rollout import ChatEncoder, EpisodeSpec, rollout
from vgym.tiny import TinyVLMConfig, build_tiny_vlm, load_vlm
from vgym.trainers.sft import SFTConfig, SFTTrainer
from vgym.trajectory import Trajectory, save_trajectories

__all__ = ["QuickstartConfig", "ArmResult", "run_quickstart", "tokenizer_corpus"]

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as work advances."""


@dataclass
class QuickstartConfig:
    """Settings of ``vgym quickstart``; the defaults finish in well under 15 minutes on 2 CPU cores."""

    out: Path = Path("runs/quickstart")
    """Run folder (created)."""
    task: str = "visual_search"
    """Task to learn; its default tools form the tools-on arm."""
    train_episodes: int = 768
    """Oracle trajectories per arm for SFT."""
    eval_episodes: int = 200
    """Held-out test episodes per arm."""
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(steps=400, batch_size=16, learning_rate=2e-3))
    """SFT settings, shared by both arms."""
    model: TinyVLMConfig = field(default_factory=TinyVLMConfig)
    """Tiny model size."""
    max_new_tokens: int = 48
    """Generation cap per turn."""
    rollout_batch: int = 32
    """Episodes per lockstep batch."""
    seed: int = 0
    """Data seed of the task (train and test splits derive from it) and seed of the model."""
    arms: tuple[str, ...] = ("tools", "no_tools")
    """Which arms to run."""


@dataclass
class ArmResult:
    """Outcome of one arm."""

    arm: str
    accuracy: float
    """Mean held-out accuracy (answer correct)."""
    reward: float
    """Mean held-out composite reward."""
    tool_calls_per_episode: float
    format_ok: float
    """Fraction of held-out episodes with no format error that ended with an answer."""
    initial_loss: float
    final_loss: float
    train_seconds: float
    eval_seconds: float
    losses: list[float] = field(default_factory=list)


def tokenizer_corpus(task: str, seed: int, n: int = 300) -> list[str]:
    """Text that looks like the quickstart's prompts and turns, for training the tiny tokenizer.

    Uses the *train* split only (never the held-out split) and both the tools-on and tools-off prompts.
    """
    texts: list[str] = []
    oracle = OraclePolicy()
    for tools in (None, ()):
        env = VisualToolEnv(task, tools=tools, data_seed=seed)
        for i in range(n):
            obs, info = env.reset(seed=i, options={"split": "train", "index": i})
            texts.append(obs["text"])
            solution = env.task.solution(env.sample, env.tools_enabled)  # type: ignore[arg-type]
            for name, args in solution.tool_calls:
                texts.append(oracle.protocol.format_tool_call(name, args))
            texts.append(oracle.protocol.format_answer(solution.answer))
    return texts


def _env_fn(cfg: QuickstartConfig, arm: str) -> Callable[[], VisualToolEnv]:
    tools = None if arm == "tools" else ()
    return lambda: VisualToolEnv(cfg.task, tools=tools, data_seed=cfg.seed)


def _summary(trajs: list[Trajectory]) -> dict[str, float]:
    return {
        "accuracy": float(np.mean([t.reward_parts.get("accuracy", 0.0) for t in trajs])),
        "reward": float(np.mean([t.reward for t in trajs])),
        "tool_calls_per_episode": float(np.mean([t.num_tool_calls for t in trajs])),
        "format_ok": float(np.mean([t.reward_parts.get("format", 0.0) for t in trajs])),
    }


def run_arm(cfg: QuickstartConfig, arm: str, model_dir: Path, progress: Progress) -> ArmResult:
    """Oracle data → SFT → held-out evaluation for one arm; writes ``<out>/<arm>/``."""
    folder = cfg.out / arm
    model, processor = load_vlm(model_dir)
    encoder = ChatEncoder(processor)
    env_fn = _env_fn(cfg, arm)
    train_specs = [EpisodeSpec("train", i, group_id=i, seed=i) for i in range(cfg.train_episodes)]
    done = [0]

    def tick(stage: str, total: int) -> Callable[[Trajectory], None]:
        done[0] = 0

        def on_episode(_: Trajectory) -> None:
            done[0] += 1
            progress(stage, done[0], total)

        return on_episode

    data = rollout(env_fn, OraclePolicy(), encoder, train_specs, batch_size=cfg.rollout_batch,
                   on_episode=tick(f"{arm}: oracle data", len(train_specs)))
    save_trajectories(data[:16], folder, "oracle_train")
    trainer = SFTTrainer(model, data, cfg.sft, pad_id=processor.tokenizer.pad_token_id)
    start = time.perf_counter()
    history = trainer.train(lambda step, _: progress(f"{arm}: SFT", step, cfg.sft.steps))
    train_seconds = time.perf_counter() - start
    trainer.save(folder / "checkpoint")
    policy = HFPolicy(model, processor, GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0))
    test_specs = [EpisodeSpec("test", i, group_id=i, seed=i) for i in range(cfg.eval_episodes)]
    start = time.perf_counter()
    evaluated = rollout(env_fn, policy, encoder, test_specs, batch_size=cfg.rollout_batch,
                        on_episode=tick(f"{arm}: held-out eval", len(test_specs)))
    eval_seconds = time.perf_counter() - start
    save_trajectories(evaluated, folder, "eval_test")
    losses = [h["loss/sft"] for h in history]
    return ArmResult(arm=arm, **_summary(evaluated), initial_loss=losses[0], final_loss=losses[-1],
                     train_seconds=train_seconds, eval_seconds=eval_seconds, losses=losses)


def run_quickstart(cfg: QuickstartConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole experiment.

    Returns:
        ``{"arms": [ArmResult as dict, ...], "wall_seconds": float, "out": str, "chance": float}``, also
        written to ``<out>/results.json``; ``<out>/curves.png`` plots the SFT loss of each arm.
    """
    progress = progress or (lambda stage, done, total: None)
    start = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    model_dir = cfg.out / "tiny-vlm"
    progress("build tiny VLM", 0, 1)
    model_cfg = TinyVLMConfig(**{**asdict(cfg.model), "seed": cfg.seed})
    build_tiny_vlm(model_dir, corpus=tokenizer_corpus(cfg.task, cfg.seed), config=model_cfg)
    progress("build tiny VLM", 1, 1)
    arms = [run_arm(cfg, arm, model_dir, progress) for arm in cfg.arms]
    result = {
        "arms": [asdict(a) for a in arms],
        "wall_seconds": time.perf_counter() - start,
        "out": str(cfg.out),
        "chance": _chance(cfg.task),
    }
    (cfg.out / "results.json").write_text(json.dumps(result, indent=2))
    plot_curves(arms, cfg.out / "curves.png")
    return result


def _chance(task: str) -> float:
    """Accuracy of a uniform guess, where the task declares its answer set (else NaN)."""
    if task == "visual_search":
        from vgym.tasks.visual_search import COLOURS

        return 1.0 / len(COLOURS)
    return float("nan")


def plot_curves(arms: list[ArmResult], path: Path) -> Path:
    """SFT loss per step for each arm, with held-out accuracy in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for arm in arms:
        ax.plot(range(1, len(arm.losses) + 1), arm.losses, label=f"{arm.arm} (held-out acc {arm.accuracy:.2f})")
    ax.set_xlabel("SFT step")
    ax.set_ylabel("loss on policy tokens")
    ax.set_yscale("log")
    ax.set_title("vgym quickstart: tiny Qwen2-VL")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
