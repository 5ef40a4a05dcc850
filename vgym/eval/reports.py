"""Evaluation reports: aggregation of ``episodes.jsonl``, schema check, Markdown, plots and run comparison.

Contents: :data:`SCHEMA_VERSION`, :data:`METRIC_KEYS`, :func:`build_report`, :func:`validate_report`,
:func:`write_markdown`, :func:`write_plots`, :func:`compare`.

The report (``report.json``, schema version :data:`SCHEMA_VERSION`) has ``schema_version``, ``config`` (the
:class:`~vgym.eval.evaluate.EvalConfig` as a dict), ``n``, ``k``, ``incomplete_episodes`` (episodes with fewer
than k attempts, left out), ``viewer`` (the trajectory page, relative to the run folder), ``overall``
(metrics), ``difficulties`` (level -> metrics; ``"none"`` for tasks without levels), ``tasks`` (task ->
``{"chance", "metrics"}``, levels pooled) and ``groups`` (one per task and difficulty: ``task``,
``difficulty``, ``chance``, ``metrics``, ``episode_index`` and ``episode_accuracy`` (per-episode accuracy
averaged over attempts, for :func:`compare`), ``calls_histogram`` (calls per attempt -> count), ``viewer`` (a
link filtered to the group's failures) and ``failures`` (up to 20: ``index``, ``attempt``, ``sample_id``,
``accuracy``, ``link``)).

Every metrics dict has the keys of :data:`METRIC_KEYS`. Confidence intervals are 95 % percentile bootstraps
that resample episodes (all attempts of an episode together), seeded with the run's seed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from vgym.errors import InvalidConfigError
from vgym.eval.stats import bootstrap_ci, pass_at_k
from vgym.rollout.trajectory import atomic_path

__all__ = ["SCHEMA_VERSION", "METRIC_KEYS", "build_report", "validate_report", "write_markdown",
           "write_plots", "compare"]

SCHEMA_VERSION = 1
"""Bump when a key changes meaning or disappears; adding keys keeps the version."""

_NUM = (int, float)
_OPT = (int, float, type(None))
METRIC_KEYS: dict[str, tuple[type, ...]] = {
    "episodes": (int,),
    "attempts": (int,),
    "avg_at_k": _NUM,
    "avg_at_k_ci": (list,),
    "pass_at_k": _NUM,
    "pass_at_k_ci": (list,),
    "pass_at_1": _NUM,
    "pass_at_1_ci": (list,),
    "reward": _NUM,
    "reward_parts": (dict,),
    "format_ok": _NUM,
    "answered": _NUM,
    "valid_call_rate": _OPT,
    "right_tool_rate": _OPT,
    "calls_per_episode": _NUM,
    "calls_per_solved_episode": _OPT,
    "tool_productivity": _OPT,
    "recovery_rate": _OPT,
    "turns": _NUM,
    "tokens": _OPT,
    "policy_tokens": _OPT,
}
"""Metric name -> allowed JSON types. ``avg_at_k``: mean accuracy over attempts; ``pass_at_k``: mean over
episodes of :func:`~vgym.eval.evaluate.pass_at_k` (k, correct attempts, k), ``pass_at_1`` likewise with 1;
``valid_call_rate``: successful calls / calls; ``right_tool_rate``: share of attempts calling one of the
task's necessary tools (tasks that claim some); ``tool_productivity``: correct attempts per tool call (OTC,
arXiv:2504.14870); ``recovery_rate``: share of attempts with a failed call that were still correct. None = no
attempt qualifies."""

_TOP_KEYS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,), "config": (dict,), "n": (int,), "k": (int,), "incomplete_episodes": (int,),
    "viewer": (str,), "overall": (dict,), "difficulties": (dict,), "tasks": (dict,), "groups": (list,),
}
_GROUP_KEYS: dict[str, tuple[type, ...]] = {
    "task": (str,),
    "difficulty": (int, type(None)),
    "chance": _OPT,
    "metrics": (dict,),
    "episode_index": (list,),
    "episode_accuracy": (list,),
    "calls_histogram": (dict,),
    "viewer": (str,),
    "failures": (list,),
}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _metrics(units: list[list[dict[str, Any]]], k: int, seed: int) -> dict[str, Any]:
    """Metrics of episodes ``units`` (each the list of its k attempt records)."""
    flat = [r for unit in units for r in unit]
    acc = [float(np.mean([r["accuracy"] for r in u])) for u in units]
    pk = [pass_at_k(k, sum(r["correct"] for r in u), k) for u in units]
    p1 = [pass_at_k(k, sum(r["correct"] for r in u), 1) for u in units]
    calls = sum(r["calls"] for r in flat)
    parts = sorted({p for r in flat for p in r["reward_parts"]})
    recovering = [r["correct"] for r in flat if r["failed_calls"] > 0]
    return {
        "episodes": len(units),
        "attempts": len(flat),
        "avg_at_k": float(np.mean(acc)),
        "avg_at_k_ci": list(bootstrap_ci(acc, seed=seed)),
        "pass_at_k": float(np.mean(pk)),
        "pass_at_k_ci": list(bootstrap_ci(pk, seed=seed)),
        "pass_at_1": float(np.mean(p1)),
        "pass_at_1_ci": list(bootstrap_ci(p1, seed=seed)),
        "reward": float(np.mean([r["reward"] for r in flat])),
        "reward_parts": {p: float(np.mean([r["reward_parts"].get(p, 0.0) for r in flat])) for p in parts},
        "format_ok": float(np.mean([r["format_ok"] for r in flat])),
        "answered": float(np.mean([r["answered"] for r in flat])),
        "valid_call_rate": sum(r["ok_calls"] for r in flat) / calls if calls else None,
        "right_tool_rate": _mean(
            [float(r["necessary_call"]) for r in flat if r["necessary_call"] is not None]
        ),
        "calls_per_episode": float(np.mean([r["calls"] for r in flat])),
        "calls_per_solved_episode": _mean([r["calls"] for r in flat if r["correct"]]),
        "tool_productivity": sum(r["correct"] for r in flat) / calls if calls else None,
        "recovery_rate": _mean([float(c) for c in recovering]),
        "turns": float(np.mean([r["turns"] for r in flat])),
        "tokens": _mean([r["tokens"] for r in flat if r["tokens"] is not None]),
        "policy_tokens": _mean([r["policy_tokens"] for r in flat if r["policy_tokens"] is not None]),
    }


def _level_key(level: int | None) -> str:
    return "none" if level is None else str(level)


def build_report(out: str | Path) -> dict[str, Any]:
    """Aggregate ``<out>/episodes.jsonl`` (attempts ``< k`` of episodes ``< n`` of ``<out>/config.json``).

    Returns:
        The report described in the module docstring; episodes with fewer than k attempts are left out and
            counted
        in ``incomplete_episodes``.

    Raises:
        FileNotFoundError: if the run folder lacks ``config.json`` or ``episodes.jsonl``.
    """
    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    n, k, seed = config["n"], config["k"], config["seed"]
    Group = dict[int, list[dict[str, Any]]]
    by_group: dict[tuple[str, int | None], Group] = defaultdict(lambda: defaultdict(list))
    with (out / "episodes.jsonl").open() as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                if r["index"] < n and r["attempt"] < k:
                    by_group[(r["task"], r["difficulty"])][r["index"]].append(r)
    groups, incomplete = [], 0
    per_task: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    per_level: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    everything: list[list[dict[str, Any]]] = []
    chance: dict[str, float | None] = {}
    for (task, level), episodes in by_group.items():
        units = [sorted(episodes[i], key=lambda r: r["attempt"]) for i in sorted(episodes)]
        incomplete += sum(len(u) != k for u in units)
        units = [u for u in units if len(u) == k]
        if not units:
            continue
        chance[task] = units[0][0].get("chance")
        per_task[task] += units
        per_level[_level_key(level)] += units
        everything += units
        failures = [r for u in units for r in u if r["accuracy"] < 1.0]
        histogram: dict[str, int] = defaultdict(int)
        for r in (r for u in units for r in u):
            histogram[str(r["calls"])] += 1
        groups.append(
            {
                "task": task,
                "difficulty": level,
                "chance": chance[task],
                "metrics": _metrics(units, k, seed),
                "episode_index": [u[0]["index"] for u in units],
                "episode_accuracy": [float(np.mean([r["accuracy"] for r in u])) for u in units],
                "calls_histogram": dict(sorted(histogram.items(), key=lambda kv: int(kv[0]))),
                "viewer": f"view.html#task={quote(task)}&failures",
                "failures": [
                    {
                        "index": r["index"],
                        "attempt": r["attempt"],
                        "sample_id": r["sample_id"],
                        "accuracy": r["accuracy"],
                        "link": f"view.html#q={quote(r['sample_id'], safe='')}&failures",
                    }
                    for r in failures[:20]
                ],
            }
        )
    groups.sort(key=lambda g: (g["task"], -1 if g["difficulty"] is None else g["difficulty"]))
    if not everything:
        raise InvalidConfigError(f"{out}: no complete episode (k={k} attempts each) in episodes.jsonl")
    return {
        "schema_version": SCHEMA_VERSION,
        "config": config,
        "n": n,
        "k": k,
        "incomplete_episodes": incomplete,
        "viewer": "view.html",
        "overall": _metrics(everything, k, seed),
        "difficulties": {lv: _metrics(u, k, seed) for lv, u in sorted(per_level.items())},
        "tasks": {
            t: {"chance": chance[t], "metrics": _metrics(u, k, seed)} for t, u in sorted(per_task.items())
        },
        "groups": groups,
    }


def _check(obj: Any, spec: dict[str, tuple[type, ...]], where: str) -> None:
    if not isinstance(obj, dict):
        raise InvalidConfigError(f"report: {where} must be an object, got {type(obj).__name__}")
    for key, types in spec.items():
        if key not in obj:
            raise InvalidConfigError(f"report: {where} lacks the key {key!r}")
        value = obj[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise InvalidConfigError(f"report: {where}.{key} must be {'/'.join(t.__name__ for t in types)}, "
                                     f"got {type(value).__name__} {value!r}")


def _check_metrics(metrics: Any, where: str) -> None:
    _check(metrics, METRIC_KEYS, where)
    for key in ("avg_at_k_ci", "pass_at_k_ci", "pass_at_1_ci"):
        ci = metrics[key]
        if len(ci) != 2 or not all(isinstance(v, _NUM) for v in ci) or ci[0] > ci[1]:
            raise InvalidConfigError(
                f"report: {where}.{key} must be [low, high] with low <= high, got {ci!r}"
            )


def validate_report(report: Any) -> None:
    """Check ``report`` against the schema of :data:`SCHEMA_VERSION` (keys and JSON types).

    Raises:
        InvalidConfigError: naming the first missing or mistyped key, or a schema version this code cannot
            read.
    """
    _check(report, _TOP_KEYS, "report")
    if report["schema_version"] != SCHEMA_VERSION:
        raise InvalidConfigError(f"report: schema_version {report['schema_version']} is not {SCHEMA_VERSION}")
    _check_metrics(report["overall"], "overall")
    for level, metrics in report["difficulties"].items():
        _check_metrics(metrics, f"difficulties.{level}")
    for task, entry in report["tasks"].items():
        _check(entry, {"chance": _OPT, "metrics": (dict,)}, f"tasks.{task}")
        _check_metrics(entry["metrics"], f"tasks.{task}.metrics")
    for i, group in enumerate(report["groups"]):
        _check(group, _GROUP_KEYS, f"groups[{i}]")
        _check_metrics(group["metrics"], f"groups[{i}].metrics")
        if len(group["episode_index"]) != len(group["episode_accuracy"]):
            raise InvalidConfigError(
                f"report: groups[{i}] episode_index and episode_accuracy differ in length"
            )


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def write_markdown(report: dict[str, Any], path: str | Path) -> str:
    """Write the report's table (groups, task totals, overall) as Markdown; returns the text.

    Raises:
        OSError: if ``path`` cannot be written (e.g. a full disk), naming it; a previous file there is
            unchanged.
    """
    k = report["k"]
    head = [
        "task",
        "diff",
        "episodes",
        f"avg@{k} [95% CI]",
        f"pass@{k} [95% CI]",
        "pass@1",
        "reward",
        "format",
        "valid calls",
        "right tool",
        "calls/ep",
        "calls/solved",
        "recovery",
        "turns",
        "tokens",
        "chance",
        "failures",
    ]
    lines = [
        f"# vgym eval: {report['config']['policy']} (n={report['n']}, k={k}, "
        f"tools={report['config']['tools']})",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    def row(name: str, level: str, m: dict[str, Any], chance: float | None, link: str) -> str:
        cells = [name, level, str(m["episodes"]),
                 f"{m['avg_at_k']:.3f} [{m['avg_at_k_ci'][0]:.2f}, {m['avg_at_k_ci'][1]:.2f}]",
                 f"{m['pass_at_k']:.3f} [{m['pass_at_k_ci'][0]:.2f}, {m['pass_at_k_ci'][1]:.2f}]",
                 _fmt(m["pass_at_1"]), _fmt(m["reward"]), _fmt(m["format_ok"], ".2f"),
                 _fmt(m["valid_call_rate"], ".2f"), _fmt(m["right_tool_rate"], ".2f"),
                 _fmt(m["calls_per_episode"], ".2f"), _fmt(m["calls_per_solved_episode"], ".2f"),
                 _fmt(m["recovery_rate"], ".2f"), _fmt(m["turns"], ".2f"), _fmt(m["tokens"], ".0f"),
                 _fmt(chance), link]
        return "| " + " | ".join(cells) + " |"

    for g in report["groups"]:
        level = "-" if g["difficulty"] is None else str(g["difficulty"])
        link = f"[view]({g['viewer']})" if g["failures"] else ""
        lines.append(row(g["task"], level, g["metrics"], g["chance"], link))
    for task, entry in report["tasks"].items():
        lines.append(row(f"**{task}**", "all", entry["metrics"], entry["chance"], ""))
    lines.append(row("**overall**", "all", report["overall"], None, ""))
    text = "\n".join(lines) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return text


def write_plots(report: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write ``accuracy_per_task.png`` (avg@k with 95 % CI error bars), ``calls_histogram.png`` (tool calls
    per attempt) and ``accuracy_vs_difficulty.png`` (avg@k per level, one line per task) into ``folder``.

    Returns:
        The three paths.

    Raises:
        OSError: if a plot cannot be written (e.g. a full disk), naming it; a previous file there is
            unchanged.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state is touched

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        folder / "accuracy_per_task.png",
        folder / "calls_histogram.png",
        folder / "accuracy_vs_difficulty.png",
    ]
    tasks = list(report["tasks"])
    fig = Figure(figsize=(max(4.0, 0.8 * len(tasks) + 2), 3.5))
    ax = fig.subplots()
    means = [report["tasks"][t]["metrics"]["avg_at_k"] for t in tasks]
    cis = [report["tasks"][t]["metrics"]["avg_at_k_ci"] for t in tasks]
    err = np.array([[m - lo for m, (lo, _) in zip(means, cis)], [hi - m for m, (_, hi) in zip(means, cis)]])
    ax.bar(range(len(tasks)), means, yerr=np.clip(err, 0, None), capsize=4, color="tab:blue")
    chances = [report["tasks"][t]["chance"] for t in tasks]
    for x, c in enumerate(chances):
        if c is not None:
            ax.hlines(c, x - 0.4, x + 0.4, colors="tab:red", linestyles="dashed")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"avg@{report['k']} (95% CI; dashed: chance)")
    fig.tight_layout()
    _save_figure(fig, paths[0])
    counts: dict[int, int] = defaultdict(int)
    for g in report["groups"]:
        for calls, count in g["calls_histogram"].items():
            counts[int(calls)] += count
    fig = Figure(figsize=(4.5, 3.5))
    ax = fig.subplots()
    xs = sorted(counts)
    ax.bar(xs, [counts[x] for x in xs], color="tab:green")
    ax.set_xlabel("tool calls per attempt")
    ax.set_ylabel("attempts")
    fig.tight_layout()
    _save_figure(fig, paths[1])
    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.subplots()
    for task in tasks:
        pts = sorted((g["difficulty"], g["metrics"]["avg_at_k"]) for g in report["groups"]
                     if g["task"] == task and g["difficulty"] is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=task)
    ax.set_xlabel("difficulty")
    ax.set_ylabel(f"avg@{report['k']}")
    ax.set_ylim(0, 1.05)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, paths[2])
    return paths


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")  # the temporary name has no .png suffix to infer it from


def _delta_ci(a: dict[tuple, float], b: dict[tuple, float], paired: bool, seed: int,
              resamples: int = 2000) -> tuple[float, float, float]:
    """Mean of b minus mean of a and its 95 % bootstrap interval (paired: resample shared episodes
    jointly)."""
    rng = np.random.default_rng(seed)
    if paired:
        diff = np.array([b[key] - a[key] for key in sorted(a)])
        means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
        delta = float(diff.mean())
    else:
        va, vb = np.array(list(a.values())), np.array(list(b.values()))
        means = (vb[rng.integers(0, len(vb), (resamples, len(vb)))].mean(axis=1)
                 - va[rng.integers(0, len(va), (resamples, len(va)))].mean(axis=1))
        delta = float(vb.mean() - va.mean())
    return delta, float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def compare(report_a: dict[str, Any], report_b: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    """Per-task (and per task and difficulty, and overall) delta of avg@k, B minus A, with a bootstrap test.

    The test is paired (per-episode differences resampled) when both runs scored the same episodes of the same
    data (same seed and task config, same episode keys), else unpaired (each run resampled on its own).
    A delta is ``significant`` when its 95 % interval excludes 0.

    Returns:
        ``{"rows": [{"task", "difficulty" ("all" for task totals and overall), "a", "b", "delta", "ci",
        "significant", "paired", "episodes_a", "episodes_b"}]}``; tasks present in one run only are skipped.
    """
    same_data = all(report_a["config"].get(f) == report_b["config"].get(f) for f in ("seed", "task_config"))

    def table(report: dict[str, Any]) -> dict[tuple[str, Any], dict[tuple, float]]:
        out: dict[tuple[str, Any], dict[tuple, float]] = defaultdict(dict)
        for g in report["groups"]:
            for i, acc in zip(g["episode_index"], g["episode_accuracy"]):
                out[(g["task"], g["difficulty"])][(i,)] = acc
                out[(g["task"], "all")][(g["difficulty"], i)] = acc
                out[("overall", "all")][(g["task"], g["difficulty"], i)] = acc
        return out

    ta, tb = table(report_a), table(report_b)
    rows = []
    order = sorted((key for key in ta if key in tb and key[0] != "overall"),
                   key=lambda key: (key[0], key[1] == "all", str(key[1])))
    for key in order + [("overall", "all")]:
        if key not in ta or key not in tb:
            continue
        a, b = ta[key], tb[key]
        paired = same_data and set(a) == set(b)
        delta, lo, hi = _delta_ci(a, b, paired, seed)
        rows.append({"task": key[0], "difficulty": key[1], "a": float(np.mean(list(a.values()))),
                     "b": float(np.mean(list(b.values()))), "delta": delta, "ci": [lo, hi],
                     "significant": bool(lo > 0 or hi < 0), "paired": paired,
                     "episodes_a": len(a), "episodes_b": len(b)})
    return {"rows": rows}
