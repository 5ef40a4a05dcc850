"""Confinement audit (issue 9): no eval / exec / unpickling of untrusted input in the library, tools cannot read
files, no tool runs code, and dataset loaders cannot read outside their roots.

Sections:

1. A static AST scan of ``vgym/``, ``tools/``, ``tasks/`` and ``trainers/`` for banned calls (builtin
   eval/exec/compile, pickle-family loads, ``yaml.load`` without ``SafeLoader``, ``np.load(allow_pickle=True)``,
   ``torch.load`` without ``weights_only=True``, ``subprocess`` with ``shell=True``, ``os.system``/``os.popen``),
   with a per-entry-justified allowlist; the scanner is shown to catch every pattern.
2. Tools: no argument schema can name a file, path-like strings in every string argument open nothing outside
   Python's own files (checked with an audit hook, through the env), the file-opening call sites in ``tools/`` are a
   reviewed list, and no tool runs code.
3. Dataset loaders (only cases ``tests/test_datasets.py`` and ``tests/tasks/test_local_data.py`` lack): ``..`` after
   a symbolic link, absolute forms, symbolic-link loops, symlinked media folders, URL-like paths, NUL bytes, JSON
   depth and line-size limits through each loader, and video playlists (HLS, ffconcat) that name files outside
   the root.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

import vgym  # noqa: F401  (registers tools and tasks)
import vgym.tasks.local_data  # noqa: F401  (registers the loaders)
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError, ToolError
from vgym.tasks.local_data import CharadesStaTask, ChartqaTask, RefcocoTask, VgymJsonlTask, VstarTask
from vgym.tooling import TOOLS, ToolContext
from vgym.tools.video import VideoReaderCache

REPO = Path(__file__).resolve().parents[1]
LIBRARY_DIRS = ("vgym", "tools", "tasks", "trainers")

# ---------------------------------------------------------------- 1. static scan

_ALWAYS_BANNED = {
    **dict.fromkeys(["eval", "exec", "compile", "builtins.eval", "builtins.exec", "builtins.compile"],
                    "runs Python code from a string"),
    **dict.fromkeys([f"{m}.{f}" for m in ("pickle", "_pickle", "cloudpickle", "dill", "marshal")
                     for f in ("load", "loads", "Unpickler")] + ["joblib.load", "pandas.read_pickle", "shelve.open"],
                    "unpickling runs code named by the data"),
    **dict.fromkeys(["yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"],
                    "YAML loaders beyond safe_load build arbitrary objects; use yaml.safe_load"),
    **dict.fromkeys(["os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"],
                    "runs a shell command line"),
}
_KEYWORD_RULES = {  # call -> (keyword, its only safe value, whether leaving it out is safe, why)
    "numpy.load": ("allow_pickle", False, True, "allow_pickle=True unpickles object arrays"),
    "torch.load": ("weights_only", True, False, "torch.load without weights_only=True unpickles arbitrary objects"),
    **{f"subprocess.{f}": ("shell", False, True, "shell=True hands the command line to a shell")
       for f in ("run", "call", "check_call", "check_output", "Popen")},
}
_SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader"}

ALLOWED: dict[tuple[str, str], str] = {}
"""(file relative to the repo, dotted call) -> why the call is not a risk. Empty: nothing in the library needs one
(Ray and multiprocessing pickle our own objects internally; the library itself never unpickles)."""


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
    """Local name -> dotted origin for every import in the file (``np`` -> ``numpy``, ``loads`` -> ``pickle.loads``)."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
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


# ---------------------------------------------------------------- 2. tools

_FILE_WORDS = re.compile(r"path|file|dir|folder|url|uri|root|model|checkpoint|video", re.IGNORECASE)
_CODE_WORDS = re.compile(r"code|program|script|expr|command|cmd|python|shell|eval|exec", re.IGNORECASE)

REVIEWED_STRING_ARGUMENTS = {
    ("ground", "query"): "text matched against detections (oracle, OpenCV colour/shape words or a detector prompt)",
    ("point", "query"): "as ground's query",
    ("measure", "kind"): "an enum of measurement names, checked by the tool",
}
"""Every model-facing string argument, with what the tool does with it; none is ever used as a path."""


def _types(schema: dict[str, Any]) -> set[str]:
    """Every JSON type named in a property schema, through array items."""
    found = {schema["type"]} if isinstance(schema.get("type"), str) else set(schema.get("type") or ())
    return found | (_types(schema["items"]) if isinstance(schema.get("items"), dict) else set())


