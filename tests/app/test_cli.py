"""Tests of vgym/cli.py through typer's CliRunner (in-process, output captured)."""

from __future__ import annotations

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
