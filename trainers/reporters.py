"""Metric reporters: where a training run's per-step metric dicts go (CSV, TensorBoard, W&B).

Contents:
    :class:`Reporter` — the protocol every reporter follows (``log(step, metrics)``, ``close()``).
    :class:`CSVReporter`, :class:`TensorBoardReporter`, :class:`WandbReporter` — the implementations;
    :func:`read_metrics_csv` reads a CSV log back.
    :data:`REPORTERS` (``report_to`` name → ``factory(run_dir, resume_step)``) and :func:`make_reporters`
    (``report_to`` list → reporters).

Contracts: step functions return metric dicts and only reporters emit them (STYLE.md §9); every reporter takes
a ``resume_step`` so that a resumed run first discards what it logged after its checkpoint and then appends;
:meth:`Reporter.close` is safe to call twice. TensorBoard and W&B are optional packages, imported only when
their reporter is built (a missing one raises ImportError naming the package).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from vgym.errors import InvalidConfigError
from vgym.registry import Registry

__all__ = [
    "Reporter",
    "CSVReporter",
    "TensorBoardReporter",
    "WandbReporter",
    "REPORTERS",
    "make_reporters",
    "read_metrics_csv",
]


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
    """Metrics to Weights & Biases. The run id is kept in ``<run_dir>/wandb_run_id.txt`` so a resumed run
    continues the same W&B run (``resume="allow"``); W&B itself ignores steps it has already seen."""

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
"""``report_to`` name → ``factory(run_dir, resume_step)``. ``"none"`` is not an entry: it means no
reporter."""
REPORTERS.register(
    "csv", lambda run_dir, resume_step: CSVReporter(run_dir / "metrics.csv", resume_step=resume_step)
)
REPORTERS.register(
    "tensorboard",
    lambda run_dir, resume_step: TensorBoardReporter(run_dir / "tensorboard", resume_step=resume_step),
)
REPORTERS.register("wandb", lambda run_dir, resume_step: WandbReporter(run_dir))


def make_reporters(
    report_to: Sequence[str] | str, run_dir: str | Path, *, resume_step: int | None = None
) -> list[Reporter]:
    """Build the reporters a run asked for.

    Args:
        report_to: names from :data:`REPORTERS` (``"csv"`` → ``<run_dir>/metrics.csv``, ``"tensorboard"`` →
            ``<run_dir>/tensorboard/``, ``"wandb"``), or ``["none"]`` (tests use this); a bare string is one
            name.
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
    # validate every name before creating
    factories = [REPORTERS.get(name) for name in names if name != "none"]
    return [factory(Path(run_dir), resume_step) for factory in factories]