def _properties(name: str) -> dict[str, dict[str, Any]]:
    return TOOLS.get(name).schema["function"]["parameters"].get("properties", {})


@pytest.mark.parametrize("name", TOOLS.names())
def test_no_tool_argument_can_name_a_file(name: str) -> None:
    for argument, schema in _properties(name).items():
        assert not _FILE_WORDS.search(argument), f"{name}.{argument} looks like a path argument"
        if "string" in _types(schema):
            assert (name, argument) in REVIEWED_STRING_ARGUMENTS, \
                f"new string argument {name}.{argument}: review that it can never reach the file system"
    reviewed = {a for t, a in REVIEWED_STRING_ARGUMENTS if t == name}
    assert reviewed <= set(_properties(name)), f"stale REVIEWED_STRING_ARGUMENTS for {name}"


class _OpenRecorder:
    """Collects the paths of Python ``open`` audit events while ``active`` (an audit hook cannot be removed, so it
    is installed once and stays inert otherwise)."""

    def __init__(self) -> None:
        self.active, self.paths = False, []

    def __call__(self, event: str, args: tuple) -> None:
        if self.active and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            self.paths.append(os.path.realpath(os.fsdecode(args[0])))


@pytest.fixture(scope="module")
def open_recorder() -> _OpenRecorder:
    recorder = _OpenRecorder()
    sys.addaudithook(recorder)
    return recorder


def _path_like(secret: Path) -> list[str]:
    """Strings a model might use to make a tool read ``secret`` or a system file."""
    up = "../" * len(Path.cwd().parts)
    return [str(secret), f"file://{secret}", up + str(secret).lstrip("/"), "/etc/passwd", "../../../../etc/passwd",
            "~/.ssh/id_rsa", "/proc/self/environ", "C:\\Windows\\win.ini", "\\\\server\\share\\x", f"{secret}\x00.png",
            "http://127.0.0.1:9/x.png"]


@pytest.mark.parametrize("backends", [{}, {"ground": "opencv", "point": "opencv"}])
def test_path_like_strings_in_tool_arguments_open_no_file(tmp_path: Path, open_recorder: _OpenRecorder,
                                                           backends: dict[str, str]) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-7f3a")
    env = VisualToolEnv("spatial_2d", tools=tuple(TOOLS.names()), max_turns=1000, max_images=1000,
                        tool_runtime={"backends": backends})
    env.reset(seed=0)
    required = {n: set(TOOLS.get(n).schema["function"]["parameters"].get("required", [])) for n in TOOLS.names()}
    filler = {"number": 0, "integer": 0, "array": [], "boolean": False}

    def call(name: str, arguments: dict[str, Any]) -> str:
        full = {a: filler.get(_properties(name)[a].get("type"), "x") for a in required[name] - set(arguments)}
        action = "<tool_call>" + json.dumps({"name": name, "arguments": {**full, **arguments}}) + "</tool_call>"
        return env.step(action)[0]["text"]

    string_args = [(n, a) for n in TOOLS.names() for a, s in _properties(n).items() if "string" in _types(s)]
    assert len(string_args) >= 3
    for name, argument in string_args:  # warm up: lazy imports and loaded backends open their own files
        call(name, {argument: "red circle"})
    prefixes = tuple(os.path.realpath(p) + os.sep for p in {sys.prefix, sys.base_prefix, str(REPO)})
    open_recorder.paths.clear()
    open_recorder.active = True
    try:
        texts = [call(name, {argument: s}) for name, argument in string_args for s in _path_like(secret)]
        texts += [call(name, {"path": str(secret)}) for name in TOOLS.names()]
    finally:
        open_recorder.active = False
    env.close()
    assert [p for p in open_recorder.paths if not p.startswith(prefixes)] == []
    assert not any("TOP-SECRET" in text or "root:x:0:0" in text for text in texts)
    extra = texts[-len(TOOLS.names()):]
    assert all("unknown argument(s) ['path']" in text for text in extra), extra


def _file_opening_calls(path: Path) -> set[tuple[str, str]]:
    """(enclosing function, called name) of every call in ``path`` that opens a file or a model folder."""
    opening = {"open", "imread", "VideoCapture", "VideoReader", "CascadeClassifier", "from_pretrained", "read_bytes",
               "read_text", "load", "fromfile", "loadtxt", "RapidOCR", "InferenceSession"}
    found: set[tuple[str, str]] = set()

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, f"{where}.{child.name}".lstrip("."))
                continue
            if isinstance(child, ast.Call):
                func = child.func
                name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
                if name in opening:
                    found.add((where, ast.unparse(func)))
            visit(child, where)

    visit(ast.parse(path.read_text()), "")
    return found


