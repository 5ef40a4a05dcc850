"""Task contract and registry.

Contents: :class:`Sample`, :class:`Solution`, :class:`Task`, :data:`TASKS`, :func:`register_task`,
:func:`register_task_lazily`, :func:`sample_seed`, :func:`env_id`, :func:`task_env_id`.

A task family lives in one file under ``tasks/``: a config dataclass, a :class:`Task` subclass whose
:meth:`Task.sample` is a pure function of ``(split, index, seed)``, its scorer, prompt, default tools and
oracle solution, and one registration line at the bottom::

    register_task(VisualSearchTask)

Registering also registers the gymnasium id ``vgym/<CamelName>-v<version>``. vgym's own tasks are registered
lazily (:mod:`vgym.catalog`): their names and gymnasium ids exist from ``import vgym`` on, and a task's module
is imported on first use; its registration line then replaces the lazy entry.
"""

from __future__ import annotations

import dataclasses
import difflib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium
import numpy as np

from vgym.errors import InvalidConfigError
from vgym.registry import Registry

__all__ = ["Sample", "Solution", "Task", "TASKS", "register_task", "register_task_lazily", "sample_seed",
           "env_id", "task_env_id", "SPLITS"]

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Procedural splits; each has its own seed stream, so they are disjoint by construction."""


@dataclass(frozen=True)
class Sample:
    """One task instance.

    Attributes:
        id: stable identifier ``"<task>/<split>/<seed>/<index>"``.
        task: the task's registry name.
        split: "train", "val" or "test".
        index: position in the split.
        question: the user-facing question (the task's prompt adds instructions around it).
        images: the sample's images at full resolution, RGB uint8 (H, W, 3).
        answer: the canonical gold answer as text.
        metadata: scene ground truth for oracle tools and scorers (JSON-serialisable).
        video: path of the sample's video file (video tasks), or None.
        arrays: ground-truth arrays for oracle tools, never shown to the model (e.g. ``"depth"`` (H, W)
            float32 metres of image 0, ``"masks"`` (N, H, W) bool per object of ``metadata["objects"]``,
            ``"right"`` the right view of a rectified stereo pair).
    """

    id: str
    task: str
    split: str
    index: int
    question: str
    images: tuple[np.ndarray, ...]
    answer: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    video: str | None = None
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Solution:
    """The oracle's plan: tool calls ``(name, arguments)`` in order, then the answer."""

    tool_calls: tuple[tuple[str, dict[str, Any]], ...]
    answer: str


def sample_seed(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator for item ``index`` of ``split``: ``SeedSequence([seed, split_id, index])``.

    Mixing through ``SeedSequence`` (never ``seed + index``) keeps items of different seeds and splits
    unrelated.

    Raises:
        InvalidConfigError: for a negative seed/index or an unknown split.
    """
    if split not in SPLITS:
        raise InvalidConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
    if seed < 0 or index < 0:
        raise InvalidConfigError(f"seed and index must be non-negative ints, got seed={seed}, index={index}")
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


class Task(ABC):
    """Base class of a task family.

    Set these in ALL subclasses: ``name`` (snake_case registry key), ``config_cls`` (a dataclass),
    ``default_tools`` (tool names offered when the env config does not choose). SOME subclasses set
    ``version`` (bump when rewards, observations or tools change meaning), ``procedural = False`` (tasks that
    read a dataset from disk, whose config has no usable default), ``default_split`` (when "train" is empty),
    and ``necessary_tools`` together with
    :meth:`counterfactuals` (the tool-necessity claim and its evidence, checked by ``vgym diagnose`` and the
    tests).
    """

    name: ClassVar[str]
    config_cls: ClassVar[type]
    default_tools: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[int] = 0
    procedural: ClassVar[bool] = True
    """True when samples are generated (the default config works anywhere); False for dataset loaders, which
    need a local path in their config, so registry-wide checks (``check_env``, ``vgym diagnose``) skip them by
    default."""
    default_split: ClassVar[str] = "train"
    """The split an env resets to when neither its config nor ``reset`` options name one (a task whose data
    is all test, such as RealMini, sets "test")."""
    necessary_tools: ClassVar[tuple[str, ...]] = ()
    """The claim "without one of these tools the answer is not recoverable from the images the model is
    shown": made only with :meth:`counterfactuals` as evidence. Empty = no claim (tools may still help)."""

    def __init__(self, config: Any = None) -> None:
        """Args:
        config: an instance of ``config_cls``, a mapping of its fields, or None for defaults.

        Raises:
            InvalidConfigError: for a mapping with a key that is not a field (naming the closest field and
                listing them all), or a value the config refuses.
        """
        if config is None:
            config = self.config_cls()
        elif isinstance(config, Mapping):
            fields = [f.name for f in dataclasses.fields(self.config_cls) if f.init]
            for key in config:
                if key not in fields:
                    close = difflib.get_close_matches(str(key), fields, n=1)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise InvalidConfigError(f"{self.name} has no config field {key!r}.{hint} Its fields: "
                                             f"{', '.join(fields)}")
            config = self.config_cls(**config)
        elif not isinstance(config, self.config_cls):
            raise InvalidConfigError(
                f"{self.name} expects a {self.config_cls.__name__}, got {type(config).__name__}"
            )
        self.config = config

    @abstractmethod
    def sample(self, split: str, index: int, seed: int) -> Sample:
        """Generate item ``index`` of ``split``; a pure function of the arguments and ``self.config``."""

    @abstractmethod
    def score(self, sample: Sample, answer: str) -> float:
        """Accuracy of ``answer`` (the text inside ``<answer>``) for ``sample``, in [0, 1]."""

    @abstractmethod
    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        """The user message text for ``sample`` (the question plus any task instructions)."""

    def answer_choices(self) -> tuple[str, ...] | None:
        """The finite answer set, where the task has one (used for chance levels and noisy oracles)."""
        return None

    def chance_accuracy(self) -> float | None:
        """Expected accuracy of a uniform guess over :meth:`answer_choices`, or None without a finite set."""
        choices = self.answer_choices()
        return 1.0 / len(choices) if choices else None

    @abstractmethod
    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        """The oracle plan for ``sample``; with ``tools_enabled=False`` it answers without tools."""

    def counterfactuals(self, sample: Sample) -> list[Sample]:
        """The other members of ``sample``'s look-alike class: samples the generator could also have produced
        that look the same *without tools* but have other answers.

        Evidence for :attr:`necessary_tools`. Each returned sample's images, fitted to the env's default
        budget (``fit_to_budget(image, 224 * 224)``), must be byte-identical to ``sample``'s. The class
        (``sample`` plus this list) must be complete and canonical: the same set of answers whichever member
        it is computed from, so a policy without tools, which sees only what the class shares, can pick its
        answer from the class alone and is right at most ``max_a mean_m score(m, a)`` of the time. A class may
        fix hidden facts besides the shown images (e.g. an event's length); the bound then assumes the policy
        knew them, so it stays an upper bound. ``vgym diagnose`` verifies identity and different answers (it
        never trusts the list) and the tests check canonicity. Samples returned here may carry ``video=None``
        (the check needs only images and answers). Default: ``[]`` (no evidence for this sample).
        """
        return []


TASKS: Registry[type[Task]] = Registry("task")

_ENV_ENTRY_POINT = "vgym.env:VisualToolEnv"


def task_env_id(name: str, version: int) -> str:
    """The gymnasium id of task ``name`` at ``version``: ``vgym/<CamelName>-v<version>``."""
    return f"vgym/{''.join(part.capitalize() for part in name.split('_'))}-v{version}"


def env_id(task_cls: type[Task]) -> str:
    """The gymnasium id of a task: ``vgym/<CamelName>-v<version>``."""
    return task_env_id(task_cls.name, task_cls.version)


def _register_env_id(name: str, version: int) -> None:
    """Register the gymnasium id of ``name`` unless it is registered already for the same task."""
    gym_id = task_env_id(name, version)
    spec = gymnasium.registry.get(gym_id)
    if spec is not None and spec.entry_point == _ENV_ENTRY_POINT and spec.kwargs.get("task") == name:
        return
    gymnasium.register(gym_id, entry_point=_ENV_ENTRY_POINT, kwargs={"task": name})


def register_task(task_cls: type[Task]) -> type[Task]:
    """Register ``task_cls`` under its ``name`` and register its gymnasium id.

    Raises:
        VgymError: if the name is taken (by a task defined elsewhere).
        TypeError: if ``config_cls`` is not a dataclass.
    """
    if not dataclasses.is_dataclass(task_cls.config_cls):
        raise TypeError(f"{task_cls.__name__}.config_cls must be a dataclass")
    TASKS.register(task_cls.name, task_cls)
    _register_env_id(task_cls.name, task_cls.version)
    return task_cls


def register_task_lazily(name: str, target: str, version: int = 0) -> None:
    """Register task ``name`` and its gymnasium id without importing the task's module.

    Args:
        name: the task's registry name (its class's ``name``).
        target: ``"package.module:ClassName"``; the module is imported on first :meth:`Registry.get`.
        version: the class's ``version`` (it fixes the gymnasium id; ``tests/test_catalog.py`` checks both).

    Raises:
        VgymError: if the name is taken.
    """
    TASKS.register(name, target)
    _register_env_id(name, version)
