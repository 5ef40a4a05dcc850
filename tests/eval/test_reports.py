"""Tests of vgym.eval.reports: schema validation, Markdown, plots and run comparison, on real oracle / random
runs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vgym.errors import InvalidConfigError
from vgym.policies.base import PolicyOutput
from vgym.eval.evaluate import EvalConfig, run_eval
from vgym.eval.plots import write_plots
from vgym.eval.reports import METRIC_KEYS, SCHEMA_VERSION, build_report, compare, validate_report
from vgym.eval.tables import write_markdown


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Small real runs: the oracle and the random baseline on visual_search (two levels), the oracle again on
    other data (seed 1)."""
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, policy, seed in (
        ("oracle", "oracle", 0),
        ("random", "random", 0),
        ("oracle_seed1", "oracle", 1),
    ):
        cfg = EvalConfig(
            policy=policy, suite=("visual_search", "counting"), n=30, k=1, seed=seed, difficulties=(0, 1)
        )
        out[name] = run_eval(cfg, base / name)
    return out


def test_reports_pass_validation_and_round_trip_json(runs: dict[str, dict]) -> None:
    for report in runs.values():
        validate_report(report)
        validate_report(json.loads(json.dumps(report)))
        assert report["schema_version"] == SCHEMA_VERSION
        assert set(report["overall"]) >= set(METRIC_KEYS)
        assert set(report["difficulties"]) == {"0", "1"}
        assert [(g["task"], g["difficulty"]) for g in report["groups"]] == [
            ("counting", 0), ("counting", 1), ("visual_search", 0), ("visual_search", 1)]


@pytest.mark.parametrize(("where", "key", "value"), [
    (lambda r: r, "groups", None),  # missing top-level key
    (lambda r: r["overall"], "pass_at_k", None),  # missing metric
    (lambda r: r["groups"][1]["metrics"], "avg_at_k", "high"),  # mistyped metric
    (lambda r: r["tasks"]["counting"]["metrics"], "episodes", True),  # a bool is not an int count
    (lambda r: r["groups"][0], "episode_index", {}),  # mistyped group field
    (lambda r: r, "schema_version", SCHEMA_VERSION + 1),  # a version this code cannot read
])
def test_validate_report_rejects_broken_reports(runs: dict[str, dict], where, key: str, value) -> None:  # type: ignore[no-untyped-def]
    report = copy.deepcopy(runs["oracle"])
    if value is None:
        del where(report)[key]
    else:
        where(report)[key] = value
    with pytest.raises(InvalidConfigError, match=key):
        validate_report(report)


def test_report_matches_the_episode_lines(tmp_path: Path) -> None:
    report = run_eval(
        EvalConfig(policy="random", suite=("counting",), n=12, k=2, difficulties=(0,)), tmp_path
    )
    lines = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    m = report["overall"]
    assert m["avg_at_k"] == pytest.approx(np.mean([r["accuracy"] for r in lines]))
    any_correct = {}
    for r in lines:
        any_correct[r["index"]] = any_correct.get(r["index"], False) or r["correct"]
    assert m["pass_at_k"] == pytest.approx(np.mean(list(any_correct.values())))  # pass@k with n = k
    assert report == build_report(tmp_path)


def test_markdown_lists_every_group_and_the_overall_row(runs: dict[str, dict], tmp_path: Path) -> None:
    text = write_markdown(runs["random"], tmp_path / "report.md")
    assert (tmp_path / "report.md").read_text() == text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 4 + 2 + 1  # header, 4 groups, 2 task totals, overall
    assert "view.html#task=visual_search&failures" in text  # the random policy fails, so failures are linked
    assert f"{runs['random']['overall']['avg_at_k']:.3f}" in rows[-1]


def test_plots_are_written_and_not_blank(runs: dict[str, dict], tmp_path: Path) -> None:
    paths = write_plots(runs["random"], tmp_path)
    assert [p.name for p in paths] == [
        "accuracy_per_task.png",
        "calls_histogram.png",
        "accuracy_vs_difficulty.png",
    ]
    for path in paths:
        image = cv2.imread(str(path))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0
        # more than axes and text: a real share of the pixels is coloured (bars, markers or lines)
        colour = (image.max(axis=2).astype(int) - image.min(axis=2)) > 60
        assert colour.mean() > 0.002, path.name