REVIEWED_FILE_OPENS = {
    "depth.py": {("_load_depth_model", "DPTImageProcessorPil.from_pretrained"),
                 ("_load_depth_model", "AutoModelForDepthEstimation.from_pretrained")},
    "ground.py": {("_detect_faces", "cv2.CascadeClassifier"), ("load_detector", "AutoConfig.from_pretrained"),
                  ("load_detector", "AutoModelForZeroShotObjectDetection.from_pretrained"),
                  ("load_detector", "AutoProcessor.from_pretrained")},
    "ocr.py": {("_load_rapidocr", "RapidOCR")},
    "segment.py": {("_load_sam", "SamImageProcessorPil.from_pretrained"), ("_load_sam", "SamModel.from_pretrained")},
    "video.py": {("_DecordClip.__init__", "decord.VideoReader"), ("_PyAVClip.__init__", "av.open"),
                 ("_fetch", "cache.open"), ("_refuse_playlist", "open")},
}
"""Where tools open files, reviewed: model folders come from the env's backend options (operator config, never the
model), the face cascade and RapidOCR's models ship inside their wheels, video tools open ``ctx.video`` (the
sample's own clip, never a path the model names) and read its first bytes to refuse playlists."""


@pytest.mark.parametrize("module", sorted(p.name for p in (REPO / "tools").glob("*.py") if p.name != "__init__.py"))
def test_tools_open_files_only_at_reviewed_places(module: str) -> None:
    assert _file_opening_calls(REPO / "tools" / module) == REVIEWED_FILE_OPENS.get(module, set()), \
        f"tools/{module}: file-opening calls changed; review that no tool argument reaches them"


@pytest.mark.parametrize("name", TOOLS.names())
def test_no_tool_runs_code(name: str) -> None:
    """No tool takes code: no code-like argument, and no backend's module starts processes or evaluates strings."""
    tool = TOOLS.get(name)
    assert not _CODE_WORDS.search(name) and not any(_CODE_WORDS.search(a) for a in _properties(name))
    for backend in tool.backends.values():
        path = Path(sys.modules[backend.fn.__module__].__file__ or "")
        tree = ast.parse(path.read_text())
        aliases = _aliases(tree)
        imported = set(aliases.values()) | {v.split(".")[0] for v in aliases.values()}
        assert not imported & {"subprocess", "runpy", "code", "codeop", "pty", "ctypes"}, path
        calls = {_dotted(n.func, aliases) or "" for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert not [c for c in calls if c.startswith(("os.exec", "os.spawn", "os.fork", "os.posix_spawn"))], path
        assert scan_source(path.read_text(), str(path)) == []


# ---------------------------------------------------------------- 3. dataset loaders

DEEP_LIST = "[" * 10_000 + "]" * 10_000
DEEP_OBJECT = '{"a": ' * 10_000 + "1" + "}" * 10_000
LONG_LINE = "[" + '"x", ' * 220_000 + '"x"]'  # 1.1 MB, over the 1 MiB line limit


def _ts_clip(path: Path) -> None:
    """8 flat grey (200) frames in an MPEG-TS file, the form an HLS segment takes."""
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 200, np.uint8), format="rgb24")
        for _ in range(8):
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """``root/`` with ``a/x.png``, a link ``out`` to ``outside/`` (``x.png``, ``secret.ts``), a self-link ``loop``
    and links ``l1`` <-> ``l2``; next to the root (outside it) also ``a/x.png``."""
    root = tmp_path / "root"
    for image in (root / "a" / "x.png", tmp_path / "a" / "x.png", tmp_path / "outside" / "x.png"):
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(image)
    _ts_clip(tmp_path / "outside" / "secret.ts")
    os.symlink(tmp_path / "outside", root / "out")
    os.symlink(root / "loop", root / "loop")
    os.symlink(root / "l2", root / "l1")
    os.symlink(root / "l1", root / "l2")
    return root


