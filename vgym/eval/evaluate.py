"""Seeded, resumable evaluation of a policy on task suites (``vgym eval``).

Contents: :data:`SUITES_PATH`, :class:`SuiteEntry`, :func:`load_suites`, :class:`EvalConfig`,
:func:`episode_record`, :func:`run_eval`.

Episodes are played by :func:`vgym.rollout.loop.rollout`, the loop training uses: token by token for policies
with a processor (``hf:``, ``vllm:``), as text for the others (the oracle, the random baseline, a served
model). The policy named by :attr:`EvalConfig.policy` is loaded by :func:`vgym.policies.spec.make_policy`.

A run folder holds ``config.json`` (the :class:`EvalConfig`), ``episodes.jsonl`` (one line per
``(task, difficulty, index, attempt)``, appended with fsync as each episode ends), ``failures/`` (the
trajectory of every episode with accuracy < 1, for ``vgym view``, saved before its line is appended) and
``report.json`` (see :mod:`vgym.eval.reports`). A killed run continues where it stopped: lines already in
``episodes.jsonl`` are skipped, a torn last line is cut off, so no episode is scored twice. ``n`` and ``k``
may grow between runs; every other config field must match. A full disk stops the run with an :class:`OSError`
naming the file; the files written before are intact (JSON files are written then renamed, a failed append is
rolled back), so the run resumes once there is space.

Episode ``i`` of a task is item ``i`` of its test split (``data_seed = config.seed``); attempt ``j`` of it
resets the env with a seed drawn from ``SeedSequence([seed, i, j])`` and is played by the policy built for
attempt ``j``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError
from vgym.policies.spec import PolicyMaker, make_policy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout
from vgym.rollout.trajectory import Trajectory, append_line, save_trajectories, write_json
from vgym.task import TASKS, Task
from vgym.tooling import TOOLS

__all__ = ["SUITES_PATH", "SuiteEntry", "load_suites", "EvalConfig", "episode_record", "run_eval"]

SUITES_PATH = Path(__file__).resolve().parents[2] / "configs" / "suites.yaml"
"""The default suites file (``configs/suites.yaml`` of the repository)."""

Progress = Callable[[str, int, int], None]


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
    ``openai:URL[#model]`` (model defaults to ``default``)."""
    suite: tuple[str, ...] = ("spatial",)
    """Suite names of ``configs/suites.yaml`` (``spatial``, ``video``, ``visual``, ``all``) and/or task
    names."""
    n: int = 200
    """Episodes per task and difficulty: items ``0 .. n-1`` of the test split."""
    k: int = 1
    """Attempts per episode (avg@k, pass@k)."""
    seed: int = 0
    """Data seed of every task, and root of the env and policy seeds."""
    tools: str = "default"
    """``default`` (the task's tools and backends), ``off`` (no tools: the ablation) or ``oracle`` (the task's
    tools with every tool's ``oracle`` backend where it has one: the oracle-tool ablation)."""
    difficulties: tuple[int, ...] | None = None
    """Levels for every task that has a ``difficulty`` field, replacing the suite's; None keeps the
    suite's."""
    task_config: dict[str, Any] = field(default_factory=dict)
    """Overrides applied to each task whose config has the field (e.g. ``{"clip_dir": "/tmp/clips"}``)."""
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
    save_failures: bool = True
    """Save the trajectory (with images) of every episode with accuracy < 1 under ``failures/``."""

    def __post_init__(self) -> None:
        self.suite = (self.suite,) if isinstance(self.suite, str) else tuple(self.suite)
        if self.difficulties is not None:
            self.difficulties = tuple(self.difficulties)
        if self.n < 1 or self.k < 1 or self.batch_size < 1 or self.seed < 0:
            raise InvalidConfigError(f"need n, k, batch_size >= 1 and seed >= 0; got n={self.n}, k={self.k}, "
                                     f"batch_size={self.batch_size}, seed={self.seed}")
        if self.tools not in ("default", "off", "oracle"):
            raise InvalidConfigError(f"tools must be 'default', 'off' or 'oracle', got {self.tools!r}")
        if not 0.0 < self.correct_threshold <= 1.0:
            raise InvalidConfigError(f"correct_threshold must be in (0, 1], got {self.correct_threshold}")

    @property
    def sampling_temperature(self) -> float:
        """The temperature model policies use."""
        if self.temperature is not None:
            return self.temperature
        return 0.0 if self.k == 1 else 1.0

    def entries(self, suites: dict[str, list[SuiteEntry]] | None = None) -> list[SuiteEntry]:
        """The task entries to run, each task once, with the difficulty and task-config overrides applied.

        Raises:
            UnknownNameError: for a name that is neither a suite nor a task.
        """
        suites = suites if suites is not None else load_suites()
        picked: dict[str, SuiteEntry] = {}
        for name in self.suite:
            if name in suites:
                found = suites[name]
            else:
                cls = TASKS.get(name)  # raises UnknownNameError, listing the valid names
                found = [next((e for e in suites["all"] if e.task == cls.name), SuiteEntry(cls.name))]
            for entry in found:
                picked.setdefault(entry.task, entry)
        out = []
        for entry in picked.values():
            fields = {f.name for f in dataclasses.fields(TASKS.get(entry.task).config_cls)}
            config = {**entry.task_config, **{k: v for k, v in self.task_config.items() if k in fields}}
            levels = entry.difficulties
            if self.difficulties is not None and "difficulty" in fields:
                levels = self.difficulties
            out.append(SuiteEntry(entry.task, config, levels))
        return out


