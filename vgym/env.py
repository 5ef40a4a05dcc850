"""The multi-turn visual tool environment.

Contents: :class:`EnvConfig`, :class:`ToolCallRecord`, :class:`VisualToolEnv`.

One episode = one task sample. The observation is the *new message* (text + images) the env adds to the
conversation; the action is the model's text for one turn. Tool calls run inside :meth:`VisualToolEnv.step`;
every malformed call or tool failure becomes an error message in the observation, never an exception.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from vgym.errors import InvalidConfigError, ToolError
from vgym.protocol import ActionProtocol, HermesProtocol
from vgym.rewards import RewardConfig, composite_reward
from vgym.spaces import TextSpace, message_space
from vgym.task import SPLITS, TASKS, Sample, Task
from vgym.tool_runtime import ToolRuntime, ToolRuntimeConfig
from vgym.tooling import TOOLS, Tool, ToolContext, fit_to_budget

__all__ = ["EnvConfig", "ToolCallRecord", "VisualToolEnv", "MAX_ASPECT_RATIO", "SampleCache", "SAMPLES",
           "IMAGE_BUDGET_ERROR"]

logger = logging.getLogger(__name__)

_MAX_MESSAGE_CHARS = 2000
"""Error and tool texts longer than this are cut: error messages quote the model's input, which is
unbounded."""

MAX_ASPECT_RATIO = 100
"""Longest side over shortest side of an image a tool may return: vision processors reject extreme shapes
(Qwen2-VL refuses ratios above 200), so a thinner result (a 1-px-high crop) becomes an error observation
instead."""

_INDEX_RANGE = 2**31 - 1

IMAGE_BUDGET_ERROR = "image budget exhausted"
"""``ToolCallRecord.error`` of a call whose images would have taken the episode past ``max_images``: its
images were not shown, the model was told how many remain, and the episode went on."""


class SampleCache:
    """A small process-wide LRU of samples keyed by (task, version, config, split, index, seed).

    The episodes of a GRPO group (and repeated evaluations) reset to the same sample in different env slots;
    generation is a pure function of the key, so it runs once. Cached images are made read-only, so a tool
    that tried to draw on an episode image in place would fail loudly instead of corrupting later episodes.
    """

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict[str, Sample] = collections.OrderedDict()
        self._fitted: collections.OrderedDict[tuple[int, int], tuple[Sample, list[np.ndarray]]] = (
            collections.OrderedDict())
        self._lock = threading.Lock()

    def get(self, task: Task, split: str, index: int, seed: int) -> Sample:
        """``task.sample(split, index, seed)``, from the cache when present."""
        config = dataclasses.asdict(task.config) if dataclasses.is_dataclass(task.config) else task.config
        key = json.dumps([task.name, task.version, config, split, index, seed], sort_keys=True, default=str)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        sample = task.sample(split, index, seed)
        for image in sample.images:
            image.flags.writeable = False
        with self._lock:
            self._items[key] = sample
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return sample

    def fitted(self, sample: Sample, max_pixels: int) -> list[np.ndarray]:
        """``sample``'s images fitted to ``max_pixels`` (:func:`~vgym.tooling.fit_to_budget`), read-only,
        resized once per sample and budget: a group's episodes would otherwise each resize the same large
        image. At most ``2 * capacity`` entries are kept; an entry holds its sample, so its ``id`` cannot be
        reused."""
        key = (id(sample), max_pixels)
        with self._lock:
            if key in self._fitted:
                self._fitted.move_to_end(key)
                return self._fitted[key][1]
        images = [fit_to_budget(im, max_pixels) for im in sample.images]
        for image in images:
            image.flags.writeable = False
        with self._lock:
            self._fitted[key] = (sample, images)
            while len(self._fitted) > 2 * self.capacity:
                self._fitted.popitem(last=False)
        return images


SAMPLES = SampleCache()
"""The env's sample cache (see :class:`SampleCache`)."""
"""Sample indices drawn by ``reset`` without ``options["index"]`` come from [0, 2**31 - 1)."""