def _jsonl_task(root: Path, **fields: Any) -> VgymJsonlTask:
    """A vgym JSONL dataset of one record (``fields`` override; None removes one), read by the loader."""
    record = {"id": "r", "question": "q", "answer": "a", "answer_type": "exact", "images": ["a/x.png"], **fields}
    (root / "data.jsonl").write_text(json.dumps({k: v for k, v in record.items() if v is not None}) + "\n")
    return VgymJsonlTask({"root": str(root)})


VIDEO = {"images": None, "answer_type": "interval", "answer": "[0, 1]"}


@pytest.mark.parametrize("fields, message", [
    ({"images": ["out/../a/x.png"]}, "path 'out/../a/x.png' resolves to {tmp}/a/x.png, outside the dataset root"),
    ({"images": ["loop"]}, "{root}/loop…Too many levels of symbolic links"),
    ({"images": ["l1/x.png"]}, "{root}/l1/x.png…Too many levels of symbolic links"),
    ({"images": ["file:///etc/passwd"]}, "image file not found: {root}/file:/etc/passwd"),
    ({"images": ["http://127.0.0.1:9/x.png"]}, "image file not found: {root}/http:/127.0.0.1:9/x.png"),
    ({"images": ["~/.ssh/id_rsa"]}, "image file not found: {root}/~/.ssh/id_rsa"),
    ({"images": ["a/x.png\x00.jpg"]}, "a dataset path must be a non-empty string relative to the root"),
    ({**VIDEO, "video": "concat:/etc/passwd|a/x.png"}, "video file not found: {root}/concat:/etc/passwd|a/x.png"),
    ({**VIDEO, "video": "subfile,,start,0,end,0,,:/etc/passwd"}, "video file not found: {root}/subfile,,start,0,end"),
    ({**VIDEO, "video": "out/secret.ts"}, "path 'out/secret.ts' resolves to {tmp}/outside/secret.ts, outside the"),
])
def test_record_paths_stay_in_the_root(layout: Path, fields: dict[str, Any], message: str) -> None:
    """``..`` after a link (lexically inside), link loops, URL-like and ``~`` paths (looked up inside the root, never
    fetched or expanded), a NUL byte, a video reached through a linked folder. ``message``: the parts the error
    must hold, in order, separated by "…"."""
    task = _jsonl_task(layout, **fields)
    with pytest.raises(InvalidConfigError) as error:
        task.sample("test", 0, 0)
    real = os.path.realpath(layout)
    parts = [re.escape(p.format(root=real, tmp=os.path.dirname(real))) for p in message.split("…")]
    assert re.match("vgym_jsonl record 'r': .*" + ".*".join(parts), str(error.value)), str(error.value)


@pytest.mark.parametrize("image", ["//etc/passwd", "C:/Windows/win.ini", "\\\\server\\share\\x.png", "\\etc\\passwd"])
def test_absolute_forms_are_refused_when_annotations_are_read(layout: Path, image: str) -> None:
    with pytest.raises(InvalidConfigError, match=rf"data.jsonl:1: absolute path {re.escape(repr(image))}; paths are "):
        _jsonl_task(layout, images=[image])


