"""One error style for user mistakes: the ``vgym`` command prints one line on stderr (``error: ...``, with the
fix or the closest valid name) and exits with status 2; a traceback is printed only for a bug, or for any
error with ``--debug``. Each case runs the real console entry point (``vgym.app.cli.main``) in a fresh
interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _vgym(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vgym.app.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["demo", "vgym/VgymJsonl-v0"],
            r"vgym_jsonl reads a dataset from disk: set task_config={'root': ...}",
        ),
        (
            ["demo", "vgym/VisualSerch-v0"],
            "unknown environment id 'vgym/VisualSerch-v0'. Did you mean 'vgym/VisualSearch-v0'?",
        ),
        (["demo", "visual_serch"], "Unknown task 'visual_serch'. Did you mean 'visual_search'?"),
        (
            ["demo", "visual_search", "--task-config", "dificulty=1"],
            "visual_search has no config field 'dificulty'. Did you mean 'difficulty'?",
        ),
        (
            ["demo", "visual_search", "--task-config", "difficulty"],
            "--task-config 'difficulty': expected KEY=VALUE",
        ),
        (
            ["demo", "visual_search", "--task-config-file", "/no/such.yaml"],
            "--task-config-file /no/such.yaml:",
        ),
        (["demo", "visual_search", "--tools", "crpo"], "Unknown tool 'crpo'. Did you mean 'crop'?"),
        (["diagnose", "--episodes", "0"], "--episodes must be at least 1, got 0"),
        (["--import", "no_such_plugin_xyz", "list"], "--import no_such_plugin_xyz: no module named"),
        (["--import", "/no/such/plugin.py", "list"], "--import /no/such/plugin.py: no such file"),
    ],
    ids=[
        "dataset-without-root",
        "env-id-typo",
        "task-typo",
        "task-config-typo",
        "task-config-form",
        "task-config-file",
        "tool-typo",
        "no-episodes",
        "missing-plugin",
        "missing-plugin-file",
    ],
)
def test_a_mistake_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = _vgym(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message in lines[0]


def test_debug_shows_the_traceback() -> None:
    done = _vgym("--debug", "diagnose", "--episodes", "0")
    assert done.returncode != 0 and "Traceback (most recent call last)" in done.stderr
    assert "InvalidConfigError: --episodes must be at least 1" in done.stderr


def test_a_bug_in_a_plugin_shows_its_traceback(tmp_path: Path) -> None:
    """A plugin that raises while importing is a bug, not a user's mistake: it is shown whole."""
    (tmp_path / "broken.py").write_text("raise RuntimeError('the plugin itself is broken')\n")
    done = _vgym("--import", "broken", "list", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "the plugin itself is broken" in done.stderr


def test_help_keeps_brackets_and_names_the_global_options() -> None:
    done = _vgym("eval", "--help")
    assert done.returncode == 0
    assert "[#model[,tool_calling=text|native|auto]]" in done.stdout and "--import MODULE" in done.stdout
