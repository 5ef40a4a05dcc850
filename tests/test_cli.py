"""Tests of vgym/cli.py through typer's CliRunner (in-process, output captured)."""

from __future__ import annotations

from typer.testing import CliRunner

from vgym.cli import app

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