@dataclass
class EnvConfig:
    """Configuration of a :class:`VisualToolEnv`."""

    task: str
    """Registry name of the task (see ``vgym list``)."""
    task_config: dict[str, Any] | None = None
    """Fields of the task's config dataclass; None means its defaults."""
    split: str | None = None
    """Default split for ``reset`` ("train", "val" or "test"; None: the task's ``default_split``, "train" for
    all but RealMini's "test"); ``options["split"]`` overrides it."""
    data_seed: int = 0
    """Base seed of the procedural dataset: item i of a split is a pure function of (data_seed, split, i)."""
    tools: tuple[str, ...] | None = None
    """Tools offered to the model; None = the task's default tools, () = tools off (the ablation)."""
    max_turns: int = 4
    """Model turns before the episode is truncated (Mini-o3, arXiv:2509.07969, trains with a small cap)."""
    max_pixels: int = 224 * 224
    """Image budget: every image the model sees is resized to H·W ≤ max_pixels."""
    max_images: int = 20
    """Most images in one episode (sample images + tool outputs). A call whose images would exceed it shows
    none of them and gets an error saying how many images remain; the episode goes on (``max_turns`` still
    ends it). 20 fits a video record's 4 overview frames plus two ``sample_frames`` calls of 8 (their
    default)."""
    max_calls_per_turn: int = 1
    """Tool calls honoured per turn; extra calls are reported as a format error."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Weights of the composite reward."""
    tool_runtime: ToolRuntimeConfig = field(default_factory=ToolRuntimeConfig)
    """Backends, backend options, result cache, timeout and isolation of the tools (a dict is accepted)."""

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise InvalidConfigError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.max_turns < 1 or self.max_pixels < 28 * 28 or self.max_images < 1 or self.data_seed < 0:
            raise InvalidConfigError(
                "need max_turns >= 1, max_pixels >= 784, max_images >= 1, data_seed >= 0; got "
                f"{self.max_turns}, {self.max_pixels}, {self.max_images}, {self.data_seed}"
            )
        if isinstance(self.reward, dict):
            self.reward = RewardConfig(**self.reward)
        if isinstance(self.tool_runtime, dict):
            self.tool_runtime = ToolRuntimeConfig(**self.tool_runtime)
        if isinstance(self.tools, str):
            raise InvalidConfigError(
                f"tools must be a sequence of tool names such as ('crop',), got the string {self.tools!r}"
            )
        if self.tools is not None:
            self.tools = tuple(self.tools)


