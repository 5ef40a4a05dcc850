"""Seeded, resumable evaluation of a policy on task suites (``vgym eval``).

Contents: :data:`SUITES_PATH`, :data:`SAVE_MODES`, :class:`SuiteEntry`, :func:`load_suites`,
:class:`EvalConfig`, :func:`episode_record`, :func:`run_eval`.

Episodes are played by :func:`vgym.rollout.loop.rollout`, the loop training uses: token by token for policies
with a processor (``hf:``, ``vllm:``), as text for the others (the oracle, the random baseline, a served
model). The policy named by :attr:`EvalConfig.policy` is loaded by :func:`vgym.policies.spec.make_policy`.

A run starts only when everything it needs is there: the suite names resolve (an unknown name is answered with
the closest suite or task), every task builds with its config (a dataset's ``root`` exists, no config key is
misspelt) and the policy loads. Only then is ``config.json`` (the :class:`EvalConfig`) written, so a failed
start leaves the folder free for the corrected command. A run folder then holds ``config.json``,
``episodes.jsonl`` (one line per ``(task, difficulty, index, attempt)``, appended with fsync as each episode
ends), ``failures/`` (with ``save_trajectories="failures"``, the default: the trajectory of every episode with
accuracy < 1) or ``trajectories/`` (``"all"``: every episode), saved before the episode's line is appended and
read by ``vgym view``, and ``report.json`` (see :mod:`vgym.eval.reports`). A killed run continues where it
stopped: lines already in ``episodes.jsonl`` are skipped, a torn last line is cut off, so no episode is scored
twice. ``n``, ``k`` and the output-only fields (``save_trajectories``, ``count_errors_as_failures``) may
change between runs; every other config field must match (a folder whose ``config.json`` has no episode yet is
taken over by the new config). A full disk stops the run with an :class:`OSError` naming the file; the files
written before are intact (JSON files are written then renamed, a failed append is rolled back), so the run
resumes once there is space.

Episode ``i`` of a task is item ``i`` of its test split (``data_seed = config.seed``); attempt ``j`` of it
resets the env with a seed drawn from ``SeedSequence([seed, i, j])`` and is played by the policy built for
attempt ``j``. A dataset task (:class:`~vgym.data.dataset_task.DatasetTask`) whose test split holds fewer than
``n`` records plays each record once (never one twice: repeats are not independent episodes), and the report
says so.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vgym.data.dataset_task import DatasetTask
from vgym.env import IMAGE_BUDGET_ERROR, VisualToolEnv
from vgym.errors import InvalidConfigError, UnknownNameError
from vgym.policies.spec import PolicyMaker, make_policy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout
from vgym.rollout.trajectory import Trajectory, append_line, save_trajectories, write_json
from vgym.task import TASKS, Task
from vgym.tooling import TOOLS

__all__ = ["SUITES_PATH", "SAVE_MODES", "SuiteEntry", "load_suites", "EvalConfig", "episode_record",
           "run_eval"]

logger = logging.getLogger(__name__)

SUITES_PATH = Path(__file__).resolve().parents[2] / "configs" / "suites.yaml"
"""The default suites file (``configs/suites.yaml`` of the repository)."""

SAVE_MODES = ("failures", "all", "none")
"""Values of :attr:`EvalConfig.save_trajectories`."""

Progress = Callable[[str, int, int], None]

_OUTPUT_ONLY = ("n", "k", "save_trajectories", "save_failures", "count_errors_as_failures")
"""Config fields that may change when a run folder is resumed: they change what is run next or reported, not
what an episode already scored means."""


@dataclass(frozen=True)
class SuiteEntry:
    """One task of a suite."""

    task: str
    """Task registry name."""
    task_config: dict[str, Any] = field(default_factory=dict)
    """Fields of the task's config dataclass (before the eval's own overrides)."""
    difficulties: tuple[int | None, ...] = (None,)
    """Levels evaluated separately; ``None`` = the task config as given."""


def load_suites(path: str | Path = SUITES_PATH) -> dict[str, list[SuiteEntry]]:
    """Read the suites file; adds ``"all"``, the union of every suite (each task once, first entry wins).

    Raises:
        InvalidConfigError: for a malformed file or an entry without ``task``.
    """
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("suites"), dict):
        raise InvalidConfigError(f"{path}: expected a mapping with a 'suites' mapping")
    suites: dict[str, list[SuiteEntry]] = {}
    for name, suite in data["suites"].items():
        entries = []
        for raw in suite.get("tasks", []):
            if not isinstance(raw, dict) or "task" not in raw:
                raise InvalidConfigError(f"{path}: suite {name!r} has an entry without 'task': {raw!r}")
            levels = tuple(raw.get("difficulties") or (None,))
            entries.append(SuiteEntry(raw["task"], dict(raw.get("task_config") or {}), levels))
        suites[name] = entries
    seen: dict[str, SuiteEntry] = {}
    for entries in suites.values():
        for entry in entries:
            seen.setdefault(entry.task, entry)
    suites["all"] = list(seen.values())
    return suites


@dataclass
class EvalConfig:
    """What ``vgym eval`` runs."""

    policy: str
    """``oracle``, ``random`` (uniform over the task's answer choices, no tools), ``hf:DIR``, ``vllm:DIR`` or
    ``openai:URL[#model[,key=value...]]`` (model defaults to ``default``; keys ``tool_calling`` and
    ``tool_images``, see :mod:`vgym.policies.spec`)."""
    suite: tuple[str, ...] = ("spatial",)
    """Suite names of ``configs/suites.yaml`` (``spatial``, ``video``, ``visual``, ``all``) and/or task
    names."""
    n: int = 200
    """Episodes per task and difficulty: items ``0 .. n-1`` of the test split (a dataset with fewer test
    records plays each once)."""
    k: int = 1
    """Attempts per episode (avg@k, pass@k)."""
    seed: int = 0
    """Data seed of every task, and root of the env and policy seeds."""
    tools: str | tuple[str, ...] = "default"
    """``"default"`` (the task's tools and backends), ``"off"`` (no tools: the ablation), ``"oracle"`` (the
    task's tools with every tool's ``oracle`` backend where it has one: the oracle-tool ablation), or a tuple
    of registered tool names offered instead of the task's (a list is accepted)."""
    difficulties: tuple[int, ...] | None = None
    """Levels for every task that has a ``difficulty`` field, replacing the suite's; None keeps the
    suite's."""
    task_config: dict[str, Any] = field(default_factory=dict)
    """Overrides applied to each task whose config has the field (e.g. ``{"root": "/data/x"}``,
    ``{"clip_dir": "/tmp/clips"}``). A key that no task of the run has is an error naming the closest field.
    A ``difficulty`` key is the level of the tasks that have one (like :attr:`difficulties`)."""
    correct_threshold: float = 0.5
    """An attempt counts as correct for pass@k when its accuracy is at least this (IoU tasks score in [0, 1];
    0.5 is the usual IoU cut, e.g. RefCOCO); in (0, 1]."""
    temperature: float | None = None
    """Sampling temperature of model policies; None = 0 (greedy) when ``k == 1``, else 1.0."""
    max_new_tokens: int = 256
    """Most tokens per model turn."""
    batch_size: int = 16
    """Episodes in flight."""
    device: str = "auto"
    """``hf:`` policies: ``cpu``, ``cuda`` or ``auto`` (cuda when available)."""
    save_trajectories: str = "failures"
    """Trajectories (with images) saved for ``vgym view``: ``"failures"`` (accuracy < 1, under
    ``failures/``), ``"all"`` (under ``trajectories/``) or ``"none"``."""
    count_errors_as_failures: bool = False
    """Score episodes that could not run (the sample's media failed to load, or the policy's server refused a
    request) as failures (accuracy 0) instead of leaving them out of accuracy and pass@k; they are counted as
    ``could_not_run`` either way."""
    save_failures: bool | None = None
    """Deprecated, use :attr:`save_trajectories`: True means ``"failures"``, False ``"none"``; None (the
    default) leaves ``save_trajectories`` as it is."""

    def __post_init__(self) -> None:
        self.suite = (self.suite,) if isinstance(self.suite, str) else tuple(self.suite)
        if self.difficulties is not None:
            self.difficulties = tuple(self.difficulties)
        if self.n < 1 or self.k < 1 or self.batch_size < 1 or self.seed < 0:
            raise InvalidConfigError(f"need n, k, batch_size >= 1 and seed >= 0; got n={self.n}, k={self.k}, "
                                     f"batch_size={self.batch_size}, seed={self.seed}")
        if isinstance(self.tools, str):
            if self.tools not in ("default", "off", "oracle"):
                raise InvalidConfigError(f"tools must be 'default', 'off', 'oracle' or a tuple of tool "
                                         f"names, got {self.tools!r}")
        else:
            self.tools = tuple(self.tools)
            if not self.tools:
                raise InvalidConfigError("tools names no tool; use tools='off' for the no-tools ablation")
            for name in self.tools:
                if name not in TOOLS:
                    TOOLS.get(name)  # raises UnknownNameError with the closest registered tool
        if not 0.0 < self.correct_threshold <= 1.0:
            raise InvalidConfigError(f"correct_threshold must be in (0, 1], got {self.correct_threshold}")
        if self.save_failures is not None:
            warnings.warn("EvalConfig.save_failures is deprecated; use save_trajectories='failures' or "
                          "'none'", DeprecationWarning, stacklevel=3)
            self.save_trajectories = "failures" if self.save_failures else "none"
            self.save_failures = None
        if self.save_trajectories not in SAVE_MODES:
            raise InvalidConfigError(f"save_trajectories must be one of {SAVE_MODES}, got "
                                     f"{self.save_trajectories!r}")

    @property
    def sampling_temperature(self) -> float:
        """The temperature model policies use."""
        if self.temperature is not None:
            return self.temperature
        return 0.0 if self.k == 1 else 1.0

    @property
    def env_tools(self) -> tuple[str, ...] | None:
        """The env's ``tools`` argument: None (the task's own, for ``default`` and ``oracle``), ``()`` (off),
        or the named tools."""
        if isinstance(self.tools, tuple):
            return self.tools
        return () if self.tools == "off" else None

    def entries(self, suites: dict[str, list[SuiteEntry]] | None = None) -> list[SuiteEntry]:
        """The task entries to run, each task once, with the difficulty and task-config overrides applied.

        Args:
            suites: the suites (default: :func:`load_suites`).

        Returns:
            One entry per task, in suite order.

        Raises:
            UnknownNameError: for a name that is neither a suite nor a task, naming the closest of either (a
                near-suite name suggests the suite, a near-task name the task).
            InvalidConfigError: for a :attr:`task_config` key that no task of the run has (naming the closest
                field), or a ``difficulty`` given both there and in :attr:`difficulties`.
        """
        suites = suites if suites is not None else load_suites()
        picked: dict[str, SuiteEntry] = {}
        for name in self.suite:
            if name in suites:
                found = suites[name]
            elif name in TASKS:
                cls = TASKS.get(name)
                found = [next((e for e in suites["all"] if e.task == cls.name), SuiteEntry(cls.name))]
            else:
                raise _unknown_suite(name, suites)
            for entry in found:
                picked.setdefault(entry.task, entry)
        fields = {e.task: [f.name for f in dataclasses.fields(TASKS.get(e.task).config_cls) if f.init]
                  for e in picked.values()}
        _check_task_config(self.task_config, fields)
        if "difficulty" in self.task_config and self.difficulties is not None:
            raise InvalidConfigError("give the difficulty once: as difficulties (--difficulty) or in the "
                                     "task config, not both")
        out = []
        for entry in picked.values():
            own = {k: v for k, v in self.task_config.items() if k in fields[entry.task] and k != "difficulty"}
            levels = entry.difficulties
            if "difficulty" in fields[entry.task]:
                if self.difficulties is not None:
                    levels = self.difficulties
                elif "difficulty" in self.task_config:
                    levels = (self.task_config["difficulty"],)
            out.append(SuiteEntry(entry.task, {**entry.task_config, **own}, levels))
        return out


def _check_task_config(config: dict[str, Any], fields: dict[str, list[str]]) -> None:
    """Check the keys of ``config`` against the config fields of the run's tasks (task -> its fields).

    A key that no task has is an error naming the closest field when the run is one task, or when the key is
    close to a field (a misspelling); otherwise (several tasks, e.g. ``clip_dir`` for a suite without video
    tasks) it is logged as ignored.

    Raises:
        InvalidConfigError: as said above.
    """
    known = sorted({f for names in fields.values() for f in names})
    for key in config:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        if len(fields) > 1 and not close:
            logger.warning("task config key %r is ignored: no task of this run (%s) has that field", key,
                           ", ".join(fields))
            continue
        hint = f" Did you mean {close[0]!r}?" if close else ""
        which = next(iter(fields)) if len(fields) == 1 else f"no task of this run ({', '.join(fields)})"
        raise InvalidConfigError(f"{which} has no config field {key!r}.{hint} Fields: {', '.join(known)}")


def _unknown_suite(name: str, suites: dict[str, list[SuiteEntry]]) -> UnknownNameError:
    """The error for a ``--suite`` name that is neither a suite nor a task, suggesting the closest of both."""
    names = sorted(suites)
    tasks = TASKS.names()
    close = difflib.get_close_matches(name, names + tasks, n=1)
    hint = ""
    if close:
        hint = f" Did you mean the {'suite' if close[0] in suites else 'task'} {close[0]!r}?"
    return UnknownNameError(
        f"{name!r} is neither a suite nor a task.{hint} Suites: {', '.join(names)}; tasks: "
        f"{', '.join(tasks)} (your own tasks need --import MODULE)"
    )


def episode_record(traj: Trajectory, task: Task, tools_enabled: bool, threshold: float) -> dict[str, Any]:
    """Per-episode scores and tool metrics of one trajectory (the metric fields of an ``episodes.jsonl``
    line).

    Returns:
        ``accuracy``, ``correct`` (accuracy >= ``threshold``), ``reward``, ``reward_parts``, ``format_ok``,
        ``answered``, ``calls``, ``ok_calls``, ``failed_calls``, ``budget_errors`` (calls refused because
        their images would have exceeded the env's ``max_images``), ``necessary_call`` (a call to one of the
        task's necessary tools; None when the task claims none or tools are off), ``turns``, ``tokens`` and
        ``policy_tokens`` (None for text-only policies), ``backends`` (the tool backends called, sorted),
        ``truncated_reason``, ``answer`` (the model's, None when it gave none), ``question`` and ``gold`` (the
        sample's question and gold answer; None when the sample could not be loaded).
    """
    calls = [c for turn in traj.turns for c in turn["tool_calls"]]
    accuracy = float(traj.reward_parts.get("accuracy", 0.0))
    necessary = None
    if task.necessary_tools and tools_enabled:
        necessary = any(c["name"] in task.necessary_tools for c in calls)
    tokens = int(traj.input_ids.numel())
    return {
        "accuracy": accuracy, "correct": accuracy >= threshold, "reward": float(traj.reward),
        "reward_parts": {k: float(v) for k, v in traj.reward_parts.items()},
        "format_ok": bool(traj.reward_parts.get("format", 0.0) >= 1.0), "answered": traj.answer is not None,
        "calls": len(calls), "ok_calls": sum(bool(c["ok"]) for c in calls),
        "failed_calls": sum(not c["ok"] for c in calls),
        "budget_errors": sum(c.get("error") == IMAGE_BUDGET_ERROR for c in calls),
        "necessary_call": necessary, "turns": traj.num_turns,
        "tokens": tokens or None, "policy_tokens": int(traj.loss_mask.sum()) if tokens else None,
        "backends": sorted({c["backend"] for c in calls if c.get("backend")}),
        "truncated_reason": traj.truncated_reason, "answer": traj.answer, "question": traj.question,
        "gold": traj.gold_answer,
    }


def _read_done(path: Path) -> set[tuple[str, int | None, int, int]]:
    """Keys of the lines already in ``episodes.jsonl``; a torn last line (no newline, or not JSON) is cut
    off."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # a line written only in part when the run was killed
        with path.open("r+b") as fh:
            fh.truncate(end)
    done = set()
    for number, line in enumerate(data[:end].decode().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError as exc:
            raise InvalidConfigError(
                f"{path} line {number} is not JSON ({exc}); the run folder is damaged"
            ) from None
        done.add((r["task"], r["difficulty"], r["index"], r["attempt"]))
    return done


def _config_json(config: EvalConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _check_resume(out: Path, config: EvalConfig) -> None:
    """Refuse a run folder whose episodes were played with another config (output-only fields and the
    episode counts may differ; a field an older ``config.json`` lacks counts as its default).

    Raises:
        InvalidConfigError: naming the fields that differ.
    """
    path = out / "config.json"
    episodes = out / "episodes.jsonl"
    if not path.exists() or not episodes.exists() or b"\n" not in episodes.read_bytes():
        return  # nothing was scored under the old config (e.g. a start that failed): the folder is free
    saved = json.loads(path.read_text())
    current = _config_json(config)
    defaults = _config_json(EvalConfig(policy=config.policy))
    differ = sorted(k for k in set(saved) | set(current)
                    if k not in _OUTPUT_ONLY and saved.get(k, defaults.get(k)) != current.get(k))
    if differ:
        raise InvalidConfigError(
            f"{out} holds a run with another config ({', '.join(differ)} differ: "
            f"{[saved.get(k) for k in differ]} vs {[current.get(k) for k in differ]}); "
            "use a new --out folder"
        )


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


@dataclass(frozen=True)
class _Group:
    """One task at one difficulty, as planned before the run starts."""

    task: str
    level: int | None
    task_config: dict[str, Any]
    episodes: int
    """Episodes to play: ``n``, or the test split's record count when a dataset holds fewer."""
    split_records: int | None
    """Records in a dataset task's test split; None for procedural tasks."""


def _plan(config: EvalConfig, suites: dict[str, list[SuiteEntry]] | None) -> list[_Group]:
    """Resolve the suites and build every task with its config (a bad config fails here, before anything is
    written or loaded).

    Raises:
        UnknownNameError, InvalidConfigError: for an unknown suite or task, a bad task config (e.g. a
            dataset ``root`` that is not a folder), or a dataset without a test record.
    """
    groups = []
    for entry in config.entries(suites):
        for level in entry.difficulties:
            task_config = dict(entry.task_config, **({} if level is None else {"difficulty": level}))
            task = TASKS.get(entry.task)(task_config)
            records = None
            if isinstance(task, DatasetTask):
                records = len(task.split_records("test"))
                if records == 0:
                    raise InvalidConfigError(f"{entry.task}: the dataset has no record in the test split (a "
                                             "record's split defaults to test); nothing to evaluate")
            episodes = config.n if records is None else min(config.n, records)
            groups.append(_Group(entry.task, level, task_config, episodes, records))
    return groups


def run_eval(
    config: EvalConfig,
    out: str | Path,
    progress: Progress | None = None,
    *,
    suites: dict[str, list[SuiteEntry]] | None = None,
    policy: PolicyMaker | None = None,
) -> dict[str, Any]:
    """Run (or resume) the evaluation in ``out`` and write ``report.json``.

    Args:
        config: what to run.
        out: the run folder (created; an existing one is resumed).
        progress: ``progress(stage, done, total)`` per finished episode, one stage per task and difficulty.
        suites: the suites (default: :func:`load_suites`).
        policy: an already loaded policy (default: :func:`~vgym.policies.spec.make_policy` of
            ``config.policy``).

    Returns:
        The report (:func:`vgym.eval.reports.build_report`), also written to ``<out>/report.json``.

    Raises:
        UnknownNameError: for an unknown suite, task or tool name (naming the closest).
        InvalidConfigError: if ``out`` holds a run with another config, or its ``episodes.jsonl`` is damaged;
            for a bad task config or a policy that cannot be loaded (e.g. a missing ``hf:`` folder). Nothing
            is written to ``out`` when the run could not start.
        OSError: when a file of the run folder cannot be written (e.g. a full disk), naming it; earlier files
            are intact and a later call resumes.
    """
    from vgym.eval.reports import build_report

    out = Path(out)
    _check_resume(out, config)
    groups = _plan(config, suites)
    try:
        maker = policy or make_policy(
            config.policy,
            device=config.device,
            temperature=config.sampling_temperature,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
        )
    except FileNotFoundError as exc:  # e.g. hf:DIR with no checkpoint there: the user's mistake
        raise InvalidConfigError(f"policy {config.policy!r}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", _config_json(config))  # the run starts: its config is now the folder's
    path = out / "episodes.jsonl"
    done = _read_done(path)
    encoder = ChatEncoder(maker.processor) if maker.processor is not None else None
    for group in groups:
        _run_group(config, out, group, maker, encoder, done, path, progress)
    report = build_report(out)
    write_json(out / "report.json", report)
    return report


def _run_group(
    config: EvalConfig,
    out: Path,
    group: _Group,
    maker: PolicyMaker,
    encoder: ChatEncoder | None,
    done: set,
    path: Path,
    progress: Progress | None,
) -> None:
    """Every missing (index, attempt) of one task at one difficulty."""
    task, level, task_config = group.task, group.level, group.task_config
    tools = config.env_tools
    probe = VisualToolEnv(task, task_config=task_config, data_seed=config.seed, split="test", tools=tools)
    runtime = {}
    if config.tools == "oracle":
        runtime = {"backends": {n: "oracle" for n in probe.tools if "oracle" in TOOLS.get(n).backends}}
        probe.close()
        probe = VisualToolEnv(task, task_config=task_config, data_seed=config.seed, split="test", tools=tools,
                              tool_runtime=runtime)
    stage = task if level is None else f"{task} d{level}"
    n = group.episodes
    total, finished = n * config.k, [0]
    finished[0] = sum((task, level, i, j) in done for i in range(n) for j in range(config.k))
    if progress:
        progress(stage, finished[0], total)
    try:
        for attempt in range(config.k):
            specs = [EpisodeSpec("test", i, group_id=i, seed=_seed(config.seed, i, attempt))
                     for i in range(n) if (task, level, i, attempt) not in done]
            if not specs:
                continue

            def on_episode(traj: Trajectory, attempt: int = attempt) -> None:
                index = traj.group_id
                record = {"task": task, "difficulty": level, "index": index, "attempt": attempt,
                          "sample_id": traj.sample_id, "env_seed": _seed(config.seed, index, attempt),
                          **episode_record(traj, probe.task, probe.tools_enabled, config.correct_threshold),
                          "chance": probe.task.chance_accuracy(), "split_records": group.split_records,
                          "trajectory": None}
                failed = record["accuracy"] < 1.0
                mode = config.save_trajectories
                if mode == "all" or (mode == "failures" and failed):
                    name = f"{task}{'' if level is None else f'_d{level}'}_i{index}_a{attempt}"
                    folder = out / ("failures" if mode == "failures" else "trajectories")
                    record["trajectory"] = str(save_trajectories([traj], folder, name).relative_to(out))
                append_line(path, json.dumps(record) + "\n")  # fsynced; a kill loses at most this line
                done.add((task, level, index, attempt))
                finished[0] += 1
                if progress:
                    progress(stage, finished[0], total)

            policy = maker.make(_seed(config.seed, attempt, 1))
            env_fn = functools.partial(VisualToolEnv, task, task_config=task_config, data_seed=config.seed,
                                       split="test", tools=tools, tool_runtime=runtime)
            rollout(
                env_fn,
                policy,
                encoder,
                specs,
                RolloutConfig(batch_size=config.batch_size),
                on_episode=on_episode,
            )
    finally:
        probe.close()
