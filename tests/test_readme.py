"""The README's worked task example runs as written: registered, checked by gymnasium, solved by the oracle.

It runs in a subprocess, so registering the example's task leaves this process's registries untouched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

CHECK = """
import json, gymnasium, vgym
from gymnasium.utils.env_checker import check_env
from vgym.eval.diagnose import diagnose_task
env = gymnasium.make("vgym/OddDot-v0")
check_env(env.unwrapped)
row = diagnose_task("odd_dot", None, episodes=12)
print(json.dumps([row.oracle_reward, row.oracle_tool_calls, row.majority_rate]))
"""


def test_register_a_task_example_is_short_and_works(tmp_path: Path) -> None:
    section = README.read_text().split("## Register a task", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)  # type: ignore[union-attr]
    assert len([line for line in code.splitlines() if line.strip()]) < 40
    script = tmp_path / "odd_dot_example.py"
    script.write_text(code + CHECK)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    oracle_reward, calls, majority_rate = json.loads(out.stdout.strip().splitlines()[-1])
    assert oracle_reward >= 0.99 and calls == 1.0
    assert majority_rate < 0.6  # four balanced quadrants


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_every_python_block_parses_and_its_vgym_imports_exist() -> None:
    """Blocks that need a model or a cluster are not run, but what they import from vgym must exist as
    written."""
    blocks = _python_blocks()
    assert len(blocks) >= 4
    imports = []
    for code in blocks:
        compile(code, "README.md", "exec")
        imports += [
            line for line in code.splitlines() if re.match(r"(from vgym[\w.]* import |import vgym)", line)
        ]
    out = subprocess.run(
        [sys.executable, "-c", "\n".join(imports)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_use_it_from_python_block_runs_from_any_folder_and_earns_the_full_reward(tmp_path: Path) -> None:
    """Run where a folder named ``vgym`` sits (a clone's parent folder): the installed package is imported,
    not that folder as an empty namespace package (make setup's editable-finder .pth), and the answer is
    right."""
    section = README.read_text().split("## Use it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)  # type: ignore[union-attr]
    (tmp_path / "vgym").mkdir()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1].startswith("1.0 {'accuracy': 1.0, 'format': 1.0, 'tool': 1.0")


def test_the_register_a_tool_block_registers_a_working_tool() -> None:
    section = README.read_text().split("## Register a tool", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)  # type: ignore[union-attr]
    play = code + (
        "\nimport gymnasium, numpy as np, vgym\n"
        "env = gymnasium.make('vgym/VisualSearch-v0', tools=('crop', 'flip'))\n"
        "first, info = env.reset(seed=0)\n"
        'obs, r, term, trunc, info = env.step(\'<tool_call>{"name": "flip", "arguments": {}}</tool_call>\')\n'
        "assert info['tool_calls'][0]['ok'], info['tool_calls']\n"
        "shown, flipped = first['images'][0].astype(int), obs['images'][0].astype(int)\n"
        "assert shown.shape == flipped.shape and np.abs(flipped - shown[:, ::-1]).mean() < 1.0\n"
        "assert np.abs(flipped - shown).mean() > 1.0\n"
        "print('flipped', len(obs['images']))\n"
    )
    out = subprocess.run([sys.executable, "-c", play], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "flipped 1"


def _plugins(folder: Path) -> None:
    """The README's OddDot task as ``odd_dot.py`` and its flip tool as ``flip_tool.py`` in ``folder``."""
    text = README.read_text()
    for heading, name in (("## Register a task", "odd_dot.py"), ("## Register a tool", "flip_tool.py")):
        section = text.split(heading, 1)[1]
        code = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)  # type: ignore[union-attr]
        (folder / name).write_text(code)


def _vgym(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """The ``vgym`` command line (its ``main``) run in ``folder``."""
    return subprocess.run([sys.executable, "-m", "vgym.app.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=folder, env={**os.environ, "COLUMNS": "200"})


def test_the_readme_task_and_tool_plug_into_demo_diagnose_eval_and_view(tmp_path: Path) -> None:
    _plugins(tmp_path)
    demo = _vgym(tmp_path, "demo", "odd_dot", "--import", "odd_dot", "--import", "flip_tool.py",
                 "--tools", "crop,flip")
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "tool crop ok" in demo.stdout and "reward 1.000" in demo.stdout
    diagnose = _vgym(
        tmp_path, "--import", "odd_dot", "diagnose", "--task", "vgym/OddDot-v0", "--episodes", "8"
    )
    assert diagnose.returncode == 0, diagnose.stderr[-2000:]
    row = next(line for line in diagnose.stdout.splitlines() if "vgym/OddDot-v0" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[2] == "1.000" and cells[3] == "1.00"  # oracle reward, one crop per episode
    out = tmp_path / "runs" / "odd_dot"
    evaluated = _vgym(
        tmp_path,
        "eval",
        "--import",
        "odd_dot",
        "--import",
        "flip_tool.py",
        "--policy",
        "oracle",
        "--suite",
        "odd_dot",
        "--n",
        "6",
        "--tools",
        "crop,flip",
        "--save-trajectories",
        "all",
        "--out",
        str(out),
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["overall"]["avg_at_k"] == 1.0 and report["n"] == 6
    viewed = _vgym(tmp_path, "view", str(out))
    assert viewed.returncode == 0 and viewed.stdout.strip().endswith("view.html"), viewed.stderr[-2000:]
    missing = _vgym(tmp_path, "demo", "odd_dot")
    assert missing.returncode == 2 and missing.stderr.startswith("error: Unknown task 'odd_dot'")
    assert "Traceback" not in missing.stderr
