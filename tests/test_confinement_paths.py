"""Confinement audit, paths (issue 9): tools cannot read files, and dataset loaders cannot read outside their
roots.

Sections:

1. Tools: no argument schema can name a file, path-like strings in every string argument open nothing outside
   Python's own files (checked with an audit hook, through the env), and the file-opening call sites in
   ``tools/`` are a reviewed list (:data:`REVIEWED_FILE_OPENS`).
2. Dataset loaders (only cases ``tests/data/test_datasets.py`` and ``tests/tasks/test_local_data.py`` lack):
   ``..`` after a symbolic link, absolute forms, symbolic-link loops, symlinked media folders, URL-like paths,
   NUL bytes, JSON depth and line-size limits through each loader, and video playlists (HLS, ffconcat) that
   name files outside the root.

The static scan for eval / exec / unpickling and the check that no tool runs code are in
``tests/test_confinement_code.py``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
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
from vgym.data.media import VideoReaderCache

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- 1. tools

_FILE_WORDS = re.compile(r"path|file|dir|folder|url|uri|root|model|checkpoint|video", re.IGNORECASE)

REVIEWED_STRING_ARGUMENTS = {
    (
        "ground",
        "query",
    ): "text matched against detections (oracle, OpenCV colour/shape words or a detector prompt)",
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
    """Collects the paths of Python ``open`` audit events while ``active`` (an audit hook cannot be removed,
    so it is installed once and stays inert otherwise)."""

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
    return [
        str(secret),
        f"file://{secret}",
        up + str(secret).lstrip("/"),
        "/etc/passwd",
        "../../../../etc/passwd",
        "~/.ssh/id_rsa",
        "/proc/self/environ",
        "C:\\Windows\\win.ini",
        "\\\\server\\share\\x",
        f"{secret}\x00.png",
        "http://127.0.0.1:9/x.png",
    ]


@pytest.mark.parametrize("backends", [{}, {"ground": "opencv", "point": "opencv"}])
def test_path_like_strings_in_tool_arguments_open_no_file(tmp_path: Path, open_recorder: _OpenRecorder,
                                                           backends: dict[str, str]) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-7f3a")
    env = VisualToolEnv("spatial_2d", tools=tuple(TOOLS.names()), max_turns=1000, max_images=1000,
                        tool_runtime={"backends": backends})
    env.reset(seed=0)
    required = {
        n: set(TOOLS.get(n).schema["function"]["parameters"].get("required", [])) for n in TOOLS.names()
    }
    filler = {"number": 0, "integer": 0, "array": [], "boolean": False}

    def call(name: str, arguments: dict[str, Any]) -> str:
        full = {a: filler.get(_properties(name)[a].get("type"), "x") for a in required[name] - set(arguments)}
        action = (
            "<tool_call>" + json.dumps({"name": name, "arguments": {**full, **arguments}}) + "</tool_call>"
        )
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
    opening = {
        "open",
        "imread",
        "VideoCapture",
        "VideoReader",
        "CascadeClassifier",
        "from_pretrained",
        "read_bytes",
        "read_text",
        "load",
        "fromfile",
        "loadtxt",
        "RapidOCR",
        "InferenceSession",
    }
    found: set[tuple[str, str]] = set()

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, f"{where}.{child.name}".lstrip("."))
                continue
            if isinstance(child, ast.Call):
                func = child.func
                name = (
                    func.attr
                    if isinstance(func, ast.Attribute)
                    else func.id
                    if isinstance(func, ast.Name)
                    else ""
                )
                if name in opening:
                    found.add((where, ast.unparse(func)))
            visit(child, where)

    visit(ast.parse(path.read_text()), "")
    return found


REVIEWED_FILE_OPENS = {
    "depth.py": {
        ("_load_depth_model", "DPTImageProcessorPil.from_pretrained"),
        ("_load_depth_model", "AutoModelForDepthEstimation.from_pretrained"),
    },
    "ground.py": {
        ("_detect_faces", "cv2.CascadeClassifier"),
        ("load_detector", "AutoConfig.from_pretrained"),
        ("load_detector", "AutoModelForZeroShotObjectDetection.from_pretrained"),
        ("load_detector", "AutoProcessor.from_pretrained"),
    },
    "ocr.py": {("_load_rapidocr", "RapidOCR")},
    "segment.py": {
        ("_load_sam", "SamImageProcessorPil.from_pretrained"),
        ("_load_sam", "SamModel.from_pretrained"),
    },
    "video.py": {("_fetch", "cache.open")},
}
"""Where tools open files, reviewed: model folders come from the env's backend options (operator config, never
the model), the face cascade and RapidOCR's models ship inside their wheels, video tools open ``ctx.video``
(the sample's own clip, never a path the model names) and read its first bytes to refuse playlists."""


@pytest.mark.parametrize(
    "module", sorted(p.name for p in (REPO / "tools").glob("*.py") if p.name != "__init__.py")
)
def test_tools_open_files_only_at_reviewed_places(module: str) -> None:
    assert _file_opening_calls(REPO / "tools" / module) == REVIEWED_FILE_OPENS.get(module, set()), \
        f"tools/{module}: file-opening calls changed; review that no tool argument reaches them"


def test_media_readers_open_only_the_file_they_are_given() -> None:
    """The video tools open clips through :mod:`vgym.data.media` (with ``ctx.video``, above); its readers open
    the path they are handed, once each, and read a clip's first bytes to refuse playlists."""
    assert _file_opening_calls(REPO / "vgym" / "data" / "media.py") == {
        ("_DecordClip.__init__", "decord.VideoReader"), ("_PyAVClip.__init__", "av.open"),
        ("_refuse_playlist", "open"), ("load_image", "Image.open"), ("load_image", "image.load"),
        ("overview_frames", "cache.open")}


# ---------------------------------------------------------------- 2. dataset loaders

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
    """``root/`` with ``a/x.png``, a link ``out`` to ``outside/`` (``x.png``, ``secret.ts``), a self-link
    ``loop`` and links ``l1`` <-> ``l2``; next to the root (outside it) also ``a/x.png``."""
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
    record = {
        "id": "r",
        "question": "q",
        "answer": "a",
        "answer_type": "exact",
        "images": ["a/x.png"],
        **fields,
    }
    (root / "data.jsonl").write_text(json.dumps({k: v for k, v in record.items() if v is not None}) + "\n")
    return VgymJsonlTask({"root": str(root)})


VIDEO = {"images": None, "answer_type": "interval", "answer": "[0, 1]"}


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"images": ["out/../a/x.png"]},
            "path 'out/../a/x.png' resolves to {tmp}/a/x.png, outside the dataset root",
        ),
        ({"images": ["loop"]}, "{root}/loop…Too many levels of symbolic links"),
        ({"images": ["l1/x.png"]}, "{root}/l1/x.png…Too many levels of symbolic links"),
        ({"images": ["file:///etc/passwd"]}, "image file not found: {root}/file:/etc/passwd"),
        ({"images": ["http://127.0.0.1:9/x.png"]}, "image file not found: {root}/http:/127.0.0.1:9/x.png"),
        ({"images": ["~/.ssh/id_rsa"]}, "image file not found: {root}/~/.ssh/id_rsa"),
        ({"images": ["a/x.png\x00.jpg"]}, "a dataset path must be a non-empty string relative to the root"),
        (
            {**VIDEO, "video": "concat:/etc/passwd|a/x.png"},
            "video file not found: {root}/concat:/etc/passwd|a/x.png",
        ),
        (
            {**VIDEO, "video": "subfile,,start,0,end,0,,:/etc/passwd"},
            "video file not found: {root}/subfile,,start,0,end",
        ),
        (
            {**VIDEO, "video": "out/secret.ts"},
            "path 'out/secret.ts' resolves to {tmp}/outside/secret.ts, outside the",
        ),
    ],
)
def test_record_paths_stay_in_the_root(layout: Path, fields: dict[str, Any], message: str) -> None:
    """``..`` after a link (lexically inside), link loops, URL-like and ``~`` paths (looked up inside the
    root, never fetched or expanded), a NUL byte, a video reached through a linked folder. ``message``: the
    parts the error must hold, in order, separated by "…"."""
    task = _jsonl_task(layout, **fields)
    with pytest.raises(InvalidConfigError) as error:
        task.sample("test", 0, 0)
    real = os.path.realpath(layout)
    parts = [re.escape(p.format(root=real, tmp=os.path.dirname(real))) for p in message.split("…")]
    assert re.match("vgym_jsonl record 'r': .*" + ".*".join(parts), str(error.value)), str(error.value)


