"""Tests of vgym/cli.py through typer's CliRunner (in-process, output captured)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import cv2
import pytest
from dataset_helpers import noise, record_line, write_jsonl
from typer.testing import CliRunner

from vgym.app.cli import app

runner = CliRunner()


def test_list_shows_envs_and_tools() -> None:
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    assert "vgym/VisualSearch-v0" in result.output
    assert "crop" in result.output


def test_demo_plays_an_oracle_episode() -> None:
    """The oracle crops, the tool succeeds and the answer earns the full reward."""
    result = runner.invoke(app, ["demo", "vgym/VisualSearch-v0"])
    assert result.exit_code == 0, result.output
    for text in ("question", "tool crop ok", "reward 1.000"):
        assert text in result.output


def test_demo_unknown_env_fails() -> None:
    result = runner.invoke(app, ["demo", "vgym/NoSuchEnv-v0"])
    assert result.exit_code != 0
    assert "NoSuchEnv" in result.output + str(result.exception)


def test_eval_and_compare_commands(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`vgym eval` writes the report files and prints the table; `vgym compare` marks oracle vs random
    significant."""
    oracle, random = tmp_path / "oracle", tmp_path / "random"
    for policy, out in (("oracle", oracle), ("random", random)):
        result = runner.invoke(app, ["eval", "--policy", policy, "--suite", "visual_search", "--n", "20",
                                     "--difficulty", "0", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "visual_search" in result.output
        assert (out / "report.json").is_file() and (out / "report.md").is_file()
    result = runner.invoke(app, ["compare", str(random), str(oracle)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    overall = next(line for line in result.output.splitlines() if "overall" in line)
    cells = [c.strip() for c in overall.strip("│ ").split("│")]
    assert cells[3] == "1.000" and cells[5] == "yes"  # random -> oracle: a significant gain


def _main(*args: str) -> int:
    """``vgym ARGS`` through the console script's entry point (errors as one line, exit 2); its exit code."""
    from vgym.app.cli import main

    with pytest.raises(SystemExit) as caught:
        main(list(args))
    return int(caught.value.code or 0)


def test_a_failed_eval_start_leaves_the_folder_for_the_corrected_command(  # type: ignore[no-untyped-def]
    tmp_path, capsys
) -> None:
    out = str(tmp_path / "run")
    assert _main("eval", "--policy", "oracle", "--suite", "spatail", "--n", "2", "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Did you mean the suite 'spatial'?" in err
    assert _main("eval", "--policy", f"hf:{tmp_path / 'nowhere'}", "--suite", "counting", "--n", "2",
                 "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere does not exist" in err and "never downloads" in err
    assert _main("eval", "--policy", "oracle", "--suite", "counting", "--difficulty", "0", "--n", "2",
                 "--out", out) == 0
    assert json.loads((tmp_path / "run" / "report.json").read_text())["overall"]["episodes"] == 2
    capsys.readouterr()
    assert _main("view", out) == 2  # the oracle passed every episode: no failure was saved, and view says so
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "saved no trajectory" in err and "--save-trajectories all" in err


def test_eval_prints_a_table_and_vgym_view_shows_the_saved_trajectories(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    result = runner.invoke(app, ["eval", "--policy", "random", "--suite", "visual_search", "--n", "12",
                                 "--difficulty", "0", "--save-trajectories", "all", "--out", str(out)],
                           env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "|---" not in result.output and "## Columns" not in result.output  # a table, not the markdown
    header = next(line for line in result.output.splitlines() if line.startswith("task"))
    assert header.split()[:4] == ["task", "diff", "episodes", "run"]  # "could not" sits on the line above
    assert "## Columns" in (out / "report.md").read_text()
    result = runner.invoke(app, ["view", str(out)])
    assert result.exit_code == 0, result.output
    page = Path(result.output.strip().splitlines()[-1]).read_text()
    lines = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and page.count('<article class="episode') == 12  # every episode, passed or not
    assert html.escape(lines[0]["question"]) in page and 'class="gold"' in page


def test_eval_takes_tools_and_a_task_config_and_says_when_a_dataset_is_small(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "data"
    root.mkdir()
    cv2.imwrite(str(root / "a.png"), noise(32, 40))
    write_jsonl(root / "data.jsonl", [record_line(id=f"r{i}") for i in range(3)])
    (tmp_path / "task.yaml").write_text(f"root: {root}\n")
    out = tmp_path / "run"
    assert _main("eval", "--policy", "oracle", "--suite", "vgym_jsonl", "--task-config-file",
                 str(tmp_path / "task.yaml"), "--tools", "crop,image_info", "--n", "10",
                 "--out", str(out)) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "the test split holds 3 records, fewer than n=10; each record was used once" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["tools"] == ["crop", "image_info"] and config["task_config"] == {"root": str(root)}
    assert _main("eval", "--policy", "oracle", "--suite", "vgym_jsonl", "--task-config", f"rot={root}",
                 "--out", str(tmp_path / "typo")) == 2
    assert "vgym_jsonl has no config field 'rot'. Did you mean 'root'?" in capsys.readouterr().err
    assert _main("eval", "--policy", "oracle", "--suite", "counting", "--tools", "crp",
                 "--out", str(tmp_path / "tools")) == 2
    assert "Did you mean 'crop'?" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists() and not (tmp_path / "tools").exists()


def test_compare_on_a_missing_folder_or_report_is_one_line(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert _main("compare", str(tmp_path / "a"), str(tmp_path / "b")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not exist" in err and "Traceback" not in err
    assert _main("compare", str(tmp_path), str(tmp_path)) == 2
    assert "holds no report.json" in capsys.readouterr().err
