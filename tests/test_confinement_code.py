"""Confinement audit, code (issue 9): no eval / exec / unpickling of untrusted input in the library, and no
tool runs code.

Sections:

1. A static AST scan of ``vgym/``, ``tools/``, ``tasks/`` and ``trainers/`` for banned calls (builtin
   eval/exec/compile, pickle-family loads, ``yaml.load`` without ``SafeLoader``,
   ``np.load(allow_pickle=True)``, ``torch.load`` without ``weights_only=True``, ``subprocess`` with
   ``shell=True``, ``os.system``/``os.popen``), with a per-entry-justified allowlist (:data:`ALLOWED`); the
   scanner (:func:`scan_source`) is shown to catch every pattern and to pass the safe forms.
2. No tool runs code: no code-like tool or argument name, and no backend's module imports process- or
   code-running modules, calls ``os.exec*``/``os.spawn*``/``os.fork``, or holds a banned call.

Path confinement (tools that cannot read files, dataset loaders that cannot leave their roots) is in
``tests/test_confinement_paths.py``.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import vgym  # noqa: F401  (registers tools and tasks)
from vgym.tooling import TOOLS

REPO = Path(__file__).resolve().parents[1]
LIBRARY_DIRS = ("vgym", "tools", "tasks", "trainers")
# ---------------------------------------------------------------- 1. static scan

_ALWAYS_BANNED = {
    **dict.fromkeys(
        ["eval", "exec", "compile", "builtins.eval", "builtins.exec", "builtins.compile"],
        "runs Python code from a string",
    ),
    **dict.fromkeys(
        [
            f"{m}.{f}"
            for m in ("pickle", "_pickle", "cloudpickle", "dill", "marshal")
            for f in ("load", "loads", "Unpickler")
        ]
        + ["joblib.load", "pandas.read_pickle", "shelve.open"],
        "unpickling runs code named by the data",
    ),
    **dict.fromkeys(
        ["yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"],
        "YAML loaders beyond safe_load build arbitrary objects; use yaml.safe_load",
    ),
    **dict.fromkeys(
        ["os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"],
        "runs a shell command line",
    ),
}
_KEYWORD_RULES = {  # call -> (keyword, its only safe value, whether leaving it out is safe, why)
    "numpy.load": ("allow_pickle", False, True, "allow_pickle=True unpickles object arrays"),
    "torch.load": (
        "weights_only",
        True,
        False,
        "torch.load without weights_only=True unpickles arbitrary objects",
    ),
    **{
        f"subprocess.{f}": ("shell", False, True, "shell=True hands the command line to a shell")
        for f in ("run", "call", "check_call", "check_output", "Popen")
    },
}
_SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader"}

ALLOWED: dict[tuple[str, str], str] = {}
"""(file relative to the repo, dotted call) -> why the call is not a risk. Empty: nothing in the library needs
one (Ray and multiprocessing pickle our own objects internally; the library itself never unpickles anything
but plain data: ``vgym/data/plain_pickle.py`` subclasses ``pickle.Unpickler`` with every global refused,
tested in ``tests/data/test_plain_pickle.py``)."""


@dataclass(frozen=True)
class Finding:
    """One banned call: where, what (dotted name after resolving imports) and why."""

    path: str
    line: int
    call: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.call}(...): {self.rule}"


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin for every import in the file (``np`` -> ``numpy``, ``loads`` ->
    ``pickle.loads``)."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                out[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return out


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` of a Name/Attribute chain with the head resolved through the imports, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases.get(node.id, node.id), *reversed(parts)])


def _rule(call: ast.Call, name: str, aliases: dict[str, str]) -> str | None:
    """Why ``call`` (to ``name``) is banned, or None."""
    if name in _ALWAYS_BANNED:
        return _ALWAYS_BANNED[name]
    keywords = {k.arg: k.value for k in call.keywords}
    if name in ("yaml.load", "yaml.load_all"):
        loader = keywords.get("Loader")
        if loader is None or _dotted(loader, aliases) not in _SAFE_YAML_LOADERS:
            return "yaml.load without Loader=yaml.SafeLoader builds arbitrary objects; use yaml.safe_load"
        return None
    if name in _KEYWORD_RULES:
        keyword, safe_value, absent_is_safe, why = _KEYWORD_RULES[name]
        if keyword in keywords:
            value = keywords[keyword]
            return None if isinstance(value, ast.Constant) and value.value is safe_value else why
        return None if absent_is_safe and None not in keywords else why  # None: a **mapping could set it
    return None


def scan_source(source: str, path: str) -> list[Finding]:
    """The banned calls in one Python source text (``path`` only labels the findings)."""
    tree = ast.parse(source, filename=path)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (name := _dotted(node.func, aliases)) is not None:
            if (why := _rule(node, name, aliases)) is not None:
                found.append(Finding(path, node.lineno, name, why))
    return sorted(found, key=lambda f: (f.path, f.line))


def _library_files() -> Iterator[Path]:
    for folder in LIBRARY_DIRS:
        yield from sorted(p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def test_library_has_no_banned_calls() -> None:
    findings = [f for p in _library_files() for f in scan_source(p.read_text(), str(p.relative_to(REPO)))]
    assert len(list(_library_files())) > 50  # the scan saw the library, not an empty folder
    unexplained = [f for f in findings if (f.path, f.call) not in ALLOWED]
    assert not unexplained, "banned calls (fix them, or add an ALLOWED entry with the reason):\n" + "\n".join(
        map(str, unexplained))
    stale = set(ALLOWED) - {(f.path, f.call) for f in findings}
    assert not stale, f"ALLOWED entries that match nothing any more, remove them: {sorted(stale)}"


@pytest.mark.parametrize("source, call", [
    ("eval(text)", "eval"),
    ("exec(code)", "exec"),
    ("compile(src, 'f', 'exec')", "compile"),
    ("import builtins\nbuiltins.eval(x)", "builtins.eval"),
    ("import pickle\npickle.loads(blob)", "pickle.loads"),
    ("import pickle as pk\npk.load(handle)", "pickle.load"),
    ("from pickle import loads as l\nl(blob)", "pickle.loads"),
    ("import cloudpickle\ncloudpickle.loads(blob)", "cloudpickle.loads"),
    ("import dill\ndill.load(handle)", "dill.load"),
    ("import marshal\nmarshal.loads(blob)", "marshal.loads"),
    ("import yaml\nyaml.load(text)", "yaml.load"),
    ("import yaml\nyaml.load(text, Loader=yaml.Loader)", "yaml.load"),
    ("import yaml\nyaml.unsafe_load(text)", "yaml.unsafe_load"),
    ("import yaml\nyaml.full_load(text)", "yaml.full_load"),
    ("import numpy as np\nnp.load(path, allow_pickle=True)", "numpy.load"),
    ("from numpy import load\nload(path, allow_pickle=flag)", "numpy.load"),
    ("import torch\ntorch.load(path)", "torch.load"),
    ("import torch\ntorch.load(path, weights_only=False)", "torch.load"),
    ("import torch\ntorch.load(path, **options)", "torch.load"),
    ("import subprocess\nsubprocess.run(command, shell=True)", "subprocess.run"),
    ("from subprocess import Popen\nPopen(command, shell=use_shell)", "subprocess.Popen"),
    ("import os\nos.system('ls')", "os.system"),
    ("import os\nos.popen('ls')", "os.popen"),
])
def test_scanner_catches_each_banned_pattern(source: str, call: str) -> None:
    findings = scan_source("x = 1\n\n" + source + "\n", "lib/mod.py")
    assert [(f.call, f.line) for f in findings] == [(call, 2 + source.count("\n") + 1)]
    assert str(findings[0]).startswith(f"lib/mod.py:{findings[0].line}: {call}(...): ")


def test_scanner_passes_the_safe_forms() -> None:
    safe = ("import json, re, subprocess, torch, yaml\nimport numpy as np\nyaml.safe_load(t)\n"
            "yaml.load(t, Loader=yaml.SafeLoader)\nnp.load(p)\nnp.load(p, allow_pickle=False)\n"
            "torch.load(p, weights_only=True)\nsubprocess.run(['ls'])\nsubprocess.run(['ls'], shell=False)\n"
            "re.compile('x')\nmodel.eval()\njson.loads(t)\ntorch.compile(model)\n")
    assert scan_source(safe, "ok.py") == []


# ---------------------------------------------------------------- 2. no tool runs code

_CODE_WORDS = re.compile(r"code|program|script|expr|command|cmd|python|shell|eval|exec", re.IGNORECASE)


def _properties(name: str) -> dict[str, dict[str, Any]]:
    return TOOLS.get(name).schema["function"]["parameters"].get("properties", {})


@pytest.mark.parametrize("name", TOOLS.names())
def test_no_tool_runs_code(name: str) -> None:
    """No tool takes code: no code-like argument, and no backend's module starts processes or evaluates
    strings."""
    tool = TOOLS.get(name)
    assert not _CODE_WORDS.search(name) and not any(_CODE_WORDS.search(a) for a in _properties(name))
    for backend in tool.backends.values():
        path = Path(sys.modules[backend.fn.__module__].__file__ or "")
        tree = ast.parse(path.read_text())
        aliases = _aliases(tree)
        imported = set(aliases.values()) | {v.split(".")[0] for v in aliases.values()}
        assert not imported & {"subprocess", "runpy", "code", "codeop", "pty", "ctypes"}, path
        calls = {_dotted(n.func, aliases) or "" for n in ast.walk(tree) if isinstance(n, ast.Call)}
        spawning = ("os.exec", "os.spawn", "os.fork", "os.posix_spawn")
        assert not [c for c in calls if c.startswith(spawning)], path
        assert scan_source(path.read_text(), str(path)) == []

