"""Training recipes: one YAML file = model + task + optional SFT warm start + GRPO + evaluation.

Contents: :class:`Recipe`, :func:`apply_override`, :func:`load_recipe`, :func:`load_model`,
:func:`run_recipe`.

``vgym train --config configs/quickstart_cpu.yaml`` runs :func:`run_recipe`: load (or, for ``model: tiny``,
build) the model → optionally behaviour-clone the oracle (SFT) with checkpoints → greedy held-out evaluation
→ GRPO with reporters, alarms and checkpoints → the same evaluation again. Everything lands in ``out``:
``sft/checkpoint-<step>/`` and ``sft/metrics.csv`` (SFT), ``checkpoint-<step>/`` and ``metrics.csv`` (GRPO;
TensorBoard logs when asked), ``eval_before.jsonl`` / ``eval_after.jsonl`` trajectories and ``results.json``
(written once the "before" evaluation is done, completed at the end). Every checkpoint is a complete model
folder (``vgym eval --policy hf:<out>/checkpoint-<step>``). ``resume: true`` continues exactly from the newest
GRPO checkpoint, else from the newest SFT checkpoint (then GRPO from scratch), keeping the first run's
"before" evaluation. A Ctrl-C (SIGINT) during SFT or GRPO ends the step under way, saves a checkpoint and
stops (a second Ctrl-C stops at once, without one). ``rollout_engine: vllm`` samples GRPO's rollouts with an
offline vLLM engine on the trainer's GPU, its weights synced after every optimizer step (written to vLLM's
source, not run here: see :mod:`vgym.policies.vllm`); evaluation always uses the transformers model.

Launched by ``torchrun`` (``torchrun --nproc_per_node N -m vgym.app.cli train --config ...``) the run is
data-parallel (:mod:`vgym.trainers.distributed`; the ``distributed:`` section picks DDP or FSDP2): every rank
loads the model, plays the SFT data and trains on its share of each batch; rank 0 alone builds the tiny model,
evaluates, reports and writes ``results.json`` and the checkpoints, while the others wait.

:func:`load_recipe` checks everything a run will use before anything runs: unknown keys (with the closest
valid one), value types, every name (losses, estimators, modes, devices, reporters, the task and its env) and
every range, raising :class:`~vgym.errors.InvalidConfigError` that names the key (``grpo.loss_type``) --
and, last, that vLLM is installed when the recipe asks for it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import logging
import os
import re
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vgym.app.interrupts import train_until_interrupted
from vgym.app.pipeline import collect, collect_sft_data
from vgym.engine.modeling import enable_checkpointing
from vgym.env import EnvConfig, VisualToolEnv
from vgym.errors import InvalidConfigError, VgymError
from vgym.eval.stats import summarize
from vgym.policies.base import Policy
from vgym.policies.hf import GenerationConfig, HFPolicy
from vgym.policies.oracle import OraclePolicy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import RolloutConfig
from vgym.rollout.trajectory import save_trajectories, write_json
from vgym.task import TASKS
from vgym.trainers.checkpoints import list_checkpoints
from vgym.trainers.config_checks import check_choice, check_range
from vgym.trainers.distributed import DataParallel, DistributedConfig, init_data_parallel
from vgym.trainers.grpo import GRPOTrainer, hf_policy
from vgym.trainers.grpo_config import GRPOConfig
from vgym.trainers.monitors import AlarmConfig
from vgym.trainers.reporters import REPORTERS, make_reporters
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
    """LoRA adapters via peft (Hu et al., arXiv:2106.09685): ``{"r", "alpha", "dropout", "target_modules"}``
    (defaults 16, 32, 0.0, ``[q_proj, v_proj]``); the KL reference is then the base model with adapters off,
    and checkpoints hold the adapters with the base folder's path. None trains every weight."""
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
    sft_save_every: int | None = None
    """Save an SFT checkpoint (``<out>/sft/checkpoint-<step>``) every N SFT steps (0: only at the end);
    None: ``save_every``."""
    resume: bool = False
    """Continue from the newest ``checkpoint-<step>`` in ``out`` (GRPO), else from the newest
    ``sft/checkpoint-<step>`` (SFT, then GRPO from its start)."""
    rollout_engine: str = "hf"
    """What samples GRPO's rollouts: ``hf`` (the transformers model being trained, no copy) or ``vllm`` (an
    offline vLLM engine in this process on the same GPU, holding its own copy of the weights, synced after
    every optimizer step; needs ``pip install 'vgym[vllm]'``, ``device: cuda`` and no ``lora``). The
    importance ratio of the trainer's log-probs over the engine's is logged as ``rollout/is_ratio_*``.
    Evaluation always runs the transformers model."""
    vllm: dict[str, Any] = field(default_factory=dict)
    """Engine settings of ``rollout_engine: vllm`` (:class:`~vgym.policies.vllm.VLLMPolicyConfig` fields):
    ``gpu_memory_utilization`` (default 0.5: the rest is the trainer's), ``max_model_len``, ``engine_kwargs``.
    Sampling (temperature, top-p, tokens per turn, seed) comes from ``grpo``, the image limit from ``env``."""
    rollout: dict[str, Any] = field(default_factory=dict)
    """Where GRPO's env work runs (:class:`~vgym.rollout.loop.RolloutConfig` fields ``parallel``: local |
    ray, ``num_workers``, ``address``, ``threads``): e.g. ``{parallel: ray, num_workers: 8, address: auto}``
    puts each process's envs and tools in Ray actors of the cluster this node belongs to. Empty: inline."""
    distributed: dict[str, Any] = field(default_factory=dict)
    """:class:`~vgym.trainers.distributed.DistributedConfig` fields (``strategy``: ddp | fsdp2,
    ``timeout_s``), read when ``torchrun`` starts several processes; one process ignores them."""

    def __post_init__(self) -> None:
        """Check every field (sections included) but the env's, which :func:`load_recipe` builds.

        Raises:
            InvalidConfigError: naming the first bad key, e.g. ``grpo.loss_type must be one of ...``.
        """
        check_choice("device", self.device, ("cpu", "cuda"))
        check_choice("dtype", self.dtype, ("float32", "bfloat16"))
        check_choice("task", self.task, TASKS.names())
        for name, low in (("data_seed", 0), ("sft_episodes", 1), ("eval_episodes", 0), ("max_new_tokens", 1),
                          ("rollout_batch", 1), ("save_every", 0)):
            check_range(name, getattr(self, name), low=low)
        if self.sft_save_every is not None:
            check_range("sft_save_every", self.sft_save_every, low=0)
        check_range("sft_teacher_skip_tools", self.sft_teacher_skip_tools, low=0, high=1)
        _check_reporters(self.report_to)
        if self.lora is not None:
            _check_lora(self.lora)
        _check_rollout_engine(self)
        self.rollout_settings  # noqa: B018
        if self.distributed_config.strategy == "fsdp2" and self.lora is not None:
            raise InvalidConfigError("distributed.strategy fsdp2 does not take lora (the adapters' few "
                                     "weights need no sharding); use strategy: ddp with lora")
        self.grpo_config  # validates the GRPO fields now, not after an SFT warm start  # noqa: B018
        if self.sft is not None:
            self.sft_config  # noqa: B018

    @property
    def grpo_config(self) -> GRPOConfig:
        """The GRPO settings as a config object.

        Raises:
            InvalidConfigError: naming the bad ``grpo.`` key.
        """
        return _section("grpo", GRPOConfig, self.grpo)

    @property
    def rollout_settings(self) -> RolloutConfig:
        """GRPO's rollout placement as a config object (batch size and mode come from ``grpo``).

        Raises:
            InvalidConfigError: naming the bad ``rollout.`` key or value.
        """
        for key in self.rollout:
            if key not in _ROLLOUT_KEYS:
                hint = difflib.get_close_matches(str(key), _ROLLOUT_KEYS, n=1)
                raise InvalidConfigError(f"unknown key rollout.{key!r}" + (
                    f"; did you mean rollout.{hint[0]!r}?" if hint else f"; valid: {_ROLLOUT_KEYS}"))
        try:
            return RolloutConfig(**self.rollout)
        except (TypeError, ValueError) as exc:
            raise InvalidConfigError(f"rollout: {exc}") from None

    @property
    def distributed_config(self) -> DistributedConfig:
        """The data-parallel settings as a config object.

        Raises:
            InvalidConfigError: naming the bad ``distributed.`` key.
        """
        return _section("distributed", DistributedConfig, self.distributed)

    @property
    def sft_config(self) -> SFTConfig | None:
        """The SFT settings as a config object; None without an SFT warm start.

        Raises:
            InvalidConfigError: naming the bad ``sft.`` key.
        """
        return None if self.sft is None else _section("sft", SFTConfig, self.sft)


