"""Evaluation reports: aggregation of ``episodes.jsonl``, schema check, loading and run comparison.

Contents: :data:`SCHEMA_VERSION`, :data:`READABLE_VERSIONS`, :data:`MIN_CI_EPISODES`, :data:`METRIC_KEYS`,
:class:`ReportNotFoundError`, :func:`could_not_run`, :func:`build_report`, :func:`validate_report`,
:func:`load_report`, :func:`compare`. Tables (``report.md``) live in :mod:`vgym.eval.tables`, plots in
:mod:`vgym.eval.plots`.

The report (``report.json``, schema version :data:`SCHEMA_VERSION`) has:

- ``schema_version``; ``config`` (the :class:`~vgym.eval.evaluate.EvalConfig` as a dict); ``n``; ``k``;
- ``incomplete_episodes``: episodes with fewer than k attempts (a run stopped early), left out;
- ``ci_min_episodes`` (:data:`MIN_CI_EPISODES`); ``notes``: sentences a reader must see (datasets smaller
  than ``n``, episodes that could not run, incomplete episodes, intervals left out);
- ``viewer``: the trajectory page, relative to the run folder;
- ``overall`` (metrics); ``difficulties`` (level -> metrics; ``"none"`` for tasks without levels); ``tasks``
  (task -> ``{"chance", "metrics"}``, levels pooled);
- ``groups``, one per task and difficulty: ``task``, ``difficulty``, ``chance``, ``split_records`` (records
  in a dataset task's test split, None for procedural tasks), ``metrics``, ``episode_index`` and
  ``episode_accuracy`` (per scored episode, accuracy averaged over attempts, for :func:`compare`),
  ``calls_histogram`` (calls per scored attempt -> count), ``viewer`` (a link filtered to the group's
  failures), ``failures`` (up to 20: ``index``, ``attempt``, ``sample_id``, ``accuracy``, ``question``,
  ``gold``, ``answer``, ``link``) and ``not_run`` (up to 20 attempts that could not run: ``index``,
  ``attempt``, ``sample_id``, ``reason``).

**Honest counting.** An episode *could not run* when one of its attempts ended before the policy played
(:func:`could_not_run`: ``truncated_reason`` starting with ``sample_error``, the sample's media failed to
load) or because the policy could not play a turn (``policy_error``, e.g. the model's server answered that
episode's request with an HTTP 4xx). Such episodes are counted in ``could_not_run`` of every metrics dict
and left out of every score (``episodes`` counts the scored ones), unless the config's
``count_errors_as_failures`` is set: they are then scored as the failures they were recorded as (accuracy 0)
and still counted in ``could_not_run``.

Every metrics dict has the keys of :data:`METRIC_KEYS`. Confidence intervals are 95 % percentile bootstraps
that resample episodes (all attempts of an episode together), seeded with the run's seed; below
:data:`MIN_CI_EPISODES` scored episodes they are None.

Schema history: version 1 scored episodes that could not run as failures and always gave intervals; version 2
adds ``could_not_run``, ``notes``, ``ci_min_episodes``, ``split_records`` and ``not_run``, leaves
could-not-run episodes out of the scores, and allows None for intervals (too few episodes) and for scores (no
scored episode). :func:`validate_report` and :func:`compare` read both.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from vgym.errors import InvalidConfigError, VgymError
from vgym.eval.stats import bootstrap_ci, pass_at_k
from vgym.rollout.trajectory import POLICY_ERROR, SAMPLE_ERROR

__all__ = ["SCHEMA_VERSION", "READABLE_VERSIONS", "MIN_CI_EPISODES", "METRIC_KEYS", "ReportNotFoundError",
           "could_not_run", "build_report", "validate_report", "load_report", "compare"]

SCHEMA_VERSION = 2
"""Bump when a key changes meaning or disappears; adding keys keeps the version."""

READABLE_VERSIONS = (1, 2)
"""Schema versions :func:`validate_report` and :func:`compare` read."""

MIN_CI_EPISODES = 10
"""Fewest scored episodes for which a 95 % interval is given. Below it the percentile bootstrap is not worth
showing: with n episodes it can only take n + 1 values per resample, and a run where every episode scored the
same gives a zero-width interval (5 correct of 5: [1.00, 1.00], where the exact binomial 95 % interval is
[0.48, 1.00]). Ten is a floor, not a guarantee: a zero-width interval at any n means every episode scored
alike."""

COULD_NOT_RUN = (SAMPLE_ERROR, POLICY_ERROR)
"""``truncated_reason`` prefixes of attempts that ended before the policy played, or that the policy could not
play to the end (a server's refusal of a request)."""

_NUM = (int, float)
_OPT = (int, float, type(None))
_CI = (list, type(None))
METRIC_KEYS: dict[str, tuple[type, ...]] = {
    "episodes": (int,),
    "attempts": (int,),
    "could_not_run": (int,),
    "avg_at_k": _OPT,
    "avg_at_k_ci": _CI,
    "pass_at_k": _OPT,
    "pass_at_k_ci": _CI,
    "pass_at_1": _OPT,
    "pass_at_1_ci": _CI,
    "reward": _OPT,
    "reward_parts": (dict,),
    "format_ok": _OPT,
    "answered": _OPT,
    "valid_call_rate": _OPT,
    "right_tool_rate": _OPT,
    "calls_per_episode": _OPT,
    "calls_per_solved_episode": _OPT,
    "budget_errors": (int,),
    "tool_productivity": _OPT,
    "recovery_rate": _OPT,
    "turns": _OPT,
    "tokens": _OPT,
    "policy_tokens": _OPT,
}
"""Metric name -> allowed JSON types. ``episodes``/``attempts``: scored ones; ``could_not_run``: episodes that
could not run (see the module docstring); ``avg_at_k``: mean accuracy over attempts; ``pass_at_k``: mean over
episodes of :func:`~vgym.eval.stats.pass_at_k` (k, correct attempts, k), ``pass_at_1`` likewise with 1 (equal
to ``pass_at_k`` when k = 1); ``valid_call_rate``: successful calls / calls; ``right_tool_rate``: share of
attempts calling one of the task's necessary tools (tasks that claim some); ``tool_productivity``: correct
attempts per tool call (OTC, arXiv:2504.14870); ``recovery_rate``: share of attempts with a failed call that
were still correct; ``budget_errors``: calls refused because their images would have exceeded the env's
``max_images`` (the episode went on). None = no attempt qualifies (every score is None when no episode was
scored); an interval is None below :data:`MIN_CI_EPISODES` episodes."""

_TOP_KEYS: dict[str, tuple[type, ...]] = {
    "schema_version": (int,), "config": (dict,), "n": (int,), "k": (int,), "incomplete_episodes": (int,),
    "ci_min_episodes": (int,), "notes": (list,), "viewer": (str,), "overall": (dict,),
    "difficulties": (dict,), "tasks": (dict,), "groups": (list,),
}
_GROUP_KEYS: dict[str, tuple[type, ...]] = {
    "task": (str,),
    "difficulty": (int, type(None)),
    "chance": _OPT,
    "split_records": (int, type(None)),
    "metrics": (dict,),
    "episode_index": (list,),
    "episode_accuracy": (list,),
    "calls_histogram": (dict,),
    "viewer": (str,),
    "failures": (list,),
    "not_run": (list,),
}
_ADDED_IN_2 = {"could_not_run", "ci_min_episodes", "notes", "split_records", "not_run"}
_ADDED_LATER = {"budget_errors"}
"""Keys added to version 2 after its first reports were written: checked only where present."""


class ReportNotFoundError(VgymError, FileNotFoundError):
    """A run folder, or its ``report.json``, does not exist (:func:`load_report`)."""


def could_not_run(record: dict[str, Any]) -> bool:
    """Whether an attempt could not run: its sample's media could not be loaded, or the policy could not play
    one of its turns.

    Args:
        record: an ``episodes.jsonl`` line.

    Returns:
        True when its ``truncated_reason`` starts with one of :data:`COULD_NOT_RUN`.
    """
    return (record.get("truncated_reason") or "").startswith(COULD_NOT_RUN)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _ci(values: list[float], seed: int) -> list[float] | None:
    return list(bootstrap_ci(values, seed=seed)) if len(values) >= MIN_CI_EPISODES else None


def _metrics(units: list[list[dict[str, Any]]], blocked: int, k: int, seed: int) -> dict[str, Any]:
    """Metrics of the scored episodes ``units`` (each the list of its k attempt records), with ``blocked``
    episodes that could not run."""
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
        "could_not_run": blocked,
        "avg_at_k": _mean(acc),
        "avg_at_k_ci": _ci(acc, seed),
        "pass_at_k": _mean(pk),
        "pass_at_k_ci": _ci(pk, seed),
        "pass_at_1": _mean(p1),
        "pass_at_1_ci": _ci(p1, seed),
        "reward": _mean([r["reward"] for r in flat]),
        "reward_parts": {p: float(np.mean([r["reward_parts"].get(p, 0.0) for r in flat])) for p in parts},
        "format_ok": _mean([r["format_ok"] for r in flat]),
        "answered": _mean([r["answered"] for r in flat]),
        "valid_call_rate": sum(r["ok_calls"] for r in flat) / calls if calls else None,
        "right_tool_rate": _mean(
            [float(r["necessary_call"]) for r in flat if r["necessary_call"] is not None]
        ),
        "calls_per_episode": _mean([r["calls"] for r in flat]),
        "calls_per_solved_episode": _mean([r["calls"] for r in flat if r["correct"]]),
        "budget_errors": sum(r.get("budget_errors", 0) for r in flat),
        "tool_productivity": sum(r["correct"] for r in flat) / calls if calls else None,
        "recovery_rate": _mean([float(c) for c in recovering]),
        "turns": _mean([r["turns"] for r in flat]),
        "tokens": _mean([r["tokens"] for r in flat if r["tokens"] is not None]),
        "policy_tokens": _mean([r["policy_tokens"] for r in flat if r["policy_tokens"] is not None]),
    }


