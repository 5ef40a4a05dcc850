"""The shape of the house: imports run one way (task → env → rollout → trainer → entry layer), never in a
circle, never through a re-export; importing vgym and playing a crop episode loads no model library.

The static checks parse every module of ``vgym/``, ``tools/``, ``tasks/`` and ``trainers/`` (module-level,
function-level and ``TYPE_CHECKING`` imports alike: each is an arrow between two ideas). The lazy-import
checks run in a fresh interpreter, so nothing this test session imported earlier can hide an import.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"vgym": "vgym", "vgym.tools": "tools", "vgym.tasks": "tasks", "vgym.trainers": "trainers"}

# (group, rank, module prefixes). A module may import its own group and groups of a lower rank; two groups of
# one
# rank may not import each other (eval and trainers, tasks and tools, data and engine, ...).
LAYERS: list[tuple[str, int, tuple[str, ...]]] = [
    ("base", 0, ("vgym.errors", "vgym.registry", "vgym.tool_schema")),
    ("contracts", 1, ("vgym.spaces", "vgym.protocol", "vgym.rewards", "vgym.task", "vgym.tooling")),
    ("data", 2, ("vgym.data",)),
    ("engine", 2, ("vgym.engine",)),
    ("tasks", 3, ("vgym.tasks",)),
    ("tools", 3, ("vgym.tools",)),
    ("env", 4, ("vgym.env", "vgym.tool_runtime", "vgym.catalog")),
    ("policies", 5, ("vgym.policies",)),
    ("rollout", 6, ("vgym.rollout",)),
    ("eval", 7, ("vgym.eval",)),
    ("trainers", 7, ("vgym.trainers",)),
    ("entry", 8, ("vgym.app",)),
]


def _modules() -> dict[str, Path]:
    """Every module of the four folders by its import name (``tools/crop.py`` → ``vgym.tools.crop``)."""
    out = {}
    for package, folder in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


MODULES = _modules()


def _group(module: str) -> tuple[str, int]:
    """The layer of ``module`` (longest matching prefix); the package ``vgym`` itself sits with the env."""
    if module == "vgym":
        return "env", 4
    best = max(
        (p for _, _, prefixes in LAYERS for p in prefixes if module == p or module.startswith(p + ".")),
        key=len,
        default=None,
    )
    if best is None:
        raise AssertionError(f"{module} belongs to no layer of tests/test_imports.py: add it to LAYERS")
    return next((name, rank) for name, rank, prefixes in LAYERS if best in prefixes)


def _resolve(module: str) -> str:
    """The vgym module an import names: ``vgym.x.y`` itself, or the package holding a
    ``from vgym.x import y``."""
    while module not in MODULES and "." in module:
        module = module.rsplit(".", 1)[0]
    return module


def _imports(name: str, path: Path) -> list[tuple[str, int, list[str]]]:
    """(imported vgym module, line, names taken from it) for every import statement of the file, at any
    depth."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, []) for a in node.names if a.name.split(".")[0] == "vgym"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                package = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{package}.{base}" if base else package
            if base.split(".")[0] == "vgym":
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    out.append(
                        (sub if sub in MODULES else base, node.lineno, [] if sub in MODULES else [alias.name])
                    )
    return out


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, _, _ in _imports(module, path):
            resolved = _resolve(target)
            if resolved != module and resolved in MODULES:
                graph[module].add(resolved)
    return graph


def test_every_module_belongs_to_a_layer() -> None:
    for module in MODULES:
        _group(module)


