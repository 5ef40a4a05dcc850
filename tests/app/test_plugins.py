"""Plugins: a module named by ``--import`` and an installed package's ``vgym.plugins`` entry point both
register their tasks before the command runs (a real distribution's metadata on ``sys.path``, read by
``importlib.metadata``, as pip would install it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TASK = '''
from dataclasses import dataclass
import numpy as np
from vgym.rewards import exact_match_reward
from vgym.task import Sample, Solution, Task, register_task

@dataclass(frozen=True)
class GreyConfig:
    size: int = 64
    """Image side."""

class GreyTask(Task):
    name = "plugin_grey"
    config_cls = GreyConfig

    def sample(self, split, index, seed):
        return Sample(id=f"plugin_grey/{split}/{seed}/{index}", task="plugin_grey", split=split, index=index,
                      question="Is it grey?", images=(np.full((64, 64, 3), 128, np.uint8),), answer="yes")

    def score(self, sample, answer):
        return exact_match_reward(answer, sample.answer)

    def prompt(self, sample, tools_enabled):
        return sample.question

    def solution(self, sample, tools_enabled):
        return Solution(tool_calls=(), answer="yes")

register_task(GreyTask)
'''


def _vgym(folder: Path, *args: str, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "vgym.app.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=folder, env=env)


def test_an_installed_package_registers_through_its_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "grey_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "grey_plugin-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: grey-plugin\n"
                                                                  "Version: 0.1\n")
    (site / "grey_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[vgym.plugins]\ngrey = grey_tasks\n"
    )
    (site / "grey_tasks.py").write_text(TASK)
    without = _vgym(tmp_path, "demo", "plugin_grey")
    assert without.returncode == 2 and "Unknown task 'plugin_grey'" in without.stderr
    done = _vgym(tmp_path, "demo", "plugin_grey", extra_path=site)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "answer 'yes' (gold 'yes')" in done.stdout and "reward 1.000" in done.stdout


def test_import_takes_a_module_or_a_file_anywhere_on_the_line(tmp_path: Path) -> None:
    (tmp_path / "grey_tasks.py").write_text(TASK)
    by_name = _vgym(tmp_path, "demo", "plugin_grey", "--import", "grey_tasks")
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    by_path = _vgym(elsewhere, "--import=../grey_tasks.py", "list")
    assert by_name.returncode == 0 and "reward 1.000" in by_name.stdout, by_name.stderr[-2000:]
    assert by_path.returncode == 0 and "vgym/PluginGrey-v0" in by_path.stdout, by_path.stderr[-2000:]