def _level_key(level: int | None) -> str:
    return "none" if level is None else str(level)


class _Pool:
    """Episodes pooled over groups: the scored ones and a count of those that could not run."""

    def __init__(self) -> None:
        self.units: list[list[dict[str, Any]]] = []
        self.blocked = 0

    def add(self, units: list[list[dict[str, Any]]], blocked: int) -> None:
        self.units += units
        self.blocked += blocked

    def metrics(self, k: int, seed: int) -> dict[str, Any]:
        return _metrics(self.units, self.blocked, k, seed)


Lines = dict[tuple[str, int | None], dict[int, list[dict[str, Any]]]]


def _read_groups(out: Path, n: int, k: int) -> Lines:
    """The lines of ``<out>/episodes.jsonl`` with index < n and attempt < k, by (task, difficulty) and
    index."""
    by_group: Lines = defaultdict(
        lambda: defaultdict(list)
    )
    with (out / "episodes.jsonl").open() as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                if r["index"] < n and r["attempt"] < k:
                    by_group[(r["task"], r["difficulty"])][r["index"]].append(r)
    return by_group


Units = list[list[dict[str, Any]]]


def _group(task: str, level: int | None, scored: Units, blocked: Units, k: int, seed: int) -> dict[str, Any]:
    """The report entry of one task at one difficulty."""
    first = (scored or blocked)[0][0]
    histogram: dict[str, int] = defaultdict(int)
    for r in (r for u in scored for r in u):
        histogram[str(r["calls"])] += 1
    failures = [r for u in scored for r in u if r["accuracy"] < 1.0]
    not_run = [r for u in blocked for r in u if could_not_run(r)]
    return {
        "task": task,
        "difficulty": level,
        "chance": first.get("chance"),
        "split_records": first.get("split_records"),
        "metrics": _metrics(scored, len(blocked), k, seed),
        "episode_index": [u[0]["index"] for u in scored],
        "episode_accuracy": [float(np.mean([r["accuracy"] for r in u])) for u in scored],
        "calls_histogram": dict(sorted(histogram.items(), key=lambda kv: int(kv[0]))),
        "viewer": f"view.html#task={quote(task)}&failures",
        "failures": [
            {
                "index": r["index"],
                "attempt": r["attempt"],
                "sample_id": r["sample_id"],
                "accuracy": r["accuracy"],
                "question": r.get("question"),
                "gold": r.get("gold"),
                "answer": r.get("answer"),
                "link": f"view.html#q={quote(r['sample_id'], safe='')}&failures",
            }
            for r in failures[:20]
        ],
        "not_run": [
            {"index": r["index"], "attempt": r["attempt"], "sample_id": r["sample_id"],
             "reason": r["truncated_reason"]}
            for r in not_run[:20]
        ],
    }


