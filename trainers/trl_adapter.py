"""Adapters for users who keep TRL's ``GRPOTrainer`` (TRL >= 1.16): vgym data, rewards and environments.

Contents: :func:`parse_sample_id`, :func:`vgym_dataset`, :func:`vgym_reward_func`, :class:`VgymEnvironment`,
:func:`finish_episode`, :func:`vgym_environment_factory`, :func:`vgym_env_reward_func`,
:func:`with_tool_chat_template`.

Which TRL hook fits (read from TRL 1.16's ``grpo_trainer.py``):

* Single-turn (tools off): TRL generates from the dataset's ``prompt`` messages and ``images`` column;
  :func:`vgym_dataset` builds those rows exactly as :class:`~vgym.env.VisualToolEnv` shows them, and
  :func:`vgym_reward_func` scores completions with the task's scorer, finding each sample through the row's
  ``sample_id`` column (TRL repeats every column once per generation and passes it to reward functions).
* Multi-turn tool use with images: ``environment_factory``. TRL exposes an environment's public methods as
  tools (schemas from their signatures and docstrings), calls them when its response parser finds a tool call,
  and accepts a list of content blocks with ``{"type": "image", "image": PIL.Image}`` as a tool result.
  :class:`VgymEnvironment` wraps a :class:`~vgym.env.VisualToolEnv`: each vgym tool becomes a method that
  plays the call as one env step (so turn and image budgets, tool errors and the composite reward are the
  env's own). :func:`vgym_env_reward_func` ends each episode with the completion's final text and returns the
  env's reward. Limits, all TRL's: the chat template must be one TRL can parse tool calls for and that renders
  tool messages, which excludes Qwen2-VL's own template; :func:`with_tool_chat_template` swaps in TRL's
  Qwen3-VL template (same vision tokens). Tool calls are parsed by TRL: a turn it cannot parse as a call ends
  TRL's loop and becomes the final text, which the env then reads with its own protocol (no answer: reward 0).
* ``rollout_func`` does not fit: its outputs cannot carry images (TRL resets ``images`` to the dataset's).

Contract of the rows: ``prompt`` (chat messages, images as ``{"type": "image"}`` items), ``images`` (PIL
images fitted to the env's budget, in placeholder order), ``sample_id`` (``"<task>/<split>/<seed>/<index>"``)
and ``answer`` (the gold answer, for logging only).
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from PIL import Image

from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError, ToolError
from vgym.protocol import HermesProtocol
from vgym.task import TASKS, Sample

__all__ = ["parse_sample_id", "vgym_dataset", "vgym_reward_func", "VgymEnvironment", "finish_episode",
           "vgym_environment_factory", "vgym_env_reward_func", "with_tool_chat_template"]

_SAMPLE_CACHE = 1024
"""Samples a reward function keeps rebuilt (a step scores G completions of each sample)."""


def parse_sample_id(sample_id: str) -> tuple[str, str, int, int]:
    """Split ``"<task>/<split>/<seed>/<index>"`` (see :class:`vgym.task.Sample`).

    Returns:
        ``(task, split, seed, index)``.

    Raises:
        ValueError: if the id does not have that form.
    """
    parts = str(sample_id).split("/")
    if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        raise ValueError(f"sample id must look like '<task>/<split>/<seed>/<index>', got {sample_id!r}")
    return parts[0], parts[1], int(parts[2]), int(parts[3])


def vgym_dataset(task: str, split: str, n: int, seed: int, *, offset: int = 0, tools: Sequence[str] = (),
                 task_config: dict[str, Any] | None = None, max_pixels: int = 224 * 224) -> Any:
    """A ``datasets.Dataset`` of ``n`` samples of ``task`` for TRL's ``GRPOTrainer``.

    Args:
        task: registry name of the task.
        split: "train", "val" or "test".
        n: number of rows (sample indices ``offset .. offset + n - 1``).
        seed: the env's ``data_seed`` (the procedural dataset's base seed).
        offset: first sample index.
        tools: the tools the episode offers. ``()`` (single turn): the prompt is the env's tools-off prompt.
            Otherwise (for :class:`VgymEnvironment`): the env's tools-on user message (image sizes, task
            prompt) under the tools-off system line, since TRL's chat template renders the tool schemas
            itself.
        task_config: the task's config fields; None = defaults.
        max_pixels: the env's image budget; images are stored fitted to it, as the env shows them.

    Returns:
        A ``datasets.Dataset`` with columns ``prompt``, ``images``, ``sample_id`` and ``answer``.

    Raises:
        InvalidConfigError / UnknownNameError: from the env for a bad task, split, tool or budget.
    """
    from datasets import Dataset

    env = VisualToolEnv(task, task_config=task_config, tools=tuple(tools), split=split, data_seed=seed,
                        max_pixels=max_pixels)
    rows: dict[str, list[Any]] = {"prompt": [], "images": [], "sample_id": [], "answer": []}
    plain_system = [{"type": "text", "text": env.protocol.system_prompt([])}]
    for index in range(offset, offset + n):
        obs, info = env.reset(seed=index, options={"split": split, "index": index})
        messages = copy.deepcopy(info["messages"])
        if tools:
            messages[0]["content"] = plain_system
        rows["prompt"].append(messages)
        rows["images"].append([Image.fromarray(im) for im in obs["images"]])
        rows["sample_id"].append(info["sample_id"])
        rows["answer"].append(env.sample.answer)  # type: ignore[union-attr]
    env.close()
    return Dataset.from_dict(rows)


def _final_text(completion: Any) -> str | None:
    """The text of a completion's last model turn: a plain string, or the last assistant message of a
    conversational completion; None when that message is a tool call or the completion ends on a tool
    result."""
    if isinstance(completion, str):
        return completion
    if not completion or completion[-1].get("role") != "assistant" or completion[-1].get("tool_calls"):
        return None
    content = completion[-1].get("content") or ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if isinstance(part, dict))


def vgym_reward_func(
    task_name: str, *, task_config: dict[str, Any] | None = None
) -> Callable[..., list[float]]:
    """A TRL reward function scoring each completion's ``<answer>`` with ``task_name``'s scorer.

    The sample comes from the row's ``sample_id`` (rebuilt from ``(split, index, seed)``; cached). A
    completion without an answer scores 0. The answer is read as the env reads it
    (:class:`~vgym.protocol.HermesProtocol`): the first ``<answer>…</answer>`` of the last model turn.

    Args:
        task_name: registry name of the task the rows come from.
        task_config: the task's config fields (as given to :func:`vgym_dataset`); None = defaults.

    Returns:
        ``reward(prompts, completions, sample_id, **kwargs) -> list[float]``, named ``vgym_<task>_accuracy``
            (TRL
        logs it under ``rewards/<name>``).

    Raises:
        UnknownNameError: for an unknown task (at once). The returned function raises ``ValueError`` for a
        sample id of another task or a malformed one.
    """
    task = TASKS.get(task_name)(task_config)
    protocol = HermesProtocol()

    @lru_cache(maxsize=_SAMPLE_CACHE)
    def sample_of(sample_id: str) -> Sample:
        name, split, seed, index = parse_sample_id(sample_id)
        if name != task_name:
            raise ValueError(
                f"reward function of task {task_name!r} got a sample of task {name!r} ({sample_id})"
            )
        return task.sample(split, index, seed)

    def reward(
        prompts: list[Any], completions: list[Any], sample_id: list[str], **kwargs: Any
    ) -> list[float]:
        # **kwargs: TRL passes every dataset column and trainer hooks (trainer_state, log_metric, ...) by
        # name.
        scores = []
        for completion, sid in zip(completions, sample_id, strict=True):
            text = _final_text(completion)
            answer = protocol.parse(text).answer if text is not None else None
            scores.append(0.0 if answer is None else float(task.score(sample_of(sid), answer)))
        return scores

    reward.__name__ = reward.__qualname__ = f"vgym_{task_name}_accuracy"
    return reward


class VgymEnvironment:
    """A :class:`~vgym.env.VisualToolEnv` in TRL's ``environment_factory`` shape: ``reset(**row)``, one public
    method per vgym tool (added by :func:`vgym_environment_factory`); :func:`finish_episode` ends the episode.

    A tool method takes keyword arguments only, plays the call as one env step and returns the env's
    observation as content blocks, the images first (fitted to the budget, as the env shows them), then the
    tool's text. A failed call (bad arguments, tool error, image budget used up) raises
    :class:`~vgym.errors.ToolError`; TRL shows its message to the model as ``{"error": ...}`` and counts it in
    ``tools/failure_frequency``. Methods named ``_*`` are not tools, and every other public method would be
    one: keep this class's API to attributes.
    """

    def __init__(self, env: VisualToolEnv) -> None:
        """Args:
        env: the env to play (its tools become this object's tool methods).
        """
        self.env = env
        self.done = True
        self.reward = 0.0
        self.tool_calls = 0
        start, _, end = env.protocol.format_tool_response("\0").partition("\0")
        self._wrap = (start, end)  # e.g. "<tool_response>", "</tool_response>": TRL's template adds its own

    def reset(self, *, sample_id: str, **row: Any) -> None:
        """Start the episode of the row's sample (TRL calls this with every dataset column).

        Args:
            sample_id: the row's sample id; its split and index pick the sample, its index seeds the env.
            **row: the other columns (prompt, images, ...), unused: the prompt is the dataset's.

        Returns:
            None: TRL then leaves the dataset's prompt as it is.

        Raises:
            ValueError: if the id belongs to another task or data seed than this env's.
        """
        task, split, seed, index = parse_sample_id(sample_id)
        if task != self.env.task.name or seed != self.env.config.data_seed:
            raise ValueError(f"row {sample_id!r} does not belong to this env (task {self.env.task.name!r}, "
                             f"data_seed {self.env.config.data_seed})")
        self.env.reset(seed=index, options={"split": split, "index": index})
        self.done, self.reward, self.tool_calls = False, 0.0, 0

    def _call(self, name: str, arguments: dict[str, Any]) -> list[dict[str, Any]]:
        if self.done:
            raise ToolError("the episode is over (turn or image budget used up); answer now.")
        obs, reward, terminated, truncated, info = self.env.step(
            self.env.protocol.format_tool_call(name, arguments)
        )
        self.tool_calls += 1
        if terminated or truncated:
            self.done, self.reward = True, float(reward)
        record = info["tool_calls"][0] if info["tool_calls"] else None
        if record is None or not record["ok"]:
            raise ToolError(record["error"] if record else obs["text"])
        text = obs["text"]
        start, end = self._wrap
        if text.startswith(start) and text.endswith(end):
            text = text[len(start) : len(text) - len(end)]
        blocks: list[dict[str, Any]] = [
            {"type": "image", "image": Image.fromarray(im)} for im in obs["images"]
        ]
        return blocks + [{"type": "text", "text": text}]


def finish_episode(environment: VgymEnvironment, text: str | None) -> float:
    """End ``environment``'s episode with the model's final turn and return its reward (a function, not a
    method: TRL would offer every public method to the model as a tool).

    Args:
        environment: the rollout's environment.
        text: the final turn's text; None when the completion ended without a final text turn.

    Returns:
        The env's reward: the composite reward if ``text`` ends the episode (or it had already ended), else
            0.0
        (no answer within TRL's budget, as a truncated vgym episode scores). Calling it again returns the
            same.
    """
    if not environment.done and text is not None:
        _, reward, terminated, truncated, _ = environment.env.step(text)
        if terminated or truncated:
            environment.done, environment.reward = True, float(reward)
    if not environment.done:
        environment.done, environment.reward = True, 0.0
    return environment.reward


def _tool_method(tool_name: str, fn: Callable[..., Any]) -> Callable[..., list[dict[str, Any]]]:
    """A method that plays ``tool_name`` through the env with keyword arguments (TRL calls tools with the
    parsed JSON arguments as keywords). It carries the tool's model-facing signature, annotations and
    docstring, from which TRL builds the schema; the arguments themselves are checked by the env, which
    reports bad ones as a failed call, as it does for vgym's own rollouts."""
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    shown = list(signature.parameters.values())[1:]  # drop the ToolContext

    def method(self: VgymEnvironment, **arguments: Any) -> list[dict[str, Any]]:
        return self._call(tool_name, arguments)

    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = signature.replace(parameters=[self_param, *shown],  # type: ignore[attr-defined]
                                             return_annotation=inspect.Signature.empty)
    # no "return": a shorter schema
    method.__annotations__ = {p.name: hints[p.name] for p in shown if p.name in hints}
    method.__doc__ = fn.__doc__
    method.__name__ = method.__qualname__ = tool_name
    return method


def vgym_environment_factory(task: str, **env_config: Any) -> Callable[[], VgymEnvironment]:
    """TRL's ``environment_factory`` for ``task``: each call builds a fresh :class:`VgymEnvironment`.

    Args:
        task: registry name of the task.
        **env_config: :class:`~vgym.env.EnvConfig` fields (``tools``, ``max_turns``, ``max_pixels``,
            ``data_seed``, ...); use the same ``data_seed``, ``tools``, ``task_config`` and ``max_pixels`` as
            :func:`vgym_dataset`.

    Returns:
        A zero-argument callable; its instances' class has one method per tool of the env.

    Raises:
        InvalidConfigError: if the env offers no tool (use the single-turn path), or for bad config values.
    """
    probe = VisualToolEnv(task, **env_config)
    if not probe.tools:
        raise InvalidConfigError(f"the {task!r} env offers no tool; train single-turn with vgym_dataset + "
                                 "vgym_reward_func instead of environment_factory")
    methods = {name: _tool_method(name, tool.fn) for name, tool in probe.tools.items()}
    probe.close()
    camel = "".join(part.capitalize() for part in task.split("_"))
    cls = type(f"Vgym{camel}Environment", (VgymEnvironment,), methods)

    def factory() -> VgymEnvironment:
        return cls(VisualToolEnv(task, **env_config))

    return factory


def vgym_env_reward_func(prompts: list[Any], completions: list[Any], environments: list[VgymEnvironment],
                         **kwargs: Any) -> list[float]:
    """TRL reward function for the ``environment_factory`` path: each rollout's env ends its episode with the
    completion's final text and returns the env's composite reward (accuracy, format, tool parts).

    Args:
        prompts: unused (TRL's signature).
        completions: conversational completions, one per rollout.
        environments: TRL's per-rollout environment instances (:class:`VgymEnvironment`).
        **kwargs: the other columns and hooks TRL passes by name (unused).

    Returns:
        One reward per completion.
    """
    return [finish_episode(env, _final_text(c)) for env, c in zip(environments, completions, strict=True)]


def with_tool_chat_template(processor: Any) -> Any:
    """A copy of ``processor`` whose chat template is TRL's Qwen3-VL template.

    TRL's tool loop needs a template it can parse tool calls for and that renders assistant ``tool_calls`` and
    ``tool`` messages; Qwen2-VL's template does neither. Qwen3-VL's uses the same ``<|vision_start|>``,
    ``<|image_pad|>``, ``<|im_start|>`` tokens and Hermes ``<tool_call>`` JSON, so it fits Qwen2-VL /
    Qwen2.5-VL tokenizers (a model not trained on it must learn the tool format, as it must learn vgym's).

    Raises:
        ImportError: without TRL.
    """
    from trl.chat_template_utils import qwen3_vl_chat_template

    out = copy.deepcopy(processor)
    out.chat_template = qwen3_vl_chat_template
    return out
