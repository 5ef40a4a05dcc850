"""The tables of an evaluation report: ``report.md`` (every column, with a legend) and the cells of the short
table ``vgym eval`` prints.

Contents: :class:`Column`, :class:`Row`, :func:`report_columns`, :func:`report_rows`, :func:`table_cells`,
:func:`write_markdown`.

One list of columns (:func:`report_columns`) serves both tables: each column has its header, its legend line
(``report.md`` explains every column) and whether the terminal shows it. With k = 1 there is one pass column
(pass@1 with its interval); with k > 1, pass@k with its interval and pass@1 beside it. An interval is shown
only from :data:`~vgym.eval.reports.MIN_CI_EPISODES` scored episodes; below that the cell says ``n<10``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vgym.eval.reports import MIN_CI_EPISODES
from vgym.rollout.trajectory import atomic_path

__all__ = ["Column", "Row", "report_columns", "report_rows", "table_cells", "write_markdown"]


@dataclass(frozen=True)
class Row:
    """One line of a report table."""

    kind: str
    """``"group"`` (a task at one difficulty), ``"task"`` (its levels pooled) or ``"overall"``."""
    task: str
    """The task's name (``"overall"`` for the overall row)."""
    level: str
    """The difficulty as shown: a number, ``-`` (the task has none) or ``all`` (pooled)."""
    metrics: dict[str, Any]
    """The row's metrics (:data:`~vgym.eval.reports.METRIC_KEYS`)."""
    chance: float | None
    """Chance accuracy of the task, None when it has no finite answer set (and for the overall row)."""
    link: str
    """The viewer link to the row's failures ("" when there is none)."""


@dataclass(frozen=True)
class Column:
    """One column of a report table."""

    name: str
    """The header."""
    legend: str
    """What the column means (one line of ``report.md``'s legend)."""
    cell: Callable[[Row], str]
    """The cell text of a row."""
    terminal: bool = False
    """Whether ``vgym eval``'s terminal table shows it (``report.md`` shows every column)."""


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _with_ci(m: dict[str, Any], key: str) -> str:
    """``value [low, high]``; ``value (n<10)`` when too few episodes for an interval; ``-`` for no value."""
    value, ci = m[key], m.get(f"{key}_ci")
    if value is None:
        return "-"
    if ci is None:
        return f"{value:.3f} (n<{MIN_CI_EPISODES})"
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _metric(key: str, spec: str = ".3f") -> Callable[[Row], str]:
    """The cell of metric ``key`` formatted with ``spec`` (``-`` for None)."""
    return lambda row: _fmt(row.metrics[key], spec)


def _interval(key: str) -> Callable[[Row], str]:
    return lambda row: _with_ci(row.metrics, key)


def report_columns(report: dict[str, Any]) -> list[Column]:
    """The columns of ``report``'s tables, in order.

    Args:
        report: a report of :func:`vgym.eval.reports.build_report`.

    Returns:
        The columns; which pass columns appear depends on k (see the module docstring).
    """
    k = report["k"]
    threshold = report["config"].get("correct_threshold", 0.5)
    ci = (f"95% percentile-bootstrap interval over episodes, shown from {MIN_CI_EPISODES} scored episodes "
          f"(`n<{MIN_CI_EPISODES}`: too few for an interval to mean anything; a zero-width interval means "
          "every episode scored the same, not certainty)")
    correct = f"an attempt is correct when its accuracy is at least {threshold}"
    cols = [
        Column("task", "the task; **bold** rows pool a task's levels, and every task (overall)",
               lambda r: r.task, True),
        Column("diff", "difficulty level (`-`: the task has none; `all`: levels pooled)",
               lambda r: r.level, True),
        Column("episodes", f"scored episodes, {k} attempt(s) each (episodes that could not run are not "
               "among them)", _metric("episodes", "d"), True),
        Column("could not run", "episodes that could not run because their sample's media failed to load "
               "or the policy's server refused a request (episodes.jsonl's `truncated_reason` names the file "
               "or the error): left out of every score, unless the "
               "run used `--count-errors-as-failures` (then scored 0, and still counted here)",
               lambda r: str(r.metrics.get("could_not_run", 0)), True),
        Column(f"avg@{k} [95% CI]", f"accuracy averaged over an episode's {k} attempt(s), then over episodes "
               f"(IoU tasks: mean IoU); {ci}", _interval("avg_at_k"), True),
        Column("chance", "accuracy of a uniform guess over the task's answer choices, to read avg@k against "
               "(`-`: no finite answer set)", lambda r: _fmt(r.chance), True),
    ]
    if k > 1:
        cols += [
            Column(f"pass@{k} [95% CI]", f"share of episodes with at least one correct attempt among {k} "
                   f"(unbiased estimator of Chen et al. 2021, arXiv:2107.03374); {correct}; {ci}",
                   _interval("pass_at_k"), True),
            Column("pass@1", f"expected share of correct attempts (pass@1 from the {k} attempts); {correct}",
                   _metric("pass_at_1"), True),
        ]
    else:
        cols.append(Column("pass@1 [95% CI]", f"share of correct episodes; {correct} (equal to avg@1 on "
                           f"tasks scored 0 or 1); {ci}", _interval("pass_at_1"), True))
    cols += [
        Column("reward", "mean episode reward (accuracy, format and tool parts; `reward_parts` in "
               "report.json)", _metric("reward")),
        Column("format", "share of attempts without a format error", _metric("format_ok", ".2f")),
        Column("answered", "share of attempts that gave an answer (the others ran out of turns)",
               _metric("answered", ".2f")),
        Column("valid calls", "successful tool calls / tool calls (`-`: no call)",
               _metric("valid_call_rate", ".2f")),
        Column("right tool", "share of attempts calling a tool the task needs (only tasks that claim "
               "necessary tools; `-` otherwise or with tools off)", _metric("right_tool_rate", ".2f")),
        Column("calls/ep", "tool calls per attempt", _metric("calls_per_episode", ".2f"), True),
        Column("calls/solved", "tool calls per correct attempt", _metric("calls_per_solved_episode", ".2f")),
        Column("recovery", "share of attempts with a failed tool call that were still correct",
               _metric("recovery_rate", ".2f")),
        Column("budget errors", "tool calls refused because their images would have exceeded the env's "
               "`max_images` (the episode went on)", lambda r: str(r.metrics.get("budget_errors", "-"))),
        Column("turns", "model turns per attempt", _metric("turns", ".2f")),
        Column("tokens", "tokens per attempt: prompt, turns and env messages (`-`: a text-only policy)",
               _metric("tokens", ".0f")),
        Column("failures", "the group's failed episodes in view.html (when trajectories were saved)",
               lambda r: f"[view]({r.link})" if r.link else ""),
    ]
    return cols