def build_report(out: str | Path) -> dict[str, Any]:
    """Aggregate ``<out>/episodes.jsonl`` (attempts ``< k`` of episodes ``< n`` of ``<out>/config.json``).

    Returns:
        The report described in the module docstring. Episodes with fewer than k attempts are left out and
        counted in ``incomplete_episodes``; episodes that could not run are counted in ``could_not_run`` and
        scored only when the config's ``count_errors_as_failures`` is set.

    Raises:
        FileNotFoundError: if the run folder lacks ``config.json`` or ``episodes.jsonl``.
        InvalidConfigError: if ``episodes.jsonl`` holds no complete episode.
    """
    out = Path(out)
    config = json.loads((out / "config.json").read_text())
    n, k, seed = config["n"], config["k"], config["seed"]
    count_errors = bool(config.get("count_errors_as_failures", False))
    groups: list[dict[str, Any]] = []
    incomplete = 0
    per_task: dict[str, _Pool] = defaultdict(_Pool)
    per_level: dict[str, _Pool] = defaultdict(_Pool)
    everything = _Pool()
    chance: dict[str, float | None] = {}
    for (task, level), episodes in _read_groups(out, n, k).items():
        units = [sorted(episodes[i], key=lambda r: r["attempt"]) for i in sorted(episodes)]
        incomplete += sum(len(u) != k for u in units)
        units = [u for u in units if len(u) == k]
        if not units:
            continue
        blocked = [u for u in units if any(could_not_run(r) for r in u)]
        scored = units if count_errors else [u for u in units if not any(could_not_run(r) for r in u)]
        entry = _group(task, level, scored, blocked, k, seed)
        groups.append(entry)
        chance[task] = entry["chance"]
        for pool in (per_task[task], per_level[_level_key(level)], everything):
            pool.add(scored, len(blocked))
    groups.sort(key=lambda g: (g["task"], -1 if g["difficulty"] is None else g["difficulty"]))
    if not groups:
        raise InvalidConfigError(f"{out}: no complete episode (k={k} attempts each) in episodes.jsonl")
    report = {
        "schema_version": SCHEMA_VERSION,
        "config": config,
        "n": n,
        "k": k,
        "incomplete_episodes": incomplete,
        "ci_min_episodes": MIN_CI_EPISODES,
        "notes": [],
        "viewer": "view.html",
        "overall": everything.metrics(k, seed),
        "difficulties": {lv: pool.metrics(k, seed) for lv, pool in sorted(per_level.items())},
        "tasks": {
            t: {"chance": chance[t], "metrics": pool.metrics(k, seed)} for t, pool in sorted(per_task.items())
        },
        "groups": groups,
    }
    report["notes"] = _notes(report, count_errors)
    return report