def episode_record(traj: Trajectory, task: Task, tools_enabled: bool, threshold: float) -> dict[str, Any]:
    """Per-episode scores and tool metrics of one trajectory (the metric fields of an ``episodes.jsonl``
    line).

    Returns:
        ``accuracy``, ``correct`` (accuracy >= ``threshold``), ``reward``, ``reward_parts``, ``format_ok``,
        ``answered``, ``calls``, ``ok_calls``, ``failed_calls``, ``necessary_call`` (a call to one of the
            task's
        necessary tools; None when the task claims none or tools are off), ``turns``, ``tokens`` and
        ``policy_tokens`` (None for text-only policies), ``backends`` (the tool backends called, sorted),
        ``truncated_reason`` and ``answer``.
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
        "failed_calls": sum(not c["ok"] for c in calls), "necessary_call": necessary, "turns": traj.num_turns,
        "tokens": tokens or None, "policy_tokens": int(traj.loss_mask.sum()) if tokens else None,
        "backends": sorted({c["backend"] for c in calls if c.get("backend")}),
        "truncated_reason": traj.truncated_reason, "answer": traj.answer,
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


def _check_config(out: Path, config: EvalConfig) -> None:
    """Write ``config.json``, or check that the run folder's matches (``n`` and ``k`` may differ)."""
    path = out / "config.json"
    current = json.loads(json.dumps(dataclasses.asdict(config)))
    if path.exists():
        saved = json.loads(path.read_text())
        differ = sorted(
            k for k in set(saved) | set(current) if k not in ("n", "k") and saved.get(k) != current.get(k)
        )
        if differ:
            raise InvalidConfigError(
                f"{out} holds a run with another config ({', '.join(differ)} differ: "
                f"{[saved.get(k) for k in differ]} vs {[current.get(k) for k in differ]}); "
                "use a new --out folder"
            )
    write_json(path, current)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


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
        InvalidConfigError: if ``out`` holds a run with another config, or its ``episodes.jsonl`` is damaged.
        OSError: when a file of the run folder cannot be written (e.g. a full disk), naming it; earlier files
            are intact and a later call resumes.
    """
    from vgym.eval.reports import build_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, config)
    path = out / "episodes.jsonl"
    done = _read_done(path)
    maker = policy or make_policy(
        config.policy,
        device=config.device,
        temperature=config.sampling_temperature,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
    )
    encoder = ChatEncoder(maker.processor) if maker.processor is not None else None
    for entry in config.entries(suites):
        for level in entry.difficulties:
            task_config = dict(entry.task_config, **({} if level is None else {"difficulty": level}))
            _run_group(config, out, entry.task, level, task_config, maker, encoder, done, path, progress)
    report = build_report(out)
    write_json(out / "report.json", report)
    return report


def _run_group(
    config: EvalConfig,
    out: Path,
    task: str,
    level: int | None,
    task_config: dict[str, Any],
    maker: PolicyMaker,
    encoder: ChatEncoder | None,
    done: set,
    path: Path,
    progress: Progress | None,
) -> None:
    """Every missing (index, attempt) of one task at one difficulty."""
    tools: tuple[str, ...] | None = None if config.tools != "off" else ()
    probe = VisualToolEnv(task, task_config=task_config, data_seed=config.seed, split="test", tools=tools)
    runtime = {}
    if config.tools == "oracle":
        runtime = {"backends": {n: "oracle" for n in probe.tools if "oracle" in TOOLS.get(n).backends}}
        probe.close()
        probe = VisualToolEnv(task, task_config=task_config, data_seed=config.seed, split="test", tools=tools,
                              tool_runtime=runtime)
    stage = task if level is None else f"{task} d{level}"
    total, finished = config.n * config.k, [0]
    finished[0] = sum((task, level, i, j) in done for i in range(config.n) for j in range(config.k))
    if progress:
        progress(stage, finished[0], total)
    try:
        for attempt in range(config.k):
            specs = [EpisodeSpec("test", i, group_id=i, seed=_seed(config.seed, i, attempt))
                     for i in range(config.n) if (task, level, i, attempt) not in done]
            if not specs:
                continue

            def on_episode(traj: Trajectory, attempt: int = attempt) -> None:
                index = traj.group_id
                record = {"task": task, "difficulty": level, "index": index, "attempt": attempt,
                          "sample_id": traj.sample_id, "env_seed": _seed(config.seed, index, attempt),
                          **episode_record(traj, probe.task, probe.tools_enabled, config.correct_threshold),
                          "chance": probe.task.chance_accuracy(), "trajectory": None}
                if config.save_failures and record["accuracy"] < 1.0:
                    name = f"{task}{'' if level is None else f'_d{level}'}_i{index}_a{attempt}"
                    rel = save_trajectories([traj], out / "failures", name).relative_to(out)
                    record["trajectory"] = str(rel)
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