_LORA_KEYS = ("r", "alpha", "dropout", "target_modules")
_ROLLOUT_KEYS = ("parallel", "num_workers", "address", "threads")


def _check_lora(lora: dict[str, Any]) -> None:
    """Check a recipe's ``lora`` mapping (keys, types, ranges), naming the bad ``lora.`` key."""
    for key in lora:
        if key not in _LORA_KEYS:
            hint = difflib.get_close_matches(str(key), _LORA_KEYS, n=1)
            raise InvalidConfigError(f"unknown key lora.{key!r}" + (f"; did you mean lora.{hint[0]!r}?"
                                                                    if hint else f"; valid: {_LORA_KEYS}"))
    if "r" in lora:
        check_range("lora.r", lora["r"], low=1)
        if not isinstance(lora["r"], int):
            raise InvalidConfigError(f"lora.r must be an integer, got {lora['r']!r}")
    if "alpha" in lora:
        check_range("lora.alpha", lora["alpha"], low=0, low_open=True)
    if "dropout" in lora:
        check_range("lora.dropout", lora["dropout"], low=0, high=1, high_open=True)
    targets = lora.get("target_modules", ["q_proj"])
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise InvalidConfigError(f"lora.target_modules must be a non-empty list of module names, got "
                                 f"{targets!r}")


