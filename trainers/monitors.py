"""Training monitors: rollout metrics, metric reporters (CSV, TensorBoard, W&B) and training alarms.

Contents:
    :func:`rollout_metrics` — ``rollout/…`` and ``tool/<name>/…`` metrics of a batch of trajectories.
    :class:`Reporter` — the protocol every reporter follows; :class:`CSVReporter`, :class:`TensorBoardReporter`,
    :class:`WandbReporter`; :data:`REPORTERS` (name → factory) and :func:`make_reporters` (``report_to`` list →
    reporters); :func:`read_metrics_csv` reads a CSV log back.
    :class:`AlarmConfig` and :class:`AlarmMonitor` — the tool-collapse, likelihood-drift (LLD) and optional
    entropy-collapse alarms.

Contracts: step functions return metric dicts and only reporters emit them (STYLE.md §9); every reporter takes a
``resume_step`` so that a resumed run first discards what it logged after its checkpoint and then appends, and
:class:`AlarmMonitor` round-trips its state through :meth:`~AlarmMonitor.state_dict` for an exact resume.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vgym.errors import InvalidConfigError
from vgym.registry import Registry
from vgym.tooling import TOOLS
from vgym.trajectory import Trajectory

__all__ = [
    "rollout_metrics",
    "Reporter",
    "CSVReporter",
    "TensorBoardReporter",
    "WandbReporter",
    "REPORTERS",
    "make_reporters",
    "read_metrics_csv",
    "AlarmConfig",
    "AlarmMonitor",
]

logger = logging.getLogger(__name__)

UNKNOWN_TOOL = "_unknown"
"""The ``tool/<name>/…`` bucket for calls to names that are not registered tools (model-invented names would
otherwise add a new metric column per typo)."""


def rollout_metrics(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Summarise a batch of finished episodes.

    Args:
        trajectories: the episodes of one rollout batch (any number of GRPO groups).

    Returns:
        Means over episodes: ``rollout/reward``, ``rollout/accuracy`` and ``rollout/format`` (reward parts; a
        missing part counts 0), ``rollout/<part>_reward`` for any other part except ``total`` (the env's
        ``tool`` part gives ``rollout/tool_reward``), ``rollout/tool_calls_per_episode``, ``rollout/turns``,
        ``rollout/policy_tokens`` (``loss_mask`` sum), ``rollout/truncated_rate``. Ratios:
        ``rollout/tool_error_rate`` (failed calls / calls; 0 when no call was made),
        ``rollout/zero_std_groups`` (fraction of ``group_id`` groups whose rewards are all exactly equal, so GRPO
        gets no signal from them; a group of one counts as zero-std). ``rollout/episodes``: the batch size.
        Per tool with at least one call: ``tool/<name>/calls`` (calls per episode) and ``tool/<name>/error_rate``;
        unregistered names are pooled under ``tool/_unknown/…``.

    Raises:
        ValueError: if ``trajectories`` is empty.
    """
    if not trajectories:
        raise ValueError("rollout_metrics needs at least one trajectory, got an empty batch")
    n = len(trajectories)
    parts = sorted({p for t in trajectories for p in t.reward_parts} - {"accuracy", "format", "total"})
    out = {
        "rollout/reward": float(np.mean([t.reward for t in trajectories])),
        "rollout/accuracy": float(np.mean([t.reward_parts.get("accuracy", 0.0) for t in trajectories])),
        "rollout/format": float(np.mean([t.reward_parts.get("format", 0.0) for t in trajectories])),
    }
    for part in parts:
        out[f"rollout/{part}_reward"] = float(np.mean([t.reward_parts.get(part, 0.0) for t in trajectories]))
    calls: dict[str, int] = defaultdict(int)
    errors: dict[str, int] = defaultdict(int)
    for traj in trajectories:
        for turn in traj.turns:
            for call in turn["tool_calls"]:
                name = call["name"] if call["name"] in TOOLS else UNKNOWN_TOOL
                calls[name] += 1
                errors[name] += not call["ok"]
    total_calls = sum(calls.values())
    groups: dict[int, list[float]] = defaultdict(list)
    for traj in trajectories:
        groups[traj.group_id].append(traj.reward)
    out |= {
        "rollout/tool_calls_per_episode": total_calls / n,
        "rollout/tool_error_rate": sum(errors.values()) / total_calls if total_calls else 0.0,
        "rollout/truncated_rate": sum(t.truncated for t in trajectories) / n,
        "rollout/turns": float(np.mean([t.num_turns for t in trajectories])),
        "rollout/policy_tokens": float(np.mean([float(t.loss_mask.sum()) for t in trajectories])),
        "rollout/zero_std_groups": sum(len(set(r)) == 1 for r in groups.values()) / len(groups),
        "rollout/episodes": float(n),
    }
    for name in sorted(calls):
        out[f"tool/{name}/calls"] = calls[name] / n
        out[f"tool/{name}/error_rate"] = errors[name] / calls[name]
    return out