@pytest.mark.parametrize(
    "image", ["//etc/passwd", "C:/Windows/win.ini", "\\\\server\\share\\x.png", "\\etc\\passwd"]
)
def test_absolute_forms_are_refused_when_annotations_are_read(layout: Path, image: str) -> None:
    with pytest.raises(
        InvalidConfigError, match=rf"data.jsonl:1: absolute path {re.escape(repr(image))}; paths are "
    ):
        _jsonl_task(layout, images=[image])


@pytest.mark.parametrize("annotations, message", [
    ("/etc/passwd", r"absolute path '/etc/passwd' is not allowed"),
    ("loop", r"cannot read the annotation file .*/root/loop: Too many levels of symbolic links"),
    ("out/x.jsonl", r"path 'out/x.jsonl' resolves to .*/outside/x.jsonl, outside the dataset root"),
    ("a\x00.jsonl", r"a dataset path must be a non-empty string"),
])
@pytest.mark.parametrize("loader", [VgymJsonlTask, VstarTask, RefcocoTask])
def test_annotation_paths_stay_in_the_root(
    layout: Path, loader: type, annotations: str, message: str
) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        loader({"root": str(layout), "annotations": annotations})
    if loader is RefcocoTask:  # the release's refs file and instances.json are confined alike
        with pytest.raises(InvalidConfigError, match=r"'out/refcoco/refs\(unc\).p' resolves to .*/outside/"):
            RefcocoTask({"root": str(layout), "dataset": "out/refcoco"})