def test_compare_marks_a_planted_difference_significant(runs: dict[str, dict]) -> None:
    rows = {(r["task"], r["difficulty"]): r for r in compare(runs["random"], runs["oracle"])["rows"]}
    row = rows[("visual_search", "all")]
    assert row["paired"] and row["a"] < 0.6 and row["b"] == 1.0
    assert row["delta"] == pytest.approx(row["b"] - row["a"])
    assert row["significant"] and row["ci"][0] > 0
    assert rows[("overall", "all")]["significant"]
    reverse = {(r["task"], r["difficulty"]): r for r in compare(runs["oracle"], runs["random"])["rows"]}
    assert reverse[("visual_search", "all")]["significant"] and reverse[("visual_search", "all")]["ci"][1] < 0


def test_compare_finds_no_difference_in_noise_or_in_a_run_against_itself(runs: dict[str, dict]) -> None:
    for row in compare(runs["random"], runs["random"])["rows"]:
        assert row["delta"] == 0.0 and row["ci"] == [0.0, 0.0] and not row["significant"] and row["paired"]
    for row in compare(runs["oracle"], runs["oracle_seed1"])["rows"]:  # same policy, other data
        assert not row["paired"] and not row["significant"]


def test_compare_unpaired_noise_is_not_significant(tmp_path: Path) -> None:
    # The random baseline on two data seeds: same expected accuracy (1/3 on visual_search), different draws.
    a, b = (
        run_eval(
            EvalConfig(policy="random", suite=("visual_search",), n=40, k=1, seed=s, difficulties=(0,)),
            tmp_path / str(s),
        )
        for s in (0, 1)
    )
    (row,) = [r for r in compare(a, b)["rows"] if r["difficulty"] == 0]
    assert not row["paired"] and row["ci"][0] < 0 < row["ci"][1] and not row["significant"]


# ---------------------------------------------------------------- honest counting, small samples, versions


def _line(index: int, accuracy: float, attempt: int = 0, reason: str | None = None) -> dict:
    """An ``episodes.jsonl`` line of task ``t`` (no tools); ``reason``: its ``truncated_reason``."""
    blocked = reason is not None and reason.startswith("sample_error")
    return {"task": "t", "difficulty": None, "index": index, "attempt": attempt, "sample_id": f"t/{index}",
            "env_seed": 0, "accuracy": accuracy, "correct": accuracy >= 0.5, "reward": accuracy,
            "reward_parts": {"accuracy": accuracy}, "format_ok": not blocked, "answered": not blocked,
            "calls": 0, "ok_calls": 0, "failed_calls": 0, "necessary_call": None, "turns": int(not blocked),
            "tokens": None, "policy_tokens": None, "backends": [], "truncated_reason": reason,
            "answer": None if blocked else "a", "question": None if blocked else "q?",
            "gold": None if blocked else "a", "chance": 0.5, "split_records": None, "trajectory": None}


