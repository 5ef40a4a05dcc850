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
from vgym.eval.evaluate import EvalConfig, run_eval
from vgym.eval.reports import (
    METRIC_KEYS,
    SCHEMA_VERSION,
    build_report,
    compare,
    validate_report,
    write_markdown,
    write_plots,
)


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