_VLLM_KEYS = ("gpu_memory_utilization", "max_model_len", "engine_kwargs")
_VLLM_HINT = "pip install 'vgym[vllm]' on a CUDA machine"


def _check_rollout_engine(recipe: Recipe) -> None:
    """Check ``rollout_engine`` and the ``vllm`` section (keys, values, and what the engine needs: a GPU, full
    weights), naming the bad key; whether vLLM is installed is checked last, by :func:`load_recipe`."""
    check_choice("rollout_engine", recipe.rollout_engine, ("hf", "vllm"))
    for key in recipe.vllm:
        if key not in _VLLM_KEYS:
            hint = difflib.get_close_matches(str(key), _VLLM_KEYS, n=1)
            raise InvalidConfigError(f"unknown key vllm.{key!r}" + (f"; did you mean vllm.{hint[0]!r}?"
                                                                    if hint else f"; valid: {_VLLM_KEYS}"))
    if "gpu_memory_utilization" in recipe.vllm:
        check_range("vllm.gpu_memory_utilization", recipe.vllm["gpu_memory_utilization"], low=0, high=1,
                    low_open=True)
    length = recipe.vllm.get("max_model_len")
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
        raise InvalidConfigError(f"vllm.max_model_len must be a positive integer or null, got {length!r}")
    if not isinstance(recipe.vllm.get("engine_kwargs", {}), dict):
        raise InvalidConfigError(f"vllm.engine_kwargs must be a mapping, got "
                                 f"{recipe.vllm['engine_kwargs']!r}")
    if recipe.rollout_engine == "hf":
        if recipe.vllm:
            raise InvalidConfigError("vllm settings are given but rollout_engine is 'hf'; set "
                                     "rollout_engine: vllm or remove them")
        return
    if recipe.device != "cuda":
        raise InvalidConfigError(f"rollout_engine: vllm needs device: cuda (vLLM runs on NVIDIA GPUs), got "
                                 f"device: {recipe.device}")
    if recipe.lora is not None:
        raise InvalidConfigError("rollout_engine: vllm syncs full weights and does not take LoRA adapters; "
                                 "remove lora or use rollout_engine: hf")


def _check_vllm_installed(recipe: Recipe) -> None:
    """Raise, for ``rollout_engine: vllm``, when vLLM is not importable, with the install hint."""
    if recipe.rollout_engine == "vllm" and importlib.util.find_spec("vllm") is None:
        raise InvalidConfigError(f"rollout_engine: vllm needs vLLM, which is not installed: {_VLLM_HINT}")