def _folder(path: Path, lines: list[dict], n: int, k: int = 1, **config: object) -> Path:
    path.mkdir()
    base = {"policy": "p", "n": n, "k": k, "seed": 0, "tools": "default", "correct_threshold": 0.5}
    (path / "config.json").write_text(json.dumps({**base, **config}))
    (path / "episodes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_episodes_that_could_not_run_are_counted_apart_from_the_scores(tmp_path: Path) -> None:
    # 10 played episodes (6 right), 1 whose media failed to load, 1 whose requests a model server refused,
    # 1 with only one of its k=2 attempts
    refused = "policy_error: POST http://h/v1/chat/completions failed with HTTP 400 Bad Request: bad call"
    lines = [_line(i, float(i < 6), a) for i in range(10) for a in (0, 1)]
    lines += [_line(10, 0.0, a, "sample_error: gone.png missing") for a in (0, 1)]
    lines += [_line(11, 0.0, a, refused) for a in (0, 1)]
    lines.append(_line(12, 1.0, 0))
    report = build_report(_folder(tmp_path / "run", lines, n=13, k=2))
    validate_report(report)
    for metrics in (report["overall"], report["groups"][0]["metrics"], report["tasks"]["t"]["metrics"],
                    report["difficulties"]["none"]):
        assert metrics["episodes"] == 10 and metrics["attempts"] == 20 and metrics["could_not_run"] == 2
        assert metrics["avg_at_k"] == pytest.approx(0.6) and metrics["pass_at_k"] == pytest.approx(0.6)
        assert metrics["format_ok"] == 1.0  # the media errors are not the policy's format errors
    assert report["incomplete_episodes"] == 1  # a stopped run, not a media error
    (group,) = report["groups"]
    assert [(r["index"], r["reason"]) for r in group["not_run"]] == [
        (10, "sample_error: gone.png missing"), (10, "sample_error: gone.png missing"), (11, refused),
        (11, refused)]
    assert group["episode_index"] == list(range(10))  # compare sees the scored episodes only
    assert any("2 episode(s) could not run" in note and "left out" in note for note in report["notes"])
    assert any("1 episode(s) have fewer than k=2" in note for note in report["notes"])
    counted = build_report(_folder(tmp_path / "counted", lines, n=13, k=2, count_errors_as_failures=True))
    m = counted["overall"]
    assert m["episodes"] == 12 and m["could_not_run"] == 2 and m["avg_at_k"] == pytest.approx(6 / 12)
    assert any("scored as failures" in note for note in counted["notes"])
    text = write_markdown(report, tmp_path / "report.md")
    assert "could not run" in text.splitlines()[text.splitlines().index("Notes:") + 2]


def test_a_group_where_nothing_could_run_reports_the_count_and_no_scores(tmp_path: Path) -> None:
    lines = [_line(i, 0.0, 0, "sample_error: bad.mp4") for i in range(3)]
    report = build_report(_folder(tmp_path / "run", lines, n=3))
    validate_report(report)
    m = report["overall"]
    assert m["episodes"] == 0 and m["could_not_run"] == 3
    assert m["avg_at_k"] is None and m["avg_at_k_ci"] is None
    text = write_markdown(report, tmp_path / "report.md")
    overall = next(line for line in text.splitlines() if line.startswith("| **overall**"))
    assert overall.startswith("| **overall** | all | 0 | 3 | - |")
    write_plots(report, tmp_path / "plots")  # nothing to draw is not an error


def test_intervals_are_left_out_below_ten_episodes(tmp_path: Path) -> None:
    # The oracle on 5 episodes: every one right, so a bootstrap would claim [1.00, 1.00].
    small = run_eval(EvalConfig(policy="oracle", suite=("counting",), n=5, difficulties=(0,)), tmp_path / "a")
    m = small["overall"]
    assert m["avg_at_k"] == 1.0 and m["avg_at_k_ci"] is m["pass_at_k_ci"] is m["pass_at_1_ci"] is None
    assert small["ci_min_episodes"] == 10 and any("n<10" in note for note in small["notes"])
    text = write_markdown(small, tmp_path / "report.md")
    assert "[1.00, 1.00]" not in text and "1.000 (n<10)" in text
    (row,) = [r for r in compare(small, small)["rows"] if r["task"] == "overall"]
    assert row["ci"] is None and not row["significant"]


def test_markdown_has_one_pass_at_1_column_and_a_legend_for_every_column(runs: dict[str, dict],
                                                                         tmp_path: Path) -> None:
    text = write_markdown(runs["random"], tmp_path / "k1.md")
    head = [c.strip() for c in text.splitlines()[next(i for i, line in enumerate(text.splitlines())
                                                      if line.startswith("| task"))].strip("|").split("|")]
    assert [h for h in head if "pass@" in h] == ["pass@1 [95% CI]"]  # k = 1: pass@k is pass@1, shown once
    legend = text.split("## Columns", 1)[1]
    for name in head:
        assert f"- **{name}**: " in legend
    report = run_eval(EvalConfig(policy="random", suite=("counting",), n=12, k=2, difficulties=(0,)),
                      tmp_path / "k2")
    text = write_markdown(report, tmp_path / "k2.md")
    assert "| pass@2 [95% CI] | pass@1 |" in text and "avg@2 [95% CI]" in text


def test_plots_have_titles_and_integer_ticks_on_integer_axes(runs: dict[str, dict]) -> None:
    from vgym.eval.plots import report_figures

    figures = report_figures(runs["random"], run_name="eval-random")
    for name, fig in figures.items():
        (ax,) = fig.axes
        title = ax.get_title()
        assert "random" in title and "n=30" in title and "k=1" in title and "eval-random" in title, name
    hist = figures["calls_histogram"].axes[0]
    levels = figures["accuracy_vs_difficulty"].axes[0]
    for ticks in (hist.get_xticks(), hist.get_yticks(), levels.get_xticks()):
        assert len(ticks) and all(float(t).is_integer() for t in ticks), ticks


def test_version_1_reports_still_validate_and_compare(runs: dict[str, dict]) -> None:
    old = copy.deepcopy(runs["random"])
    old["schema_version"] = 1
    for key in ("ci_min_episodes", "notes"):
        del old[key]
    tasks, groups = [t["metrics"] for t in old["tasks"].values()], [g["metrics"] for g in old["groups"]]
    for metrics in [old["overall"], *old["difficulties"].values(), *tasks, *groups]:
        del metrics["could_not_run"]
    for group in old["groups"]:
        del group["split_records"], group["not_run"]
    validate_report(old)
    rows = {(r["task"], r["difficulty"]): r for r in compare(old, runs["oracle"])["rows"]}
    assert rows[("overall", "all")]["significant"] and rows[("overall", "all")]["paired"]


def test_load_report_names_a_missing_folder_or_report(tmp_path: Path) -> None:
    from vgym.errors import VgymError
    from vgym.eval.reports import ReportNotFoundError, load_report

    with pytest.raises(ReportNotFoundError, match="does not exist") as caught:
        load_report(tmp_path / "nope")
    assert isinstance(caught.value, VgymError)
    with pytest.raises(ReportNotFoundError, match="holds no report.json"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("{")
    with pytest.raises(InvalidConfigError, match="not JSON"):
        load_report(tmp_path)


class _FrameHungry:
    """Asks for 8 frames every turn, then answers: past the image budget its calls are refused, not its
    episodes."""

    def act(self, batch):  # type: ignore[no-untyped-def]
        out = []
        for item in batch:
            if item.turn < 3:
                call = {"name": "sample_frames", "arguments": {"start_s": 0.0, "end_s": 1.0}}
                out.append(PolicyOutput(f"<tool_call>{json.dumps(call)}</tool_call>"))
            else:
                out.append(PolicyOutput("<answer>[0.0, 1.0]</answer>"))
        return out


def test_calls_past_the_image_budget_are_counted_in_records_report_table_and_viewer(tmp_path: Path) -> None:
    from vgym.env import IMAGE_BUDGET_ERROR, VisualToolEnv
    from vgym.eval.evaluate import episode_record
    from vgym.eval.viewer import build_view
    from vgym.rollout.loop import EpisodeSpec, rollout
    from vgym.rollout.trajectory import save_trajectories

    def env_fn() -> VisualToolEnv:
        return VisualToolEnv("video_grounding", tools=("sample_frames",))

    specs = [EpisodeSpec("test", i, group_id=i) for i in range(2)]
    trajs = rollout(env_fn, _FrameHungry(), None, specs)
    task = env_fn().task
    records = []
    for i, traj in enumerate(trajs):
        calls = [c for t in traj.turns for c in t["tool_calls"]]
        assert [c["error"] for c in calls] == [None, None, IMAGE_BUDGET_ERROR]  # 4 + 8 + 8 = 20, then refused
        assert traj.answer == "[0.0, 1.0]" and not traj.truncated  # the episode went on to its answer
        record = episode_record(traj, task, True, 0.5)
        assert record["budget_errors"] == 1 and record["failed_calls"] == 1
        records.append({**_line(i, record["accuracy"]), **record, "task": "t", "difficulty": None,
                        "index": i, "attempt": 0})
    report = build_report(_folder(tmp_path / "run", records, n=2))
    validate_report(report)
    assert report["overall"]["budget_errors"] == 2
    text = write_markdown(report, tmp_path / "report.md")
    assert "budget errors" in text and "`max_images`" in text
    save_trajectories(trajs, tmp_path / "trajs")
    page = build_view(tmp_path / "trajs").read_text()
    assert "6 tool calls · 2 tool errors (2 past the image budget)" in page