def _notes(report: dict[str, Any], count_errors: bool) -> list[str]:
    """The sentences a reader of the report must see (also printed on the terminal)."""
    notes = []
    n = report["n"]
    for g in report["groups"]:
        if g["split_records"] is not None and g["split_records"] < n:
            where = g["task"] if g["difficulty"] is None else f"{g['task']} (difficulty {g['difficulty']})"
            notes.append(f"{where}: the test split holds {g['split_records']} records, fewer than n={n}; "
                         f"each record was used once ({g['split_records']} episodes, not {n})")
    blocked = report["overall"]["could_not_run"]
    if blocked:
        how = ("scored as failures (--count-errors-as-failures)" if count_errors else
               "left out of every score (--count-errors-as-failures scores them as failures)")
        notes.append(f"{blocked} episode(s) could not run (their sample's media failed to load, or the "
                     "policy's server refused a request; see not_run and episodes.jsonl's "
                     f"truncated_reason): {how}")
    if report["incomplete_episodes"]:
        notes.append(f"{report['incomplete_episodes']} episode(s) have fewer than k={report['k']} attempts "
                     "(the run stopped early; run the same command again to finish them) and are left out")
    small = [g for g in report["groups"] if g["metrics"]["episodes"] < MIN_CI_EPISODES]
    if small:
        notes.append(f"{len(small)} group(s) have fewer than {MIN_CI_EPISODES} scored episodes: their 95% "
                     f"intervals are left out (n<{MIN_CI_EPISODES})")
    return notes


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


def _spec(spec: dict[str, tuple[type, ...]], version: int, present: Any = ()) -> dict[str, tuple[type, ...]]:
    """``spec`` as it was in schema ``version``; keys of :data:`_ADDED_LATER` only where ``present``."""
    dropped = set() if version >= 2 else set(_ADDED_IN_2)
    dropped |= _ADDED_LATER - set(present if isinstance(present, dict) else ())
    return {k: v for k, v in spec.items() if k not in dropped}


