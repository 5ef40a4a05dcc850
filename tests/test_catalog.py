"""The catalog of built-ins matches the modules: every task and tool a module under ``tasks/`` or ``tools/``
registers is listed, under its own name, class, version and module; nothing listed is missing; and a lazy
entry is resolved by importing only its own module."""

from __future__ import annotations

import importlib
import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import gymnasium
import pytest

import vgym
from vgym.catalog import BUILTIN_TASKS, BUILTIN_TOOLS
from vgym.task import TASKS, task_env_id
from vgym.tooling import TOOLS

TASK_MODULES = sorted(m.name for m in pkgutil.iter_modules(importlib.import_module("vgym.tasks").__path__))
TOOL_MODULES = sorted(m.name for m in pkgutil.iter_modules(importlib.import_module("vgym.tools").__path__))


def test_every_registered_task_is_in_the_catalog_with_its_class_and_version() -> None:
    for module in TASK_MODULES:
        importlib.import_module(f"vgym.tasks.{module}")
    listed = {name: (target, version) for name, target, version in BUILTIN_TASKS}
    assert set(TASKS.names()) >= set(listed)
    for name in TASKS.names():
        cls = TASKS.get(name)
        if not cls.__module__.startswith("vgym.tasks."):
            continue  # a task a test registered itself
        target, version = listed[name]
        assert target == f"{cls.__module__}:{cls.__name__}" and version == cls.version, name
        spec = gymnasium.registry[task_env_id(name, version)]
        assert spec.entry_point == "vgym.env:VisualToolEnv" and spec.kwargs == {"task": name}


def test_every_registered_tool_is_in_the_catalog_with_its_module() -> None:
    for module in TOOL_MODULES:
        importlib.import_module(f"vgym.tools.{module}")
    listed = dict(BUILTIN_TOOLS)
    for name in TOOLS.names():
        fn_module = TOOLS.get(name).fn.__module__
        if fn_module.startswith("vgym.tools."):
            assert listed[name] == fn_module, name
    assert set(listed) <= set(TOOLS.names())


@pytest.mark.parametrize("name, target, version", BUILTIN_TASKS)
def test_a_lazy_task_loads_its_own_module_only(name: str, target: str, version: int) -> None:
    code = ("import json, sys, vgym\nfrom vgym.task import TASKS\n"
            f"cls = TASKS.get({name!r})\n"
            "print(json.dumps([cls.__module__ + ':' + cls.__name__, "
            "sorted(m for m in sys.modules if m.startswith('vgym.tasks.'))]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    loaded, modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == target
    assert set(modules) <= {target.split(":")[0], *_task_dependencies(target.split(":")[0])}


def _task_dependencies(module: str) -> set[str]:
    """Task modules ``module`` imports (multi_tool builds on depth_3d and visual_search, video_qa on
    video_grounding)."""
    text = Path(importlib.util.find_spec(module).origin).read_text()  # type: ignore[union-attr, arg-type]
    return {f"vgym.tasks.{m}" for m in TASK_MODULES if f"vgym.tasks.{m} import" in text}


def test_vgym_exports_its_contracts_and_registers_every_builtin() -> None:
    assert vgym.TASKS is TASKS and vgym.TOOLS is TOOLS
    assert {name for name, _, _ in BUILTIN_TASKS} <= set(TASKS.names())
    assert {name for name, _ in BUILTIN_TOOLS} <= set(TOOLS.names())