# ---------------------------------------------------------------------------------------------------- reporters
@runtime_checkable
class Reporter(Protocol):
    """Something that emits a step's metrics. Implementations must make :meth:`close` safe to call twice."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Emit ``metrics`` (flat ``area/name`` keys, finite or not) for optimizer step ``step``."""

    def close(self) -> None:
        """Flush and release resources; a second call does nothing."""


class CSVReporter:
    """Append one row per step to a CSV file whose columns are ``step`` then the union of all metric keys.

    When a step brings keys not seen before, the file is rewritten once (atomically, via a temporary file and
    ``os.replace``) with the widened header; earlier rows get empty cells there. Values are written with
    ``repr`` so floats read back bit-exact. Opening an existing file continues it: its rows are kept (after
    ``resume_step`` filtering) and new rows are appended. A torn last line (a crash mid-write) is dropped.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.csv"
    >>> with CSVReporter(path) as rep:
    ...     rep.log(1, {"loss/pg": 0.5})
    ...     rep.log(2, {"loss/pg": 0.25, "rollout/reward": 1.0})
    >>> read_metrics_csv(path)
    [{'step': 1.0, 'loss/pg': 0.5}, {'step': 2.0, 'loss/pg': 0.25, 'rollout/reward': 1.0}]
    """

    def __init__(self, path: str | Path, *, resume_step: int | None = None) -> None:
        """Args:
        path: the CSV file; created with its parent folders if missing.
        resume_step: the step the run resumes from; rows with a larger step (logged after that checkpoint,
            about to be redone) are dropped. None keeps every row.
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] = ["step"]
        text = self.path.read_text() if self.path.exists() else ""
        if text:
            complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
            reader = csv.DictReader(complete.splitlines())
            self.columns = list(reader.fieldnames or ["step"])
            rows = list(reader)
            kept = [r for r in rows if resume_step is None or int(r["step"]) <= resume_step]
            if len(kept) != len(rows) or complete != text:
                self._rewrite(kept)
        else:
            self._rewrite([])  # a new file starts with its header
        self._fh: Any = self.path.open("a", newline="")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append the row of ``step``.

        Raises:
            ValueError: if a metric is named ``step`` or the reporter is closed.
            OSError: if the row cannot be written (a full disk), naming the file.
        """
        if self._fh is None:
            raise ValueError(f"CSVReporter({self.path}) is closed")
        if "step" in metrics:
            raise ValueError("'step' is the CSV's index column; rename the metric")
        row = {"step": str(int(step))} | {k: repr(float(v)) for k, v in metrics.items()}
        try:
            self._append(row, [k for k in metrics if k not in self.columns])
        except OSError as exc:  # a full disk: name the file (the bare errno message does not)
            raise OSError(exc.errno, f"could not write the metrics row of step {step} to {self.path}: "
                                     f"{exc.strerror}") from exc

    def _append(self, row: dict[str, str], new: list[str]) -> None:
        if new:
            self._fh.close()
            with self.path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            self.columns += new
            self._rewrite([*rows, row])
            self._fh = self.path.open("a", newline="")
        else:
            csv.DictWriter(self._fh, self.columns).writerow(row)
            self._fh.flush()

    def close(self) -> None:
        """Close the file; a second call does nothing."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> CSVReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a :class:`CSVReporter` file as ``{"step": float, key: float}``; empty cells are left out."""
    with Path(path).open(newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


class TensorBoardReporter:
    """Scalars to TensorBoard event files through ``torch.utils.tensorboard.SummaryWriter`` (one tag per key).

    On resume, events with a step after ``resume_step`` are purged (``SummaryWriter(purge_step=...)``).
    """

    def __init__(self, log_dir: str | Path, *, resume_step: int | None = None) -> None:
        """Args:
        log_dir: the event-file folder.
        resume_step: the step the run resumes from; later events are hidden. None purges nothing.

        Raises:
            ImportError: if the ``tensorboard`` package (which torch's writer needs) is not installed.
        """
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch.utils.tensorboard imports the separate `tensorboard` package
            raise ImportError(
                "TensorBoardReporter needs the `tensorboard` package: pip install tensorboard "
                "(or drop 'tensorboard' from report_to)"
            ) from err
        purge = None if resume_step is None else resume_step + 1
        self._writer: Any = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write one scalar per key at ``step`` and flush."""
        for key, value in metrics.items():
            self._writer.add_scalar(key, float(value), global_step=int(step))
        self._writer.flush()

    def close(self) -> None:
        """Close the writer; a second call does nothing."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbReporter:
    """Metrics to Weights & Biases. The run id is kept in ``<run_dir>/wandb_run_id.txt`` so a resumed run continues
    the same W&B run (``resume="allow"``); W&B itself ignores steps it has already seen."""

    def __init__(self, run_dir: str | Path, *, project: str = "vgym", name: str | None = None) -> None:
        """Args:
        run_dir: the training run's folder (W&B files go under it).
        project: the W&B project.
        name: the run's display name; None lets W&B pick.

        Raises:
            ImportError: if ``wandb`` is not installed.
        """
        try:
            import wandb
        except ImportError as err:
            raise ImportError(
                "WandbReporter needs the `wandb` package: pip install wandb (or drop 'wandb' from report_to)"
            ) from err
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        id_file = run_dir / "wandb_run_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else None
        self._run: Any = wandb.init(project=project, name=name, dir=str(run_dir), id=run_id, resume="allow")
        id_file.write_text(self._run.id)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log ``metrics`` at ``step``."""
        self._run.log({k: float(v) for k, v in metrics.items()}, step=int(step))

    def close(self) -> None:
        """Finish the run; a second call does nothing."""
        if self._run is not None:
            self._run.finish()
            self._run = None


REPORTERS: Registry[Callable[[Path, int | None], Reporter]] = Registry("reporter")
"""``report_to`` name → ``factory(run_dir, resume_step)``. ``"none"`` is not an entry: it means no reporter."""
REPORTERS.register("csv", lambda run_dir, resume_step: CSVReporter(run_dir / "metrics.csv", resume_step=resume_step))
REPORTERS.register(
    "tensorboard", lambda run_dir, resume_step: TensorBoardReporter(run_dir / "tensorboard", resume_step=resume_step)
)
REPORTERS.register("wandb", lambda run_dir, resume_step: WandbReporter(run_dir))


def make_reporters(
    report_to: Sequence[str] | str, run_dir: str | Path, *, resume_step: int | None = None
) -> list[Reporter]:
    """Build the reporters a run asked for.

    Args:
        report_to: names from :data:`REPORTERS` (``"csv"`` → ``<run_dir>/metrics.csv``, ``"tensorboard"`` →
            ``<run_dir>/tensorboard/``, ``"wandb"``), or ``["none"]`` (tests use this); a bare string is one name.
        run_dir: the run's folder.
        resume_step: passed to every reporter (see :class:`CSVReporter`); None for a fresh run.

    Returns:
        One reporter per name, in order; empty for ``"none"``. The caller must :meth:`Reporter.close` them.

    Raises:
        UnknownNameError: for a name that is neither registered nor ``"none"`` (with the closest match).
        InvalidConfigError: if a name repeats or ``"none"`` is combined with other names.
        ImportError: if a reporter's optional package is missing.
    """
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if len(set(names)) != len(names) or ("none" in names and len(names) > 1):
        raise InvalidConfigError(f"report_to must list distinct reporters, or be ['none']; got {names}")
    factories = [REPORTERS.get(name) for name in names if name != "none"]  # validate every name before creating
    return [factory(Path(run_dir), resume_step) for factory in factories]


# ------------------------------------------------------------------------------------------------------- alarms
@dataclass
class AlarmConfig:
    """When :class:`AlarmMonitor` warns. Each alarm fires once per episode of trouble and re-arms when its
    condition clears for one step. Steps whose metrics lack an alarm's key, or carry NaN, leave it unchanged."""

    # --- tool collapse: the policy stops calling tools (a known failure of RL with tools)
    tool_calls_key: str = "rollout/tool_calls_per_episode"
    """Metric watched by the tool-collapse alarm."""
    tool_collapse_threshold: float | None = 0.2
    """Fire when the watched value stays below this fraction of its baseline for ``patience`` steps; in (0, 1).
    None disables the alarm. A baseline of 0 (a run that never called tools) never fires."""
    baseline_steps: int = 10
    """The baseline is the mean of the first ``baseline_steps`` values seen (no alarm fires before); >= 1."""
    patience: int = 5
    """Consecutive steps below threshold before a collapse alarm fires (tool and entropy alarms); >= 1."""

    # --- LLD: mean log-likelihood of chosen tokens drifting down (likelihood displacement)
    logprob_key: str = "actor/logprob_mean"
    """Metric watched by the LLD alarm: mean log-prob of the sampled tokens under the current policy."""
    lld_patience: int | None = 10
    """Fire when the smoothed value has fallen by more than ``lld_tolerance`` at each of this many consecutive
    steps; a noiseless series falling from step 0 fires at step ``lld_patience``. None disables the alarm."""
    lld_tolerance: float = 1e-3
    """Nats per step a smoothed fall must exceed to count; >= 0. Set it above the smoothed step-to-step noise,
    about ``(1 - lld_ema) * std(step noise)``."""
    lld_ema: float = 0.9
    """Weight of the past in the exponential moving average the LLD alarm watches, in [0, 1); 0 watches raw
    values. Smoothing shrinks step noise by ~``1 - lld_ema`` while a steady drift keeps its slope."""

    # --- entropy collapse (optional)
    entropy_key: str = "actor/entropy"
    """Metric watched by the entropy-collapse alarm."""
    entropy_collapse_threshold: float | None = None
    """Like ``tool_collapse_threshold`` for the entropy (same ``baseline_steps`` and ``patience``); None (default)
    disables it."""

    def __post_init__(self) -> None:
        for name in ("tool_collapse_threshold", "entropy_collapse_threshold"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise InvalidConfigError(f"{name} is a fraction of the baseline in (0, 1) or None, got {value}")
        if self.baseline_steps < 1 or self.patience < 1 or (self.lld_patience is not None and self.lld_patience < 1):
            raise InvalidConfigError(
                f"baseline_steps, patience and lld_patience must be >= 1 (lld_patience may be None); got "
                f"{self.baseline_steps}, {self.patience}, {self.lld_patience}"
            )
        if self.lld_tolerance < 0 or not 0 <= self.lld_ema < 1:
            raise InvalidConfigError(
                f"need lld_tolerance >= 0 and 0 <= lld_ema < 1; got {self.lld_tolerance}, {self.lld_ema}"
            )


class AlarmMonitor:
    """Watches each step's metrics and warns about tool collapse, likelihood drift and entropy collapse.

    Alarm messages are returned by :meth:`update` and logged with ``logging.getLogger(__name__).warning``.

    >>> monitor = AlarmMonitor(AlarmConfig(baseline_steps=2, patience=2, lld_patience=None))
    >>> fired = [monitor.update(s, {"rollout/tool_calls_per_episode": v}) for s, v in enumerate([2, 2, 0.1, 0.1, 0])]
    >>> [len(f) for f in fired], fired[3][0][:33]
    ([0, 0, 0, 1, 0], 'tool-collapse alarm at step 3: ro')
    """

    def __init__(self, config: AlarmConfig | None = None) -> None:
        """Args:
        config: the thresholds; None uses :class:`AlarmConfig` defaults.
        """
        self.config = config or AlarmConfig()
        self._state: dict[str, dict[str, Any]] = {
            "tool_collapse": {"values": [], "baseline": None, "run": 0, "fired": False},
            "entropy_collapse": {"values": [], "baseline": None, "run": 0, "fired": False},
            "lld": {"ema": None, "run": 0, "fired": False},
        }

    def update(self, step: int, metrics: Mapping[str, float]) -> list[str]:
        """Feed one step's metrics.

        Args:
            step: the optimizer step (used in messages).
            metrics: the step's metrics; missing keys leave their alarms unchanged.

        Returns:
            The messages of the alarms that fired at this step (usually empty).
        """
        cfg = self.config
        fired: list[str] = []
        collapses = (("tool_collapse", cfg.tool_calls_key, cfg.tool_collapse_threshold),
                     ("entropy_collapse", cfg.entropy_key, cfg.entropy_collapse_threshold))
        for name, key, threshold in collapses:
            value = _finite(metrics, key)
            if threshold is not None and value is not None:
                message = self._collapse(name, key, threshold, value, step)
                fired += [message] if message else []
        value = _finite(metrics, cfg.logprob_key)
        if cfg.lld_patience is not None and value is not None:
            message = self._lld(value, step, cfg.lld_patience)
            fired += [message] if message else []
        for message in fired:
            logger.warning(message)
        return fired

    def _collapse(self, name: str, key: str, threshold: float, value: float, step: int) -> str | None:
        state, cfg = self._state[name], self.config
        if state["baseline"] is None:
            state["values"].append(value)
            if len(state["values"]) == cfg.baseline_steps:
                state["baseline"] = float(np.mean(state["values"]))
            return None
        limit = threshold * state["baseline"]
        if value >= limit or state["baseline"] <= 0:
            state["run"], state["fired"] = 0, False  # condition cleared: re-arm
            return None
        state["run"] += 1
        if state["run"] < cfg.patience or state["fired"]:
            return None
        state["fired"] = True
        return (f"{name.replace('_', '-')} alarm at step {step}: {key} = {value:.4g} has stayed below "
                f"{threshold:g} x baseline {state['baseline']:.4g} (= {limit:.4g}) for {state['run']} steps")

    def _lld(self, value: float, step: int, patience: int) -> str | None:
        state, cfg = self._state["lld"], self.config
        previous = state["ema"]
        state["ema"] = value if previous is None else cfg.lld_ema * previous + (1 - cfg.lld_ema) * value
        if previous is None:
            return None
        if state["ema"] >= previous - cfg.lld_tolerance:
            state["run"], state["fired"] = 0, False  # no fall this step: re-arm
            return None
        state["run"] += 1
        if state["run"] < patience or state["fired"]:
            return None
        state["fired"] = True
        return (f"LLD alarm at step {step}: {cfg.logprob_key} (EMA {cfg.lld_ema:g}) has fallen by more than "
                f"{cfg.lld_tolerance:g} at each of the last {state['run']} steps, now {state['ema']:.4g}; "
                "the policy is losing likelihood on its own samples")

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy of the alarm state (not the config), for checkpoints."""
        return {name: {k: list(v) if isinstance(v, list) else v for k, v in s.items()}
                for name, s in self._state.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output, so later updates match an uninterrupted monitor exactly.

        Raises:
            ValueError: if ``state`` does not have the layout :meth:`state_dict` writes.
        """
        if {n: set(s) for n, s in state.items()} != {n: set(s) for n, s in self._state.items()}:
            raise ValueError(f"not an AlarmMonitor state: expected {self.state_dict()} layout, got {dict(state)}")
        self._state = {name: {k: list(v) if isinstance(v, list) else v for k, v in s.items()}
                       for name, s in state.items()}


def _finite(metrics: Mapping[str, float], key: str) -> float | None:
    """``metrics[key]`` as a float, or None when missing or NaN (a skipped measurement is not evidence)."""
    value = metrics.get(key)
    if value is None or math.isnan(float(value)):
        return None
    return float(value)
