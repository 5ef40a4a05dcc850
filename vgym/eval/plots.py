"""The plots of an evaluation report: accuracy per task, tool calls per attempt, accuracy against difficulty.

Contents: :data:`PLOT_NAMES`, :func:`report_figures`, :func:`write_plots`.

Every figure is titled with what it shows: the policy, n, k and the run folder's name. Counts and levels are
integers, so their axes have integer ticks. Error bars are the report's 95 % intervals; a task with too few
episodes for one (``n<10``, :data:`~vgym.eval.reports.MIN_CI_EPISODES`) has no bar and says so. Figures are
built with :class:`matplotlib.figure.Figure`, never pyplot: no global backend or figure state is touched.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from vgym.eval.reports import MIN_CI_EPISODES
from vgym.rollout.trajectory import atomic_path

__all__ = ["PLOT_NAMES", "report_figures", "write_plots"]

PLOT_NAMES = ("accuracy_per_task", "calls_histogram", "accuracy_vs_difficulty")
"""The plots, in the order :func:`write_plots` returns them (file name = name + ``.png``)."""


def _title(report: dict[str, Any], run_name: str | None) -> str:
    where = f" · {run_name}" if run_name else ""
    return f"{report['config']['policy']} · n={report['n']} per task and level, k={report['k']}{where}"


def report_figures(report: dict[str, Any], *, run_name: str | None = None) -> dict[str, Any]:
    """The report's figures.

    Args:
        report: a report of :func:`vgym.eval.reports.build_report`.
        run_name: the run folder's name, shown in the titles (None: left out).

    Returns:
        :data:`PLOT_NAMES` -> :class:`matplotlib.figure.Figure`: avg@k per task (95 % interval bars, dashed
        chance lines), tool calls per scored attempt (a histogram) and avg@k per level (one line per task).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    title = _title(report, run_name)
    k = report["k"]
    tasks = [t for t in report["tasks"] if report["tasks"][t]["metrics"]["avg_at_k"] is not None]
    figures: dict[str, Any] = {}

    fig = Figure(figsize=(max(4.5, 0.8 * len(tasks) + 2), 3.8))
    ax = fig.subplots()
    metrics = [report["tasks"][t]["metrics"] for t in tasks]
    means = [m["avg_at_k"] for m in metrics]
    err = np.array([[m["avg_at_k"] - m["avg_at_k_ci"][0], m["avg_at_k_ci"][1] - m["avg_at_k"]]
                    if m["avg_at_k_ci"] is not None else [np.nan, np.nan] for m in metrics]).T.reshape(2, -1)
    ax.bar(range(len(tasks)), means, yerr=np.clip(err, 0, None), capsize=4, color="tab:blue")
    for x, m in enumerate(metrics):
        if m["avg_at_k_ci"] is None:  # too few episodes for an interval: say so instead of drawing one
            ax.text(x, min(m["avg_at_k"] + 0.02, 0.98), f"n<{MIN_CI_EPISODES}", ha="center", fontsize=7)
    for x, task in enumerate(tasks):
        chance = report["tasks"][task]["chance"]
        if chance is not None:
            ax.hlines(chance, x - 0.4, x + 0.4, colors="tab:red", linestyles="dashed")
    labels = [f"{t}\n(n={m['episodes']})" for t, m in zip(tasks, metrics)]
    ax.set_xticks(range(len(tasks)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"avg@{k} (95% CI; dashed: chance)")
    ax.set_title(f"accuracy per task\n{title}", fontsize=9)
    fig.tight_layout()
    figures["accuracy_per_task"] = fig

    counts: dict[int, int] = defaultdict(int)
    for g in report["groups"]:
        for calls, count in g["calls_histogram"].items():
            counts[int(calls)] += count
    fig = Figure(figsize=(4.8, 3.8))
    ax = fig.subplots()
    xs = sorted(counts)
    ax.bar(xs, [counts[x] for x in xs], color="tab:green")
    # min_n_ticks=1: the default wants 2 ticks and takes fractional ones to get them (one bar at 0 calls)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("tool calls per attempt")
    ax.set_ylabel("attempts")
    ax.set_title(f"tool calls per attempt\n{title}", fontsize=9)
    fig.tight_layout()
    figures["calls_histogram"] = fig

    fig = Figure(figsize=(5.8, 3.8))
    ax = fig.subplots()
    for task in report["tasks"]:
        levels = [g for g in report["groups"] if g["task"] == task and g["difficulty"] is not None]
        pts = sorted((g["difficulty"], g["metrics"]["avg_at_k"]) for g in levels
                     if g["metrics"]["avg_at_k"] is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=task)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("difficulty")
    ax.set_ylabel(f"avg@{k}")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"accuracy vs difficulty\n{title}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    figures["accuracy_vs_difficulty"] = fig
    return figures


def write_plots(report: dict[str, Any], folder: str | Path, *, run_name: str | None = None) -> list[Path]:
    """Write the figures of :func:`report_figures` as PNG files into ``folder``.

    Args:
        report: a report of :func:`vgym.eval.reports.build_report`.
        folder: where to write them (created).
        run_name: the run folder's name, shown in the titles (None: left out).

    Returns:
        The paths, in the order of :data:`PLOT_NAMES`.

    Raises:
        OSError: if a plot cannot be written (e.g. a full disk), naming it; a previous file there is
            unchanged.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = report_figures(report, run_name=run_name)
    paths = []
    for name in PLOT_NAMES:
        path = folder / f"{name}.png"
        with atomic_path(path) as tmp:
            figures[name].savefig(tmp, dpi=100, format="png")  # the temporary has no .png suffix to infer
        paths.append(path)
    return paths