@pytest.mark.parametrize("annotations, message", [
    ("/etc/passwd", r"absolute path '/etc/passwd' is not allowed"),
    ("loop", r"cannot read the annotation file .*/root/loop: Too many levels of symbolic links"),
    ("out/x.jsonl", r"path 'out/x.jsonl' resolves to .*/outside/x.jsonl, outside the dataset root"),
    ("a\x00.jsonl", r"a dataset path must be a non-empty string"),
])
@pytest.mark.parametrize("loader", [VgymJsonlTask, VstarTask, RefcocoTask])
def test_annotation_paths_stay_in_the_root(layout: Path, loader: type, annotations: str, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        loader({"root": str(layout), "annotations": annotations})


def test_media_folders_linked_out_of_the_root_are_refused(layout: Path) -> None:
    line = {"image": "x.png", "bbox": [0, 0, 4, 4], "expression": "a"}
    (layout / "refcoco.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(InvalidConfigError, match=r"refcoco record '1': path 'out/x.png' resolves to .*/outside/x.png, "
                                                 r"outside the dataset root"):
        RefcocoTask({"root": str(layout), "image_dir": "out"}).sample("test", 0, 0)
    (layout / "refcoco.jsonl").write_text(json.dumps({**line, "image": "/etc/passwd"}) + "\n")
    with pytest.raises(InvalidConfigError, match=r"refcoco.jsonl:1: absolute path '/etc/passwd'"):
        RefcocoTask({"root": str(layout), "image_dir": "a"})  # posixpath.join drops image_dir for an absolute image
    (layout / "charades_sta_test.txt").write_text("secret 0 1##a\n")
    with pytest.raises(InvalidConfigError, match=r"charades_sta record 'test/1': path 'out/secret.ts' resolves to "):
        CharadesStaTask({"root": str(layout), "video_dir": "out", "video_ext": ".ts"}).sample("test", 0, 0)


@pytest.mark.parametrize("bad, message", [(DEEP_LIST, "JSON nested deeper than 32 levels"),
                                          (DEEP_OBJECT, "JSON nested deeper than 32 levels"),
                                          (LONG_LINE, r"line is over 1048576 bytes \(1 MiB\)")])
@pytest.mark.parametrize("loader, name, first", [
    (VstarTask, "test_questions.jsonl", {"image": "a/x.png", "text": "q\n(A) a\n(B) b", "label": "A"}),
    (RefcocoTask, "refcoco.jsonl", {"image": "a/x.png", "bbox": [0, 0, 4, 4], "expression": "a"}),
])  # the vgym JSONL reader's own limits are in tests/test_datasets.py
def test_json_line_limits_name_file_and_line(layout: Path, loader: type, name: str, first: dict, bad: str,
                                             message: str) -> None:
    path = layout / name
    path.write_text(json.dumps(first) + "\n" + bad + "\n")
    with pytest.raises(InvalidConfigError, match=rf"^{re.escape(os.path.realpath(path))}:2: {message}"):
        loader({"root": str(layout)})


def test_whole_file_and_text_limits_name_the_file(layout: Path) -> None:
    questions = layout / "test" / "test_human.json"
    questions.parent.mkdir()
    for bad in (DEEP_LIST, DEEP_OBJECT):
        questions.write_text(bad)
        with pytest.raises(InvalidConfigError, match=rf"^{re.escape(os.path.realpath(questions))}: JSON nested deeper "
                                                     r"than 32 levels"):
            ChartqaTask({"root": str(layout)})
    lines = layout / "charades_sta_test.txt"
    lines.write_text("v 0 1##a\nv 0 1##" + "a" * (1 << 20) + "\n")
    with pytest.raises(InvalidConfigError, match=rf"^{re.escape(os.path.realpath(lines))}:2: line is over 1048576"):
        CharadesStaTask({"root": str(layout)})


def _playlist(layout: Path, name: str) -> str:
    """An HLS playlist or ffconcat list that names ``outside/secret.ts`` (absolute, ``..``, file URL, via a link)."""
    secret = os.path.realpath(layout.parent / "outside" / "secret.ts")
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{}\n#EXT-X-ENDLIST\n"
    return {"abs.m3u8": hls.format(secret), "up.m3u8": hls.format("../outside/secret.ts"),
            "url.m3u8": hls.format(f"file://{secret}"), "hls.mp4": hls.format(secret),
            "concat.mp4": "ffconcat version 1.0\nfile out/secret.ts\n"}[name]


@pytest.mark.parametrize("name", ["abs.m3u8", "up.m3u8", "url.m3u8", "hls.mp4", "concat.mp4"])
def test_a_video_playlist_cannot_read_outside_the_root(layout: Path, name: str) -> None:
    """FFmpeg follows playlists (HLS, ffconcat) to the files they name, wherever those are: a "clip" inside the root
    must not become a window onto files outside it, neither when the loader decodes it nor through the video tools
    (the secret's frames are flat grey 200; a refused clip yields none)."""
    (layout / name).write_text(_playlist(layout, name))
    task = _jsonl_task(layout, **VIDEO, video=name)
    with pytest.raises(InvalidConfigError, match=rf"^vgym_jsonl record 'r': .*{re.escape(name)}"):
        task.sample("test", 0, 0)
    ctx = ToolContext([np.zeros((48, 64, 3), np.uint8)], {}, np.random.default_rng(0), 224 * 224,
                      video=os.path.realpath(layout / name))
    for backend in ("decord", "pyav", "auto"):
        with pytest.raises(ToolError):
            TOOLS.get("get_frame")(ctx, {"t_s": 0.5}, backend=backend)
    for decoder in ("decord", "pyav"):  # refused when opened, not merely when a seek fails after the file was read
        with pytest.raises(Exception):  # noqa: B017  each decoder raises its own type; the tools wrap any in ToolError
            with VideoReaderCache(decoder).open(ctx.video):
                pass