def _check_reporters(report_to: Any) -> None:
    """Check ``report_to``: registered reporter names, each once, or ``[none]``."""
    if not isinstance(report_to, list):
        raise InvalidConfigError(f"report_to must be a list of reporter names, got {report_to!r}")
    for name in report_to:
        check_choice("report_to", name, [*REPORTERS.names(), "none"])
    if len(set(report_to)) != len(report_to) or ("none" in report_to and len(report_to) > 1):
        raise InvalidConfigError(f"report_to must list distinct reporters, or be [none]; got {report_to}")


def _section(name: str, cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)``, its error naming the key as ``<name>.<field>`` (a message that starts with one of
    ``cls``'s fields gets the prefix, any other ``<name>:``)."""
    try:
        return cls(**values)
    except VgymError as exc:
        text = str(exc)
        fields = {f.name for f in dataclasses.fields(cls)}
        first = re.match(r"\w+", text)
        prefix = f"{name}." if first and first.group() in fields else f"{name}: "
        raise InvalidConfigError(prefix + text) from None


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
    """Read a YAML recipe; ``assignments`` (``dotted.key=value``) and then ``overrides`` replace keys. The
    whole recipe is checked here (see the module docstring), its env built once and closed.

    Args:
        path: the YAML file.
        *assignments: ``dotted.key=value`` overrides (:func:`apply_override`).
        **overrides: top-level keys to replace; None values are ignored.

    Returns:
        The checked :class:`Recipe`.

    Raises:
        InvalidConfigError: for an unknown key (with the closest valid one) or an invalid value, naming the
            file and the key.
    """
    data = _numbers(yaml.safe_load(Path(path).read_text()) or {})
    if not isinstance(data, dict):
        raise InvalidConfigError(f"{path}: a recipe is a mapping of keys, got {type(data).__name__}")
    for assignment in assignments:
        apply_override(data, assignment)
    data.update({k: v for k, v in overrides.items() if v is not None})
    _check_keys(path, "", data, Recipe)
    for section, cls in (("grpo", GRPOConfig), ("sft", SFTConfig), ("env", EnvConfig),
                         ("distributed", DistributedConfig)):
        if isinstance(data.get(section), dict):
            _check_keys(path, f"{section}.", data[section], cls)
    for key in ("task", "task_config", "data_seed"):
        if key in data.get("env", {}):
            raise InvalidConfigError(f"{path}: env.{key} is set by the recipe's own {key!r}; move it there")
    if isinstance(data.get("grpo"), dict) and isinstance(data["grpo"].get("alarms"), dict):
        _check_keys(path, "grpo.alarms.", data["grpo"]["alarms"], AlarmConfig)
    try:
        recipe = Recipe(**data)
        _check_env(recipe)
        _check_vllm_installed(recipe)
    except InvalidConfigError as exc:
        raise InvalidConfigError(f"{path}: {exc}") from None
    return recipe


def _check_env(recipe: Recipe) -> None:
    """Build (and close) the env of GRPO and evaluation, and the SFT data's, as the run will.

    Raises:
        InvalidConfigError: the env's error (an unknown tool, a bad ``task_config`` or ``env`` value), naming
            the recipe keys it came from.
    """
    configs = {"task_config": recipe.task_config}
    if recipe.sft is not None and recipe.sft_task_config is not None:
        configs["sft_task_config"] = recipe.sft_task_config
    for key, task_config in configs.items():
        try:
            _env_fn(recipe, task_config)().close()
        except VgymError as exc:
            raise InvalidConfigError(f"task / {key} / env: {exc}") from None


def _check_keys(path: str | Path, prefix: str, data: dict[str, Any], cls: type) -> None:
    """Raise for a key of ``data`` that is not a field of the dataclass ``cls``, naming the closest one, or
    whose value does not have the field's type (e.g. a quoted ``"1e-6"`` for a number)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1)
            raise InvalidConfigError(f"{path}: unknown key {prefix}{key!r}"
                                     + (f"; did you mean {prefix}{hint[0]!r}?" if hint else ""))
    for key, value in data.items():
        expected = _expected(value, hints[key])
        if expected is not None:
            raise InvalidConfigError(f"{path}: {prefix}{key} must be {expected}, got {value!r}")


def _expected(value: Any, hint: Any) -> str | None:
    """None when ``value`` (as YAML gives it) fits the type ``hint``, else what the hint asks for in words."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        wanted = [_expected(value, arg) for arg in args]
        return None if None in wanted else " or ".join(w for w in wanted if w)
    if hint in _SIMPLE_TYPES:
        words, _, fits = _SIMPLE_TYPES[hint]
        return None if fits(value) else words
    if hint is dict or origin is dict or dataclasses.is_dataclass(hint):
        return None if isinstance(value, dict) or (isinstance(hint, type) and isinstance(value, hint)) else (
            "a mapping")
    if origin in (list, tuple):
        item = args[0] if args else Any
        if isinstance(value, (list, tuple)) and all(_expected(v, item) is None for v in value):
            return None
        return f"a list of {_SIMPLE_TYPES[item][1]}" if item in _SIMPLE_TYPES else "a list"
    return None


_SIMPLE_TYPES: dict[Any, tuple[str, str, Callable[[Any], bool]]] = {
    type(None): ("null", "nulls", lambda v: v is None),
    bool: ("true or false", "booleans", lambda v: isinstance(v, bool)),
    int: ("an integer", "integers", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", "numbers", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    str: ("a string", "strings", lambda v: isinstance(v, str)),
}
"""Type → (it in words, a list of them in words, whether a YAML value fits it)."""


def _model_folder(recipe: Recipe) -> Path:
    """The folder the model loads from: ``<out>/tiny-vlm`` for ``model: tiny``, else ``model``."""
    return Path(recipe.out) / "tiny-vlm" if recipe.model == "tiny" else Path(recipe.model)


def load_model(recipe: Recipe, progress: Progress, *,
               parallel: DataParallel | None = None) -> tuple[Any, Any]:
    """The recipe's ``(model, processor)`` on its device and dtype, with LoRA and gradient checkpointing
    applied; in a data-parallel job on this rank's device (``model: tiny`` is built by rank 0 alone)."""
    import torch

    from vgym.engine.tiny import build_tiny_vlm, load_vlm

    parallel = parallel or DataParallel(device=recipe.device)
    path = _model_folder(recipe)
    if recipe.model == "tiny":
        from vgym.app.quickstart import tokenizer_corpus

        if parallel.is_main and not (path / "config.json").exists():
            progress("build tiny VLM", 0, 1)
            corpus = tokenizer_corpus(recipe.task, recipe.data_seed, task_config=recipe.task_config)
            build_tiny_vlm(path, corpus=corpus)
            progress("build tiny VLM", 1, 1)
        parallel.barrier()
    elif not path.is_dir():
        raise InvalidConfigError(f"model {recipe.model!r} is not a local folder; vgym never downloads "
                                 "checkpoints")
    device = str(parallel.device) if parallel.enabled else recipe.device
    model, processor = load_vlm(path, device=device, dtype=getattr(torch, recipe.dtype))
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


def _evaluate(recipe: Recipe, model: Any, processor: Any, name: str, progress: Progress,
              parallel: DataParallel) -> dict[str, float] | None:
    """The greedy held-out evaluation, on rank 0 (the others wait; their result is None)."""
    summary = None
    with parallel.gathered(model):  # FSDP2: whole weights, so rank 0 generates without the others
        if parallel.is_main:
            decoder = "generate" if parallel.sharded else GenerationConfig.decoder
            generation = GenerationConfig(recipe.max_new_tokens, temperature=0.0, decoder=decoder)
            trajs = collect(_env_fn(recipe, recipe.task_config), HFPolicy(model, processor, generation),
                            ChatEncoder(processor), "test", recipe.eval_episodes,
                            batch_size=recipe.rollout_batch, progress=progress, stage=name)
            save_trajectories(trajs, Path(recipe.out), name)
            summary = summarize(trajs)
        parallel.barrier()
    return summary


def _rollout_policy(recipe: Recipe, model: Any, processor: Any, cfg: GRPOConfig,
                    parallel: DataParallel) -> tuple[Policy, Callable[[Any], None] | None]:
    """GRPO's rollout policy and its weight-sync hook (None when the policy plays ``model`` itself).

    For ``rollout_engine: vllm``: an offline vLLM engine built in this process (this entry layer sets
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` before building it, so weights are handed over by reference) from the
    model folder, sampling as ``cfg`` says and returning processed log-probs (after temperature, as the loss
    scores them); the hook copies ``model.named_parameters()`` into it.
    """
    if recipe.rollout_engine == "hf":
        decoder = "generate" if parallel.sharded else None  # FSDP2: the model's own forward, weights gathered
        return hf_policy(model, processor, cfg, seed=parallel.rank_seed(cfg.seed), decoder=decoder), None
    if parallel.enabled:
        raise InvalidConfigError("rollout_engine: vllm runs in one process only (weight sync across "
                                 "ranks is not written yet); use rollout_engine: hf under torchrun")
    from vgym.policies.vllm import VLLMPolicy, VLLMPolicyConfig

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    settings = dict(recipe.vllm)
    engine_kwargs = {"logprobs_mode": "processed_logprobs", **settings.pop("engine_kwargs", {})}
    probe = _env_fn(recipe, recipe.task_config)()
    max_images = probe.config.max_images
    probe.close()
    policy = VLLMPolicy(VLLMPolicyConfig(
        model=str(_model_folder(recipe)), max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        top_p=cfg.top_p, seed=cfg.seed, max_images=max_images, dtype=recipe.dtype, weight_sync=True,
        engine_kwargs=engine_kwargs, **settings))
    return policy, lambda m: policy.load_weights(m.named_parameters())


def run_recipe(recipe: Recipe, progress: Progress | None = None) -> dict[str, Any]:
    """Run the recipe (see the module docstring).

    Args:
        recipe: a checked recipe (:func:`load_recipe`).
        progress: ``progress(stage, done, total)`` as work advances (stages ``SFT data``, ``SFT``,
            ``eval_before``, ``GRPO``, ``eval_after``); None reports nothing.

    Returns:
        ``{"before": summary, "after": summary, "steps": int, "wall_seconds": float, "alarms": [...]}``, also
        written to ``<out>/results.json`` (``before``, ``after``: without evaluation, absent; a resumed run
        keeps the first run's ``before``).

    Raises:
        KeyboardInterrupt: on Ctrl-C (SIGINT) during SFT or GRPO, after saving the checkpoint of the last
            finished step (``--resume`` continues from it); a second Ctrl-C stops at once without one.
        InvalidConfigError: resuming from a checkpoint of another config or other SFT data, or a model
            folder that cannot be loaded.
    """
    parallel = init_data_parallel(recipe.distributed_config, recipe.device)  # one process without torchrun
    try:
        return _run(recipe, progress if parallel.is_main and progress else (lambda stage, done, total: None),
                    parallel)
    finally:
        parallel.close()


def _run(recipe: Recipe, progress: Progress, parallel: DataParallel) -> dict[str, Any]:
    """:func:`run_recipe` in this process's place of the job (rank 0 writes the run folder's files)."""
    start = time.perf_counter()
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = load_model(recipe, progress, parallel=parallel)
    cfg = recipe.grpo_config
    checkpoints = list_checkpoints(out) if recipe.resume else []
    resume_from = checkpoints[-1] if checkpoints else None
    results = _earlier_before(out) if recipe.resume else {}
    if recipe.sft is not None and resume_from is None:
        _run_sft(recipe, model, processor, progress, parallel)
    if recipe.eval_episodes and "before" not in results and resume_from is None:
        results["before"] = _evaluate(recipe, model, processor, "eval_before", progress, parallel)
        if parallel.is_main:
            write_json(out / "results.json", results)  # kept by a resumed run
    policy, sync = _rollout_policy(recipe, model, processor, cfg, parallel)
    trainer = GRPOTrainer(model, processor, policy, _env_fn(recipe, recipe.task_config), cfg,
                          sync_weights=sync, parallel=parallel, rollout_settings=recipe.rollout_settings)
    if resume_from is not None:
        trainer.load(resume_from)  # syncs the loaded weights into the engine
    elif sync is not None:
        sync(model)  # the engine loaded the folder's weights; the model may have changed since (SFT)
    reporters = make_reporters(recipe.report_to if parallel.is_main else ["none"], out,
                               resume_step=trainer.step_count if resume_from else None)
    saved = {trainer.step_count} if resume_from is not None else set()
    _train_stage(trainer, "GRPO", cfg.steps, out, recipe.save_every, reporters, saved, progress)
    if recipe.eval_episodes:
        results["after"] = _evaluate(recipe, model, processor, "eval_after", progress, parallel)
    results.update({"steps": trainer.step_count, "wall_seconds": time.perf_counter() - start,
                    "alarms": trainer.alarm_log, "processes": parallel.world_size})
    if parallel.is_main:
        write_json(out / "results.json", results)
    return results


def _run_sft(recipe: Recipe, model: Any, processor: Any, progress: Progress, parallel: DataParallel) -> None:
    """The SFT warm start: oracle data, then SFT in place on ``model`` with checkpoints in ``<out>/sft``
    (every ``sft_save_every`` steps, at the end and on Ctrl-C), continued from the newest one when the recipe
    resumes; per-step metrics go to ``<out>/sft/metrics.csv`` (and TensorBoard) as the recipe reports.
    Every rank plays all the oracle episodes (the same data) and trains on its share of each batch."""
    folder = Path(recipe.out) / "sft"
    sft = recipe.sft_config
    assert sft is not None  # the caller runs SFT only for a recipe with an sft section
    sft_task = recipe.sft_task_config if recipe.sft_task_config is not None else recipe.task_config
    teacher = OraclePolicy(skip_tools=recipe.sft_teacher_skip_tools, seed=recipe.data_seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    # the episodes as they are played, images spilled to an unlinked file in `folder` (gone with `data`)
    data, _ = collect_sft_data(_env_fn(recipe, sft_task), teacher, ChatEncoder(processor), "train",
                               recipe.sft_episodes, batch_size=recipe.rollout_batch, progress=progress,
                               stage="SFT data", spill_dir=folder)
    trainer = SFTTrainer(model, data, sft, processor=processor, parallel=parallel)
    earlier = list_checkpoints(folder) if recipe.resume else []
    if earlier:
        trainer.load(earlier[-1])
        logger.info("SFT resumes from %s (step %d of %d)", earlier[-1], trainer.step_count, sft.steps)
    saved = {trainer.step_count} if earlier else set()
    every = recipe.save_every if recipe.sft_save_every is None else recipe.sft_save_every
    names = [n for n in recipe.report_to if n not in ("none", "wandb")]  # W&B: the GRPO run only
    names = names if parallel.is_main else []
    reporters = make_reporters(names, folder, resume_step=trainer.step_count if earlier else None)
    _train_stage(trainer, "SFT", sft.steps, folder, every, reporters, saved, progress)


def _train_stage(trainer: Any, stage: str, total: int, folder: Path, every: int, reporters: list[Any],
                 saved: set[int], progress: Progress) -> None:
    """Train ``trainer`` (SFT or GRPO) to its last step. After each step: log to ``reporters``, report
    ``stage`` progress out of ``total`` and save ``folder/checkpoint-<step>`` every ``every`` steps (0: only
    at the end); Ctrl-C saves and stops (:func:`~vgym.app.interrupts.train_until_interrupted`). The last step
    is always saved; ``saved`` (steps already saved in ``folder``) is kept up to date, ``reporters`` closed."""

    def on_step(step: int, metrics: dict[str, float]) -> None:
        for reporter in reporters:
            reporter.log(step, metrics)
        progress(stage, step, total)
        if every and step % every == 0:
            trainer.save(folder / f"checkpoint-{step}")
            saved.add(step)

    try:
        train_until_interrupted(trainer, on_step, folder, saved, stage)
    finally:
        for reporter in reporters:
            reporter.close()
    if trainer.step_count not in saved:
        trainer.save(folder / f"checkpoint-{trainer.step_count}")


def _earlier_before(out: Path) -> dict[str, Any]:
    """``{"before": ...}`` from an earlier run's ``results.json`` in ``out``; empty when it has none."""
    try:
        earlier = json.loads((out / "results.json").read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:  # written whole (write-then-rename), so only a hand edit gets here
        raise InvalidConfigError(f"{out / 'results.json'} is not JSON ({exc}); move it aside to "
                                 "resume") from None
    return {"before": earlier["before"]} if isinstance(earlier, dict) and "before" in earlier else {}
