"""Training recipes: one YAML file = model + task + optional SFT warm start + GRPO + evaluation.

Contents: :class:`Recipe`, :func:`apply_override`, :func:`load_recipe`, :func:`load_model`,
:func:`run_recipe`.

``vgym train --config configs/quickstart_cpu.yaml`` runs :func:`run_recipe`: load (or, for ``model: tiny``,
build) the model → optionally behaviour-clone the oracle (SFT) → greedy held-out evaluation → GRPO with
reporters, alarms and checkpoints → the same evaluation again. Everything lands in ``out``: ``metrics.csv``
(and TensorBoard logs when asked), ``checkpoint-<step>/`` folders,
``eval_before.jsonl`` / ``eval_after.jsonl`` trajectories and ``results.json``. ``resume: true`` continues
from the newest checkpoint in ``out`` exactly.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vgym.app.pipeline import collect
from vgym.engine.modeling import enable_checkpointing
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError
from vgym.eval.stats import summarize
from vgym.policies.hf import GenerationConfig, HFPolicy
from vgym.policies.oracle import OraclePolicy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.trajectory import save_trajectories, write_json
from vgym.trainers.grpo import GRPOTrainer, hf_policy
from vgym.trainers.grpo_config import GRPOConfig
from vgym.trainers.reporters import make_reporters
from vgym.trainers.sft import SFTConfig, SFTTrainer

__all__ = ["Recipe", "apply_override", "load_recipe", "load_model", "run_recipe"]

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass
class Recipe:
    """A training run, as written in a YAML file (every key optional except where noted)."""

    out: str = "runs/train"
    """Run folder."""
    model: str = "tiny"
    """A local checkpoint folder (Qwen2-VL / Qwen2.5-VL / Qwen3-VL ``*ForConditionalGeneration``; never
    downloaded), or ``tiny`` to build the random tiny Qwen2-VL into ``<out>/tiny-vlm``."""
    device: str = "cpu"
    """``cpu`` or ``cuda``."""
    dtype: str = "float32"
    """``float32`` or ``bfloat16`` (GPU)."""
    gradient_checkpointing: bool = False
    """Trade compute for activation memory (real checkpoints)."""
    lora: dict[str, Any] | None = None
    """LoRA adapters via peft (Hu et al., arXiv:2106.09685): ``{"r", "alpha", "dropout", "target_modules"}``;
    the KL reference is then the base model with adapters off. None trains every weight."""
    task: str = "visual_search"
    """Task registry name."""
    task_config: dict[str, Any] | None = None
    """The task's config for GRPO and evaluation."""
    env: dict[str, Any] = field(default_factory=dict)
    """Other :class:`~vgym.env.EnvConfig` fields (tools, max_turns, max_pixels, reward, tool_runtime, ...)."""
    data_seed: int = 0
    """Data seed of the task."""
    sft: dict[str, Any] | None = None
    """:class:`~vgym.trainers.sft.SFTConfig` fields of an SFT warm start on oracle episodes; None skips it."""
    sft_episodes: int = 512
    """Oracle episodes for the warm start."""
    sft_task_config: dict[str, Any] | None = None
    """Task config of the SFT data (None: ``task_config``), e.g. an easier difficulty than GRPO's."""
    sft_teacher_skip_tools: float = 0.0
    """Share of oracle SFT episodes that skip the tools and guess (a lazy teacher, see
    :class:`~vgym.policies.oracle.OraclePolicy`); the student then under-uses the tools and GRPO must fix
    it."""
    grpo: dict[str, Any] = field(default_factory=dict)
    """:class:`~vgym.trainers.grpo.GRPOConfig` fields."""
    eval_episodes: int = 200
    """Held-out test episodes, evaluated greedily before and after GRPO (0 skips evaluation)."""
    max_new_tokens: int = 64
    """Generation cap per turn for evaluation."""
    rollout_batch: int = 32
    """Episodes per evaluation batch."""
    report_to: list[str] = field(default_factory=lambda: ["csv"])
    """Reporters: ``csv``, ``tensorboard``, ``wandb`` or ``none``."""
    save_every: int = 0
    """Save a checkpoint every N GRPO steps (0: only at the end)."""
    resume: bool = False
    """Continue from the newest ``checkpoint-<step>`` in ``out``."""

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda") or self.dtype not in ("float32", "bfloat16"):
            raise InvalidConfigError(f"device must be cpu|cuda and dtype float32|bfloat16, got "
                                     f"{self.device!r}, {self.dtype!r}")
        self.grpo_config  # validates the GRPO fields now, not after an SFT warm start  # noqa: B018
        if self.sft is not None:
            SFTConfig(**self.sft)

    @property
    def grpo_config(self) -> GRPOConfig:
        """The GRPO settings as a config object."""
        return GRPOConfig(**self.grpo)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override to a recipe mapping in place; the value is parsed as YAML
    (``grpo.learning_rate=1e-4``, ``grpo.dynamic_sampling=true``, ``task_config={difficulty: 2}``).

    Raises:
        InvalidConfigError: without ``=``, or when a dotted prefix names a value that is not a mapping.
    """
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise InvalidConfigError(f"an override is key=value (e.g. grpo.learning_rate=1e-4), got "
                                 f"{assignment!r}")
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise InvalidConfigError(f"override {assignment!r}: {part!r} is {child!r}, not a mapping")
        node = child
    node[leaf] = _numbers(yaml.safe_load(text))


def _numbers(value: Any) -> Any:
    """``value`` with every string in exponent notation (``1e-6``) made a float, recursively: YAML 1.1
    (PyYAML) reads a float without a dot as a string, which would reach the optimizer as ``lr="1e-6"``."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def load_recipe(path: str | Path, *assignments: str, **overrides: Any) -> Recipe:
    """Read a YAML recipe; ``assignments`` (``dotted.key=value``) and then ``overrides`` replace keys.

    Raises:
        InvalidConfigError: for an unknown key (with the closest valid one) or an invalid value.
    """
    data = _numbers(yaml.safe_load(Path(path).read_text()) or {})
    if not isinstance(data, dict):
        raise InvalidConfigError(f"{path}: a recipe is a mapping of keys, got {type(data).__name__}")
    for assignment in assignments:
        apply_override(data, assignment)
    data.update({k: v for k, v in overrides.items() if v is not None})
    _check_keys(path, "", data, Recipe)
    for section, cls in (("grpo", GRPOConfig), ("sft", SFTConfig)):
        if isinstance(data.get(section), dict):
            _check_keys(path, f"{section}.", data[section], cls)
    try:
        return Recipe(**data)
    except TypeError as exc:
        raise InvalidConfigError(f"{path}: {exc}") from None


