"""The quickstart experiment: a tiny VLM learns to use the crop tool, against a tools-off ablation.

Contents: :class:`QuickstartConfig`, :func:`run_quickstart`, :func:`tokenizer_corpus`, :func:`plot_curves`.

Steps: build the tiny Qwen2-VL offline → for each arm (tools on, tools off): oracle trajectories on the train
split → SFT from the same initial weights → greedy evaluation on the held-out test split. Writes the model, the
trajectories (JSONL + PNG), ``results.json`` and ``curves.png`` to the run folder. Progress is reported through
callbacks; the CLI draws the bars.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vgym.env import VisualToolEnv
from vgym.pipeline import Progress, RunResult, sft_then_evaluate
from vgym.policies.hf import GenerationConfig
from vgym.policies.oracle import OraclePolicy
from vgym.task import TASKS
from vgym.tiny import TinyVLMConfig, build_tiny_vlm, load_vlm
from vgym.trainers.sft import SFTConfig

__all__ = ["QuickstartConfig", "run_quickstart", "tokenizer_corpus", "plot_curves"]


@dataclass
class QuickstartConfig:
    """Settings of ``vgym quickstart``; the defaults finish in well under 15 minutes on 2 CPU cores."""

    out: Path = Path("runs/quickstart")
    """Run folder (created)."""
    task: str = "visual_search"
    """Task to learn; its default tools form the tools-on arm."""
    task_config: dict[str, Any] | None = None
    """Fields of the task's config (None = its defaults, e.g. visual search at difficulty 0)."""
    train_episodes: int = 768
    """Oracle trajectories per arm for SFT."""
    eval_episodes: int = 200
    """Held-out test episodes per arm."""
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(steps=500, batch_size=16, learning_rate=1e-3))
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


def tokenizer_corpus(task: str, seed: int, n: int = 100, task_config: dict[str, Any] | None = None) -> list[str]:
    """Text that looks like the quickstart's prompts and turns, for training the tiny tokenizer.

    Uses the *train* split only (never the held-out split) and both the tools-on and tools-off prompts.
    """
    texts: list[str] = []
    oracle = OraclePolicy()
    for tools in (None, ()):
        env = VisualToolEnv(task, task_config=task_config, tools=tools, data_seed=seed)
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
    return lambda: VisualToolEnv(cfg.task, task_config=cfg.task_config, tools=tools, data_seed=cfg.seed)


def run_arm(cfg: QuickstartConfig, arm: str, model_dir: Path, progress: Progress) -> RunResult:
    """SFT from the initial tiny weights and held-out evaluation for one arm; writes ``<out>/<arm>/``."""
    model, processor = load_vlm(model_dir)
    return sft_then_evaluate(
        model, processor, _env_fn(cfg, arm), label=arm, out=cfg.out / arm, train_episodes=cfg.train_episodes,
        eval_episodes=cfg.eval_episodes, sft=cfg.sft, generation=GenerationConfig(cfg.max_new_tokens, temperature=0.0),
        batch_size=cfg.rollout_batch, progress=progress,
    )


def run_quickstart(cfg: QuickstartConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the whole experiment.

    Returns:
        ``{"arms": [RunResult as dict, ...], "wall_seconds": float, "out": str, "chance": float}``, also
        written to ``<out>/results.json``; ``<out>/curves.png`` plots the SFT loss of each arm.
    """
    progress = progress or (lambda stage, done, total: None)
    start = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    model_dir = cfg.out / "tiny-vlm"
    progress("build tiny VLM", 0, 1)
    model_cfg = TinyVLMConfig(**{**asdict(cfg.model), "seed": cfg.seed})
    build_tiny_vlm(model_dir, corpus=tokenizer_corpus(cfg.task, cfg.seed, task_config=cfg.task_config), config=model_cfg)
    progress("build tiny VLM", 1, 1)
    arms = [run_arm(cfg, arm, model_dir, progress) for arm in cfg.arms]
    result = {
        "arms": [asdict(a) for a in arms],
        "wall_seconds": time.perf_counter() - start,
        "out": str(cfg.out),
        "chance": TASKS.get(cfg.task)().chance_accuracy(),
    }
    (cfg.out / "results.json").write_text(json.dumps(result, indent=2))
    plot_curves(arms, cfg.out / "curves.png")
    return result


def plot_curves(arms: list[RunResult], path: Path) -> Path:
    """SFT loss per step for each arm, with held-out accuracy in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for arm in arms:
        ax.plot(range(1, len(arm.losses) + 1), arm.losses, label=f"{arm.label} (held-out acc {arm.accuracy:.2f})")
    ax.set_xlabel("SFT step")
    ax.set_ylabel("loss on policy tokens")
    ax.set_yscale("log")
    ax.set_title("vgym quickstart: tiny Qwen2-VL")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