def test_media_folders_linked_out_of_the_root_are_refused(layout: Path) -> None:
    """Refused when the task is built (the media folder is checked then), before any sample."""
    line = {"image": "x.png", "bbox": [0, 0, 4, 4], "expression": "a"}
    (layout / "refcoco.jsonl").write_text(json.dumps(line) + "\n")
    jsonl = {"root": str(layout), "annotations": "refcoco.jsonl"}
    with pytest.raises(InvalidConfigError, match=r"path 'out' resolves to .*/outside, outside the dataset"):
        RefcocoTask({**jsonl, "image_dir": "out"})
    (layout / "refcoco.jsonl").write_text(json.dumps({**line, "image": "/etc/passwd"}) + "\n")
    with pytest.raises(InvalidConfigError, match=r"refcoco.jsonl:1: absolute path '/etc/passwd'"):
        # posixpath.join drops image_dir for an absolute image
        RefcocoTask({**jsonl, "image_dir": "a"})
    (layout / "charades_sta_test.txt").write_text("secret 0 1##a\n")
    with pytest.raises(InvalidConfigError, match=r"path 'out' resolves to .*/outside, outside the dataset"):
        CharadesStaTask({"root": str(layout), "video_dir": "out", "video_ext": ".ts"})


@pytest.mark.parametrize("bad, message", [(DEEP_LIST, "JSON nested deeper than 32 levels"),
                                          (DEEP_OBJECT, "JSON nested deeper than 32 levels"),
                                          (LONG_LINE, r"line is over 1048576 bytes \(1 MiB\)")])