@dataclass
class ToolCallRecord:
    """One tool call of an episode, as logged in ``info["tool_calls"]``."""

    turn: int
    name: str
    arguments: dict[str, Any]
    ok: bool
    error: str | None
    latency_s: float
    image_indices: list[int]
    backend: str | None = None
    cache_hit: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class VisualToolEnv(gym.Env[dict, str]):
    """A gymnasium env where a VLM answers a visual question, optionally calling tools first.

    Observation: ``{"text": str, "images": tuple[np.ndarray, ...]}`` — the new message. Action: the model's
    text for one turn (see :class:`vgym.protocol.HermesProtocol`).

    ``info`` after ``reset``/``step`` holds ``messages`` (the new chat messages, images as
    ``{"type": "image"}`` items in the order of ``obs["images"]``), ``tool_calls`` (this step's
    :class:`ToolCallRecord` dicts), ``format_errors`` (episode total), ``num_turns`` and ``sample_id``; the
    final step (the episode is over) adds ``reward_parts``, ``answer`` (the model's, None when truncated),
    ``question`` and ``gold`` (the sample's question and gold answer, for the records written after an
    episode: trajectories, eval reports, the viewer; :func:`vgym.rollout.loop.rollout` never hands them to a
    policy).

    >>> import gymnasium, vgym
    >>> env = gymnasium.make("vgym/VisualSearch-v0")
    >>> obs, info = env.reset(seed=0)
    >>> sorted(obs)
    ['images', 'text']
    """

    metadata = {"render_modes": []}

    def __init__(self, task: str, protocol: ActionProtocol | None = None, **config: Any) -> None:
        """Args:
        task: registry name of the task.
        protocol: the action convention; defaults to :class:`HermesProtocol`.
        **config: the other :class:`EnvConfig` fields.

        Raises:
            UnknownNameError: for an unknown task or tool name.
            InvalidConfigError: for invalid config values.
        """
        self.config = EnvConfig(task=task, **config)
        self.task: Task = TASKS.get(task)(self.config.task_config)
        if self.config.split is None:
            self.config.split = self.task.default_split
        names = self.task.default_tools if self.config.tools is None else self.config.tools
        self.tools: dict[str, Tool] = {name: TOOLS.get(name) for name in names}
        self.runtime = ToolRuntime(self.config.tool_runtime)
        for tool in self.tools.values():  # an unknown backend name is a config error: fail at construction
            tool.backend(self.runtime.backend_name(tool))
        self.protocol: ActionProtocol = protocol or HermesProtocol(self.config.max_calls_per_turn)
        self.action_space = TextSpace()
        self.observation_space = message_space(100_000, self.config.max_images, self.config.max_pixels)
        self.sample: Sample | None = None
        self._images: list[np.ndarray] = []
        self._turn = 0
        self._format_errors = 0
        self._tool_ok = 0
        self._done = True

    @property
    def tools_enabled(self) -> bool:
        """Whether this env offers any tool."""
        return bool(self.tools)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode.

        Args:
            seed: seeds the env's RNG (which picks the sample index unless ``options`` names one).
            options: optional ``split`` and ``index`` to pick the sample, e.g. so a GRPO group shares one.

        Returns:
            ``(obs, info)``: the system + user messages' text and the sample's images fitted to the budget.
        """
        super().reset(seed=seed)
        options = options or {}
        split = options.get("split", self.config.split)
        index = options.get("index")
        if index is None:
            index = int(self.np_random.integers(0, _INDEX_RANGE))
        self.sample = SAMPLES.get(self.task, split, int(index), self.config.data_seed)
        self._images = [np.ascontiguousarray(im) for im in self.sample.images]
        self._turn = self._format_errors = self._tool_ok = 0
        self._done = False
        # new arrays every reset
        shown = [fit.copy() for fit in SAMPLES.fitted(self.sample, self.config.max_pixels)]
        content: list[dict[str, Any]] = []
        for i, im in enumerate(self._images):
            content.append({"type": "image"})
            if self.tools_enabled:  # tools address images by index and full-resolution pixel coordinates
                content.append({"type": "text", "text": f"[image {i}: {im.shape[1]}x{im.shape[0]}]"})
        content.append({"type": "text", "text": self.task.prompt(self.sample, self.tools_enabled)})
        system = self.protocol.system_prompt([tool.schema for tool in self.tools.values()])
        messages = [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": content},
        ]
        obs = {"text": _message_text(messages), "images": tuple(shown)}
        return obs, self._info(messages, [])

    def step(self, action: str) -> tuple[dict, SupportsFloat, bool, bool, dict]:
        """Play one model turn.

        Args:
            action: the model's text for this turn.

        Returns:
            ``(obs, reward, terminated, truncated, info)``. ``terminated`` is True once the model answered;
            ``truncated`` is True at ``max_turns`` (a call past the image budget is an error observation,
            not the end: see :data:`IMAGE_BUDGET_ERROR`). After either, call
            :meth:`reset`. ``reward`` is 0 until the episode ends, then the composite reward (parts in
            ``info["reward_parts"]``).

        Raises:
            RuntimeError: if called before :meth:`reset` or after the episode ended (a caller bug).
        """
        if self._done or self.sample is None:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        self._turn += 1
        parsed = self.protocol.parse(action)
        self._format_errors += bool(parsed.errors)
        if parsed.answer is not None:
            return self._finish(parsed.answer)
        pieces: list[str] = [_clip(f"Error: {e}") for e in parsed.errors]
        content: list[dict[str, Any]] = []
        shown: list[np.ndarray] = []
        records: list[ToolCallRecord] = []
        for call in parsed.tool_calls:
            record, text, images = self._run_tool(call.name, call.arguments)
            records.append(record)
            if len(self._images) + len(images) > self.config.max_images:
                record.ok, record.error = False, IMAGE_BUDGET_ERROR
                text, images = self._budget_error(len(images)), []
            for im in images:
                record.image_indices.append(len(self._images))
                self._images.append(im)
                shown.append(fit_to_budget(im, self.config.max_pixels, upscale=True))
                content.append({"type": "image"})
                text += f" [image {len(self._images) - 1}: {im.shape[1]}x{im.shape[0]}]"
            pieces.append(self.protocol.format_tool_response(_clip(text.strip())))
        self._tool_ok += sum(r.ok for r in records)
        content.append({"type": "text", "text": _clip("\n".join(pieces), 4 * _MAX_MESSAGE_CHARS)})
        messages = [{"role": "user", "content": content}]
        obs = {"text": _message_text(messages), "images": tuple(shown)}
        truncated = self._turn >= self.config.max_turns
        info = self._info(messages, records)
        reward = 0.0
        if truncated:
            self._done = True
            parts = composite_reward(0.0, False, self._tool_ok > 0, self.config.reward)
            info["reward_parts"], reward = parts.as_dict(), parts.total
            info["answer"] = None
            info.update(self._facts())
        return obs, reward, False, truncated, info

    def _budget_error(self, wanted: int) -> str:
        """The observation of a call whose ``wanted`` images would exceed ``max_images``."""
        left = self.config.max_images - len(self._images)
        room = f"only {left} of the episode's {self.config.max_images} images remain" if left else (
            f"all of the episode's {self.config.max_images} images are used"
        )
        return (
            f"Error: this call returns {wanted} image{'s' if wanted != 1 else ''} but {room}, so none was "
            "shown. Ask for fewer images, or answer with what you have seen."
        )

    def _run_tool(self, name: str, arguments: dict[str, Any]) -> tuple[ToolCallRecord, str, list[np.ndarray]]:
        """Run one call; every failure becomes an error text for the model."""
        record = ToolCallRecord(
            self._turn, name, arguments, ok=False, error=None, latency_s=0.0, image_indices=[]
        )
        tool = self.tools.get(name)
        if tool is None:
            available = sorted(self.tools) or "none (answer directly)"
            record.error = f"Unknown tool {name!r}. Available tools: {available}."
            return record, f"Error: {record.error}", []
        ctx = ToolContext(
            self._images,
            self.sample.metadata,
            self.np_random,
            self.config.max_pixels,  # type: ignore[union-attr]
            video=self.sample.video,
            arrays=self.sample.arrays,
        )  # type: ignore[union-attr]
        record.backend = self.runtime.backend_name(tool)
        start = time.perf_counter()
        try:
            result, call = self.runtime.call(tool, ctx, arguments)
            record.cache_hit = call.cache_hit
        except ToolError as exc:
            record.error = str(exc)
        except Exception as exc:  # a tool bug must not kill a whole rollout; it is logged loudly instead
            logger.exception("tool %s crashed on %r", name, arguments)
            record.error = f"internal error in {name}: {type(exc).__name__}"
        record.latency_s = time.perf_counter() - start
        if record.error is None:
            for im in result.images:
                h, w = im.shape[:2]
                if min(h, w) < 1 or max(h, w) > MAX_ASPECT_RATIO * min(h, w):
                    record.error = (
                        f"{name} returned a {w}x{h} image, more elongated than {MAX_ASPECT_RATIO}:1, "
                        "which cannot be shown; ask for a less elongated region."
                    )
                    break
        if record.error is not None:
            return record, f"Error: {record.error}", []
        record.ok = True
        return record, result.text, list(result.images)

    def close(self) -> None:
        """Release the tool workers; calling it twice is harmless."""
        self.runtime.close()
        super().close()

    def _finish(self, answer: str) -> tuple[dict, SupportsFloat, bool, bool, dict]:
        self._done = True
        accuracy = self.task.score(self.sample, answer)  # type: ignore[arg-type]
        parts = composite_reward(accuracy, self._format_errors == 0, self._tool_ok > 0, self.config.reward)
        info = self._info([], [])
        info["reward_parts"], info["answer"] = parts.as_dict(), answer
        info.update(self._facts())
        return {"text": "", "images": ()}, parts.total, True, False, info

    def _facts(self) -> dict[str, Any]:
        """What the final step's ``info`` tells the episode's records: the question and the gold answer."""
        return {"question": self.sample.question, "gold": self.sample.answer}  # type: ignore[union-attr]

    def _info(self, messages: list[dict[str, Any]], records: list[ToolCallRecord]) -> dict[str, Any]:
        return {
            "messages": messages,
            "tool_calls": [r.as_dict() for r in records],
            "format_errors": self._format_errors,
            "num_turns": self._turn,
            "sample_id": self.sample.id if self.sample else None,
        }


def _clip(text: str, limit: int = _MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marking the cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 14] + " …[truncated]"


def _message_text(messages: list[dict[str, Any]]) -> str:
    """The text parts of ``messages`` joined by newlines (images omitted)."""
    return "\n".join(
        part["text"] for message in messages for part in message["content"] if part.get("type") == "text"
    )