def _check_metrics(metrics: Any, where: str, version: int) -> None:
    _check(metrics, _spec(METRIC_KEYS, version, metrics), where)
    for key in ("avg_at_k_ci", "pass_at_k_ci", "pass_at_1_ci"):
        ci = metrics[key]
        if ci is None:
            continue
        if len(ci) != 2 or not all(isinstance(v, _NUM) for v in ci) or ci[0] > ci[1]:
            raise InvalidConfigError(
                f"report: {where}.{key} must be [low, high] with low <= high, got {ci!r}"
            )


def validate_report(report: Any) -> None:
    """Check ``report`` against the schema of its version (keys and JSON types).

    Raises:
        InvalidConfigError: naming the first missing or mistyped key, or a schema version this code cannot
            read (not in :data:`READABLE_VERSIONS`).
    """
    if isinstance(report, dict) and report.get("schema_version") not in READABLE_VERSIONS:
        raise InvalidConfigError(f"report: schema_version {report.get('schema_version')!r} is not one this "
                                 f"vgym reads ({', '.join(map(str, READABLE_VERSIONS))})")
    version = report["schema_version"] if isinstance(report, dict) else SCHEMA_VERSION
    _check(report, _spec(_TOP_KEYS, version), "report")
    _check_metrics(report["overall"], "overall", version)
    for level, metrics in report["difficulties"].items():
        _check_metrics(metrics, f"difficulties.{level}", version)
    for task, entry in report["tasks"].items():
        _check(entry, {"chance": _OPT, "metrics": (dict,)}, f"tasks.{task}")
        _check_metrics(entry["metrics"], f"tasks.{task}.metrics", version)
    for i, group in enumerate(report["groups"]):
        _check(group, _spec(_GROUP_KEYS, version), f"groups[{i}]")
        _check_metrics(group["metrics"], f"groups[{i}].metrics", version)
        if len(group["episode_index"]) != len(group["episode_accuracy"]):
            raise InvalidConfigError(
                f"report: groups[{i}] episode_index and episode_accuracy differ in length"
            )


def load_report(run: str | Path) -> dict[str, Any]:
    """Read and validate ``<run>/report.json``.

    Args:
        run: a run folder of ``vgym eval``.

    Returns:
        The report.

    Raises:
        ReportNotFoundError: if ``run`` is not a folder or holds no ``report.json``.
        InvalidConfigError: if the file is not JSON or fails :func:`validate_report`.
    """
    run = Path(run)
    if not run.is_dir():
        raise ReportNotFoundError(f"run folder {str(run)!r} does not exist or is not a folder")
    path = run / "report.json"
    if not path.is_file():
        raise ReportNotFoundError(f"{str(run)!r} holds no report.json; is it a `vgym eval --out` folder "
                                  "whose run finished? (running the same eval command again writes it)")
    try:
        report = json.loads(path.read_text())
    except ValueError as exc:
        raise InvalidConfigError(f"{path} is not JSON ({exc})") from None
    try:
        validate_report(report)
    except InvalidConfigError as exc:
        raise InvalidConfigError(f"{path}: {exc}") from None
    return report


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
    A delta is ``significant`` when its 95 % interval excludes 0. Reports of every version in
    :data:`READABLE_VERSIONS` are read (each run's scored episodes are compared).

    Returns:
        ``{"rows": [{"task", "difficulty" ("all" for task totals and overall), "a", "b", "delta", "ci",
        "significant", "paired", "episodes_a", "episodes_b"}]}``; tasks present (with a scored episode) in one
        run only are skipped. Below :data:`MIN_CI_EPISODES` episodes in either run, ``ci`` is None and
        ``significant`` False: a bootstrap of so few episodes says nothing.
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
        enough = min(len(a), len(b)) >= MIN_CI_EPISODES
        rows.append({"task": key[0], "difficulty": key[1], "a": float(np.mean(list(a.values()))),
                     "b": float(np.mean(list(b.values()))), "delta": delta,
                     "ci": [lo, hi] if enough else None, "significant": bool(enough and (lo > 0 or hi < 0)),
                     "paired": paired, "episodes_a": len(a), "episodes_b": len(b)})
    return {"rows": rows}