def _check_keys(path: str | Path, prefix: str, data: dict[str, Any], cls: type) -> None:
    """Raise for a key of ``data`` that is not a field of the dataclass ``cls``, naming the closest one, or
    whose field defaults to a number while the value is not one (e.g. a quoted ``"1e-6"``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    valid = list(fields)
    for key, value in data.items():
        default = fields[key].default if key in fields else None
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InvalidConfigError(f"{path}: {prefix}{key} must be a number, got {value!r}")
    for key in data:
        if key not in valid:
            hint = difflib.get_close_matches(key, valid, n=1)
            raise InvalidConfigError(f"{path}: unknown key {prefix}{key!r}"
                                     + (f"; did you mean {prefix}{hint[0]!r}?" if hint else ""))


def load_model(recipe: Recipe, progress: Progress) -> tuple[Any, Any]:
    """The recipe's ``(model, processor)`` on its device and dtype, with LoRA and gradient checkpointing
    applied."""
    import torch

    from vgym.engine.tiny import build_tiny_vlm, load_vlm

    path = Path(recipe.model)
    if recipe.model == "tiny":
        from vgym.app.quickstart import tokenizer_corpus

        path = Path(recipe.out) / "tiny-vlm"
        if not (path / "config.json").exists():
            progress("build tiny VLM", 0, 1)
            corpus = tokenizer_corpus(recipe.task, recipe.data_seed, task_config=recipe.task_config)
            build_tiny_vlm(path, corpus=corpus)
            progress("build tiny VLM", 1, 1)
    elif not path.is_dir():
        raise InvalidConfigError(f"model {recipe.model!r} is not a local folder; vgym never downloads "
                                 "checkpoints")
    model, processor = load_vlm(path, device=recipe.device, dtype=getattr(torch, recipe.dtype))
    if recipe.gradient_checkpointing:
        enable_checkpointing(model)
    if recipe.lora:
        from peft import LoraConfig, get_peft_model

        lora = dict(recipe.lora)
        targets = lora.get("target_modules", ["q_proj", "v_proj"])
        config = LoraConfig(r=lora.get("r", 16), lora_alpha=lora.get("alpha", 32),
                            lora_dropout=lora.get("dropout", 0.0), target_modules=targets)
        model = get_peft_model(model, config)
    return model, processor


def _env_fn(recipe: Recipe, task_config: dict[str, Any] | None) -> Callable[[], VisualToolEnv]:
    import functools

    return functools.partial(VisualToolEnv, recipe.task, task_config=task_config, data_seed=recipe.data_seed,
                             **recipe.env)


def _evaluate(recipe: Recipe, model: Any, processor: Any, name: str, progress: Progress) -> dict[str, float]:
    policy = HFPolicy(model, processor, GenerationConfig(recipe.max_new_tokens, temperature=0.0))
    trajs = collect(_env_fn(recipe, recipe.task_config), policy, ChatEncoder(processor), "test",
                    recipe.eval_episodes, batch_size=recipe.rollout_batch, progress=progress, stage=name)
    save_trajectories(trajs, Path(recipe.out), name)
    return summarize(trajs)


def run_recipe(recipe: Recipe, progress: Progress | None = None) -> dict[str, Any]:
    """Run the recipe (see the module docstring).

    Returns:
        ``{"before": summary, "after": summary, "steps": int, "wall_seconds": float, "alarms": [...]}``, also
        written to ``<out>/results.json``.
    """
    progress = progress or (lambda stage, done, total: None)
    start = time.perf_counter()
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = load_model(recipe, progress)
    cfg = recipe.grpo_config
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    resume_from = checkpoints[-1] if recipe.resume and checkpoints else None
    if recipe.sft is not None and resume_from is None:
        sft_task = recipe.sft_task_config if recipe.sft_task_config is not None else recipe.task_config
        sft_env = _env_fn(recipe, sft_task)
        teacher = OraclePolicy(skip_tools=recipe.sft_teacher_skip_tools, seed=recipe.data_seed + 1)
        data = collect(sft_env, teacher, ChatEncoder(processor), "train", recipe.sft_episodes,
                       batch_size=recipe.rollout_batch, progress=progress, stage="SFT data")
        sft = SFTConfig(**recipe.sft)
        SFTTrainer(model, data, sft, pad_id=processor.tokenizer.pad_token_id).train(
            lambda step, _: progress("SFT", step, sft.steps))
    results: dict[str, Any] = {}
    if recipe.eval_episodes and resume_from is None:
        results["before"] = _evaluate(recipe, model, processor, "eval_before", progress)
    policy = hf_policy(model, processor, cfg)  # plays the model being trained: no weights to sync
    trainer = GRPOTrainer(model, processor, policy, _env_fn(recipe, recipe.task_config), cfg)
    if resume_from is not None:
        trainer.load(resume_from)
    reporters = make_reporters(recipe.report_to, out, resume_step=trainer.step_count if resume_from else None)
    def on_step(step: int, metrics: dict[str, float]) -> None:
        for reporter in reporters:
            reporter.log(step, metrics)
        progress("GRPO", step, cfg.steps)
        if recipe.save_every and step % recipe.save_every == 0:
            trainer.save(out / f"checkpoint-{step}")

    trainer.train(on_step)
    trainer.save(out / f"checkpoint-{trainer.step_count}")
    for reporter in reporters:
        reporter.close()
    if recipe.eval_episodes:
        results["after"] = _evaluate(recipe, model, processor, "eval_after", progress)
    results.update({"steps": trainer.step_count, "wall_seconds": time.perf_counter() - start,
                    "alarms": trainer.alarm_log})
    write_json(out / "results.json", results)
    return results