@pytest.mark.parametrize("loader, name, first", [
    (VstarTask, "test_questions.jsonl", {"image": "a/x.png", "text": "q\n(A) a\n(B) b", "label": "A"}),
    (RefcocoTask, "refcoco.jsonl", {"image": "a/x.png", "bbox": [0, 0, 4, 4], "expression": "a"}),
])  # the vgym JSONL reader's own limits are in tests/data/test_datasets.py
def test_json_line_limits_name_file_and_line(layout: Path, loader: type, name: str, first: dict, bad: str,
                                             message: str) -> None:
    path = layout / name
    path.write_text(json.dumps(first) + "\n" + bad + "\n")
    with pytest.raises(InvalidConfigError, match=rf"^{re.escape(os.path.realpath(path))}:2: {message}"):
        loader({"root": str(layout), "annotations": name})


def test_whole_file_and_text_limits_name_the_file(layout: Path) -> None:
    questions = layout / "test" / "test_human.json"
    questions.parent.mkdir()
    for bad in (DEEP_LIST, DEEP_OBJECT):
        questions.write_text(bad)
        with pytest.raises(
            InvalidConfigError,
            match=rf"^{re.escape(os.path.realpath(questions))}: JSON nested deeper "
            r"than 32 levels",
        ):
            ChartqaTask({"root": str(layout)})
    lines = layout / "charades_sta_test.txt"
    lines.write_text("v 0 1##a\nv 0 1##" + "a" * (1 << 20) + "\n")
    with pytest.raises(
        InvalidConfigError, match=rf"^{re.escape(os.path.realpath(lines))}:2: line is over 1048576"
    ):
        CharadesStaTask({"root": str(layout)})


def _playlist(layout: Path, name: str) -> str:
    """An HLS playlist or ffconcat list that names ``outside/secret.ts`` (absolute, ``..``, file URL, via a
    link)."""
    secret = os.path.realpath(layout.parent / "outside" / "secret.ts")
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{}\n#EXT-X-ENDLIST\n"
    return {"abs.m3u8": hls.format(secret), "up.m3u8": hls.format("../outside/secret.ts"),
            "url.m3u8": hls.format(f"file://{secret}"), "hls.mp4": hls.format(secret),
            "concat.mp4": "ffconcat version 1.0\nfile out/secret.ts\n"}[name]


@pytest.mark.parametrize("name", ["abs.m3u8", "up.m3u8", "url.m3u8", "hls.mp4", "concat.mp4"])
def test_a_video_playlist_cannot_read_outside_the_root(layout: Path, name: str) -> None:
    """FFmpeg follows playlists (HLS, ffconcat) to the files they name, wherever those are: a "clip" inside
    the root must not become a window onto files outside it, neither when the loader decodes it nor through
    the video tools (the secret's frames are flat grey 200; a refused clip yields none)."""
    (layout / name).write_text(_playlist(layout, name))
    task = _jsonl_task(layout, **VIDEO, video=name)
    with pytest.raises(InvalidConfigError, match=rf"^vgym_jsonl record 'r': .*{re.escape(name)}"):
        task.sample("test", 0, 0)
    ctx = ToolContext([np.zeros((48, 64, 3), np.uint8)], {}, np.random.default_rng(0), 224 * 224,
                      video=os.path.realpath(layout / name))
    for backend in ("decord", "pyav", "auto"):
        with pytest.raises(ToolError):
            TOOLS.get("get_frame")(ctx, {"t_s": 0.5}, backend=backend)
    # refused when opened, not merely when a seek fails after the file was read
    for decoder in ("decord", "pyav"):
        with pytest.raises(Exception):  # noqa: B017  each decoder raises its own type; the tools wrap any in ToolError
            with VideoReaderCache(decoder).open(ctx.video):
                pass