def test_imports_run_one_way() -> None:
    wrong = []
    for module, path in MODULES.items():
        group, rank = _group(module)
        for target, line, _ in _imports(module, path):
            target = _resolve(target)
            if target == module or target not in MODULES:
                continue
            t_group, t_rank = _group(target)
            if t_rank > rank or (t_rank == rank and t_group != group):
                wrong.append(f"{path.relative_to(REPO)}:{line} ({group}) imports {target} ({t_group})")
    assert not wrong, "imports against task → env → rollout → trainer → entry layer:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = _edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                top = stack.pop()
                members.append(top)
                if top == node:
                    break
            # a package importing its own submodule is not a cycle unless the submodule imports back
            if len(members) > 1:
                cycles.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def _defined(path: Path) -> set[str]:
    """Names a module defines itself at top level (functions, classes, assignments), not names it imports."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.If, ast.Try)):
            names |= {n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return names


def test_no_re_exports() -> None:
    """Every ``from vgym.x import name`` takes a name that ``vgym.x`` defines, and every ``__all__`` lists
    only names its module defines — the package ``vgym`` itself, whose ``__all__`` names the contracts,
    excepted."""
    problems = []
    sources = {**MODULES, **{f"tests.{p.stem}": p for p in (REPO / "tests").rglob("*.py")},
               **{f"benchmarks.{p.stem}": p for p in (REPO / "benchmarks").glob("*.py")}}
    for module, path in sources.items():
        for target, line, names in _imports(module, path):
            if target == "vgym" or target not in MODULES:
                continue
            missing = [n for n in names if n not in _defined(MODULES[target])]
            if missing:
                problems.append(f"{path.relative_to(REPO)}:{line} takes {missing} from {target}, which only "
                                "re-exports them: import from the defining module")
    for module, path in MODULES.items():
        if module == "vgym":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "__all__" for t in node.targets
            ):
                listed = {elt.value for elt in node.value.elts}  # type: ignore[attr-defined]
                extra = sorted(listed - _defined(path))
                if extra:
                    problems.append(f"{path.relative_to(REPO)}: __all__ lists {extra}, not defined there")
    assert not problems, "\n".join(problems)


def test_every_subpackage_says_what_it_holds_and_may_import() -> None:
    for init in sorted((REPO / "vgym").glob("*/__init__.py")) + [REPO / f / "__init__.py" for f in
                                                                 ("tools", "tasks", "trainers")]:
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc.lower() and len(doc) > 80, (
            f"{init.relative_to(REPO)} needs a docstring saying what lives there and what it may import"
        )


def _fresh(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


HEAVY = ("torch", "transformers", "matplotlib", "ray", "rapidocr", "onnxruntime", "av", "decord")


def test_a_crop_episode_imports_no_model_library() -> None:
    """``import vgym``, ``gymnasium.make``, ``reset`` and a crop step load only the task and the crop tool."""
    found = _fresh(
        "import json, sys, gymnasium, vgym\n"
        "env = gymnasium.make('vgym/VisualSearch-v0')\n"
        "env.reset(seed=0)\n"
        "box = list(env.unwrapped.sample.metadata['region'])\n"
        'obs, reward, term, trunc, info = env.step(\'<tool_call>{"name": "crop", "arguments": {"box": %s}}'
        "</tool_call>' % box)\n"
        "assert info['tool_calls'][0]['ok'], info['tool_calls']\n"
        "from vgym.task import TASKS\nfrom vgym.tooling import TOOLS\n"
        f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules],"
        " 'tasks': [n for n in TASKS.names() if TASKS.is_loaded(n)],"
        " 'tools': [n for n in TOOLS.names() if TOOLS.is_loaded(n)]}))"
    )
    assert found == {"heavy": [], "tasks": ["visual_search"], "tools": ["crop"]}


def test_import_vgym_loads_no_task_tool_or_model_library() -> None:
    found = _fresh("import json, sys, vgym\n"
                   "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
                   f"{HEAVY!r} or m.startswith(('vgym.tasks.', 'vgym.tools.')))))")
    assert found == []


@pytest.mark.parametrize("module", ["tools.crop", "tasks.visual_search"])
def test_a_file_imported_under_two_names_registers_once(module: str) -> None:
    """From a checkout's root, ``tools/crop.py`` is both ``tools.crop`` and ``vgym.tools.crop``: both imports
    work, in either order, and the registry keeps one entry that works."""
    kind, name = ("tool", "crop") if module.startswith("tools") else ("task", "visual_search")
    registry = "from vgym.tooling import TOOLS as R" if kind == "tool" else "from vgym.task import TASKS as R"
    for first, second in ((module, f"vgym.{module}"), (f"vgym.{module}", module)):
        code = (
            "import json, "
            f"importlib\nimportlib.import_module({first!r})\nimportlib.import_module({second!r})\n"
            f"{registry}\nentry = R.get({name!r})\n"
            "print(json.dumps({'names': R.names().count(%r), "
            "'where': getattr(entry, 'fn', entry).__module__}))" % name
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
        )
        assert done.returncode == 0, done.stderr
        found = json.loads(done.stdout.strip().splitlines()[-1])
        assert found["names"] == 1
        assert found["where"] == first  # the first import's object is the one in use
