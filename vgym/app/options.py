"""What the ``vgym`` commands share: plugins, task configs and tool lists given on the command line.

Contents: :data:`PLUGIN_GROUP`, :func:`load_plugins`, :func:`parse_task_config`, :func:`parse_tools`,
:func:`parse_value`.

**Plugins.** A user's task or tool registers when its module is imported (``register_task(...)``,
``TOOLS.register(...)`` at the bottom of the file). Every command first imports the modules named by
``--import MODULE`` (repeatable; a dotted module name on ``sys.path`` — the current folder is on it — or a
path to a ``.py`` file) and those of installed packages that declare an entry point in the group
``vgym.plugins`` (``[project.entry-points."vgym.plugins"] my_tasks = "my_package.tasks"``), so
``vgym eval --import odd_dot --suite odd_dot`` sees the README's OddDot task.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml

from vgym.errors import InvalidConfigError, UnknownNameError, VgymError

__all__ = ["PLUGIN_GROUP", "load_plugins", "parse_task_config", "parse_tools", "parse_value"]

PLUGIN_GROUP = "vgym.plugins"
"""The entry-point group whose modules every command imports first (installed packages' tasks and tools)."""


def _import(name: str) -> None:
    """Import ``name``: a dotted module name (found from the current folder too) or a ``.py`` file path."""
    if name.endswith(".py") or "/" in name or "\\" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise VgymError(f"--import {name}: no such file")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # the console script's sys.path lacks the current folder
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name.split(".")[0] and exc.name != name:
            raise  # the plugin itself failed to import one of its own dependencies: a bug, shown whole
        raise VgymError(f"--import {name}: no module named {exc.name!r} (run from the folder that holds it, "
                        "or give the path of the .py file)") from None


def load_plugins(modules: Iterable[str] = ()) -> list[str]:
    """Import the plugin modules: those named (``--import``), then every entry point of :data:`PLUGIN_GROUP`.

    Args:
        modules: module names or ``.py`` paths, imported in order.

    Returns:
        What was imported, in order (names, then entry points as ``name=module``).

    Raises:
        VgymError: for a named module or file that does not exist.
        Exception: whatever the plugin module raises while importing (a bug in it), unchanged.
    """
    done = []
    for name in modules:
        _import(name)
        done.append(name)
    for entry in entry_points(group=PLUGIN_GROUP):
        entry.load()
        done.append(f"{entry.name}={entry.value}")
    return done


def parse_value(text: str) -> Any:
    """A command-line value read as YAML (``3`` an int, ``0.5`` a float, ``true`` a bool, ``[1, 2]`` a list,
    anything else a string)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_task_config(pairs: Sequence[str] = (), file: str | Path | None = None) -> dict[str, Any]:
    """The task config given on the command line: a YAML/JSON file's mapping, then ``KEY=VALUE`` pairs over
    it.

    Args:
        pairs: ``KEY=VALUE`` strings (``--task-config difficulty=2``); values are read by :func:`parse_value`.
        file: a YAML or JSON file holding a mapping (``--task-config-file``), or None.

    Returns:
        The mapping (empty when nothing was given); the task checks its keys when it is built.

    Raises:
        InvalidConfigError: for a pair without ``=``, a missing or unreadable file, or a file that is not a
            mapping.
    """
    config: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise InvalidConfigError(f"--task-config-file {file}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise InvalidConfigError(f"--task-config-file {file}: not YAML or JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InvalidConfigError(f"--task-config-file {file}: expected a mapping of config fields, got "
                                     f"{type(data).__name__}")
        config.update(data)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidConfigError(f"--task-config {pair!r}: expected KEY=VALUE, e.g. difficulty=2")
        config[key.strip()] = parse_value(value)
    return config


def parse_tools(spec: str | None) -> tuple[str, ...] | None:
    """The tools a command offers: None (``default`` or nothing: the task's own), ``()`` (``off``), or the
    named tools (``crop,ground``), each checked against the registry.

    Raises:
        UnknownNameError: for a tool name that is not registered (with the closest match).
    """
    from vgym.tooling import TOOLS

    if spec is None or spec.strip() in ("", "default"):
        return None
    if spec.strip() == "off":
        return ()
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    for name in names:
        if name not in TOOLS:
            TOOLS.get(name)  # raises UnknownNameError with the closest registered name
    if not names:
        raise UnknownNameError(f"--tools {spec!r}: name at least one tool, or use 'default' or 'off'")
    return names