def report_rows(report: dict[str, Any]) -> list[Row]:
    """The rows of ``report``'s tables: one per task and difficulty, one per task (levels pooled), overall.

    Args:
        report: a report of :func:`vgym.eval.reports.build_report`.

    Returns:
        The rows, in that order.
    """
    config = report["config"]
    saved = config.get("save_trajectories", "failures" if config.get("save_failures", True) else "none")
    rows = []
    for g in report["groups"]:
        level = "-" if g["difficulty"] is None else str(g["difficulty"])
        link = g["viewer"] if g["failures"] and saved != "none" else ""
        rows.append(Row("group", g["task"], level, g["metrics"], g["chance"], link))
    for task, entry in report["tasks"].items():
        rows.append(Row("task", task, "all", entry["metrics"], entry["chance"], ""))
    rows.append(Row("overall", "overall", "all", report["overall"], None, ""))
    return rows


Cells = list[tuple[str, list[str]]]


def table_cells(report: dict[str, Any], *, terminal: bool = False) -> tuple[list[str], Cells]:
    """The table as text cells.

    Args:
        report: a report of :func:`vgym.eval.reports.build_report`.
        terminal: only the columns the terminal shows.

    Returns:
        ``(headers, rows)``: each row is ``(kind, cells)`` with ``kind`` as in :attr:`Row.kind`, for styling.
    """
    cols = [c for c in report_columns(report) if c.terminal or not terminal]
    return [c.name for c in cols], [(r.kind, [c.cell(r) for c in cols]) for r in report_rows(report)]


def _tools(config: dict[str, Any]) -> str:
    tools = config.get("tools", "default")
    return ",".join(tools) if isinstance(tools, list) else str(tools)


def write_markdown(report: dict[str, Any], path: str | Path) -> str:
    """Write the report as Markdown: a title, the notes, the full table (groups, task totals, overall) and a
    legend explaining every column; returns the text.

    Args:
        report: a report of :func:`vgym.eval.reports.build_report`.
        path: the file to write.

    Returns:
        The text written.

    Raises:
        OSError: if ``path`` cannot be written (e.g. a full disk), naming it; a previous file there is
            unchanged.
    """
    config = report["config"]
    head, rows = table_cells(report)
    title = f"# vgym eval: {config['policy']} (n={report['n']}, k={report['k']}, tools={_tools(config)})"
    lines = [title, ""]
    if report.get("notes"):
        lines += ["Notes:", ""] + [f"- {note}" for note in report["notes"]] + [""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, cells in rows:
        if kind != "group":
            cells = [f"**{cells[0]}**", *cells[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Columns", ""]
    lines += [f"- **{c.name}**: {c.legend}." for c in report_columns(report)]
    text = "\n".join(lines) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return text
