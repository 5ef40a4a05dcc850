"""Tests of vgym/datasets.py and vgym/dataset_records.py: record validation (every rule, messages matched), the JSON Lines reader's limits,
path confinement (``..``, absolute paths, symbolic links out of and inside the root), image loading (each mode
converted, pixels checked against what was written, the bomb guard, broken files), scoring by answer type with
hand-worked values, and the generic :class:`DatasetTask` (index modulo, splits, question and prompt, video frames
read back from their pixels).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from vgym.dataset_records import DatasetRecord, parse_record, read_vgym_jsonl, score_record
from vgym.datasets import (MAX_LINE_BYTES, DatasetConfig, DatasetTask, confined_path, load_image, read_json,
                           read_json_lines)
from vgym.errors import InvalidConfigError
from vgym.synthetic_video import write_synthetic_clip

WHERE = "data.jsonl:3"


def _line(**fields: Any) -> dict[str, Any]:
    """A valid exact-answer record, with ``fields`` replacing or adding fields (None removes one)."""
    base: dict[str, Any] = {"id": "r1", "question": "What colour?", "answer": "red", "answer_type": "exact",
                            "images": ["a.png"]}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def _write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def frame_index(frame: np.ndarray) -> int:
    """The index a synthetic clip frame shows: 12 cells across its top quarter, most significant bit left, white 1."""
    height, width = frame.shape[:2]
    bits = ["1" if frame[height // 8, int((b + 0.5) * width / 12)].mean() > 128 else "0" for b in range(12)]
    return int("".join(bits), 2)


# ---------------------------------------------------------------- parse_record


def test_parse_record_builds_every_field() -> None:
    record = parse_record({"id": "q7", "question": "Which?", "answer": "b", "answer_type": "choice",
                           "options": ["red", "blue"], "images": ["x/a.png", "b.jpg"], "video": "v.mp4",
                           "split": "train", "tools": ["crop"], "metadata": {"source": "s"}}, where=WHERE)
    assert record == DatasetRecord(id="q7", split="train", question="Which?", answer="B", answer_type="choice",
                                   images=("x/a.png", "b.jpg"), video="v.mp4", options=("red", "blue"),
                                   tools=("crop",), metadata={"source": "s"})
    numeric = parse_record(_line(answer_type="numeric", answer="1,250 m", tolerance=0.05, abs_tolerance=2),
                           where=WHERE)
    assert (numeric.tolerance, numeric.abs_tolerance, numeric.split) == (0.05, 2.0, "test")  # split defaults to test
    video_only = parse_record(_line(images=None, video="clip.mp4", answer_type="interval", answer="[0, 1.5]"),
                              where=WHERE)
    assert video_only.images == () and video_only.video == "clip.mp4"
    assert parse_record(_line(images=["a/../b.png"]), where=WHERE).images == ("a/../b.png",)  # stays inside


@pytest.mark.parametrize("fields, message", [
    ({"answer_type": "yesno"}, r"answer_type must be one of \('exact', 'choice', 'numeric', 'box', 'interval'\), "
                               r"got 'yesno'"),
    ({"question": None}, r"missing required field\(s\) \['question'\]"),
    ({"imgaes": ["a.png"]}, r"unknown field\(s\) \['imgaes'\] \(did you mean 'images'\?\).*under 'metadata'"),
    ({"split": "dev"}, r"split must be one of \('train', 'val', 'test'\), got 'dev'"),
    ({"images": []}, r"needs at least one of 'images' \(a non-empty list\) or 'video'"),
    ({"images": "a.png"}, r"'images' must be a list of non-empty strings, got 'a.png'"),
    ({"images": ["a.png", ""]}, r"'images' must be a list of non-empty strings"),
    ({"images": ["/etc/passwd"]}, r"absolute path '/etc/passwd'; paths are relative to the dataset root"),
    ({"images": ["C:/data/a.png"]}, r"absolute path 'C:/data/a.png'"),
    ({"images": ["../a.png"]}, r"path '../a.png' leaves the dataset root"),
    ({"video": "x/../../v.mp4"}, r"path 'x/../../v.mp4' leaves the dataset root"),
    ({"video": ""}, r"'video' must be a non-empty string, got ''"),
    ({"id": ""}, r"'id' must be a non-empty string, got ''"),
    ({"id": 5}, r"'id' must be a non-empty string, got 5"),
    ({"answer": "  "}, r"'answer' must be a non-empty string"),
    ({"metadata": ["a"]}, r"'metadata' must be a JSON object, got list"),
    ({"tools": "crop"}, r"'tools' must be a list of non-empty strings"),
    ({"options": ["a", "b"]}, r"'options' applies only to answer_type 'choice', not 'exact'"),
    ({"tolerance": 0.1}, r"'tolerance' applies only to answer_type 'numeric'"),
    ({"answer_type": "numeric", "aliases": ["x"], "answer": "3"}, r"'aliases' applies only to answer_type 'exact'"),
    ({"answer_type": "choice", "options": ["only"], "answer": "A"}, r"needs 2 to 26 'options', got 1"),
    ({"answer_type": "choice", "answer": "A"}, r"needs 2 to 26 'options', got 0"),
    ({"answer_type": "choice", "options": ["x1", "x2"], "answer": "C"}, r"letter \(A to B\), got 'C'"),
    ({"answer_type": "choice", "options": ["x1", "x2"], "answer": "x2"}, r"letter \(A to B\), got 'x2'"),
    ({"answer_type": "numeric", "answer": "3 or 4"}, r"must hold exactly one number, got '3 or 4'"),
    ({"answer_type": "numeric", "answer": "many"}, r"must hold exactly one number"),
    ({"answer_type": "numeric", "answer": "3", "tolerance": -0.1}, r"'tolerance' must be a finite number >= 0"),
    ({"answer_type": "numeric", "answer": "3", "abs_tolerance": True}, r"'abs_tolerance' must be a finite number"),
    ({"answer_type": "box", "answer": "[10, 10, 5, 20]"}, r"x1 < x2 and y1 < y2, got '\[10, 10, 5, 20\]'"),
    ({"answer_type": "box", "answer": "[1, 2, 3]"}, r"a 'box' answer is"),
    ({"answer_type": "interval", "answer": "[5, 2]"}, r"0 <= start < end, got '\[5, 2\]'"),
    ({"answer_type": "interval", "answer": "[-1, 2]"}, r"0 <= start < end"),
])
def test_parse_record_rejects(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfigError, match=f"^{WHERE}: .*{message}"):
        parse_record(_line(**fields), where=WHERE)


def test_parse_record_rejects_a_non_object() -> None:
    with pytest.raises(InvalidConfigError, match=f"^{WHERE}: a record must be a JSON object, got list"):
        parse_record([1, 2], where=WHERE)  # type: ignore[arg-type]


# ---------------------------------------------------------------- JSON Lines limits


def test_reader_skips_blank_and_comment_lines_and_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join([
        json.dumps(_line(id="a")), "", "   ", "// a comment", json.dumps(_line(id="b")), "{broken"]).encode())
    with pytest.raises(InvalidConfigError, match=rf"^{path}:6: invalid JSON: Expecting property name"):
        read_vgym_jsonl(path)  # line numbers count every line, skipped ones included
    path.write_bytes(path.read_bytes().rsplit(b"\n", 1)[0])
    assert [r.id for r in read_vgym_jsonl(path)] == ["a", "b"]


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [_line(id="a"), _line(id="b"), _line(id="a")])
    with pytest.raises(InvalidConfigError, match=rf"^{path}:3: duplicate id 'a' \(first used at {path}:1\)"):
        read_vgym_jsonl(path)


def test_line_length_limit_is_exactly_one_mebibyte(tmp_path: Path) -> None:
    def line_of(size: int) -> str:
        text = json.dumps(_line(metadata={"pad": ""}))
        return text.replace('"pad": ""', '"pad": "' + "x" * (size - len(text)) + '"')

    assert len(line_of(MAX_LINE_BYTES)) == MAX_LINE_BYTES
    path = _write_jsonl(tmp_path / "ok.jsonl", [line_of(MAX_LINE_BYTES)])
    assert len(read_vgym_jsonl(path)[0].metadata["pad"]) > 1_000_000
    path = _write_jsonl(tmp_path / "long.jsonl", [_line(id="a"), line_of(MAX_LINE_BYTES + 1)])
    with pytest.raises(InvalidConfigError, match=rf"^{path}:2: line is over 1048576 bytes \(1 MiB\)"):
        read_vgym_jsonl(path)
    path.write_text(json.dumps(_line()) + "\n" + "[" * 5_000_000)  # 5 MB without a newline: read in bounded pieces
    with pytest.raises(InvalidConfigError, match=r":2: line is over"):
        read_vgym_jsonl(path)


def _nested(levels: int) -> dict[str, Any]:
    """A record whose JSON depth is ``levels``: the record (1), its metadata (2), then lists."""
    value: Any = "leaf"
    for _ in range(levels - 2):
        value = [value]
    return _line(metadata={"deep": value})


def test_nesting_limit_is_32(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "ok.jsonl", [_nested(32)])
    assert read_vgym_jsonl(path)[0].id == "r1"
    path = _write_jsonl(tmp_path / "deep.jsonl", [_nested(33)])
    with pytest.raises(InvalidConfigError, match=rf"^{path}:1: JSON nested deeper than 32 levels \(33\)"):
        read_vgym_jsonl(path)
    path = _write_jsonl(tmp_path / "deeper.jsonl", ["[" * 200_000 + "]" * 200_000])  # the decoder's own recursion
    with pytest.raises(InvalidConfigError, match=rf"^{path}:1: JSON nested deeper than 32 levels"):
        read_vgym_jsonl(path)


@pytest.mark.parametrize("text, message", [
    ('{"id": "a", "id": "b"}', r"duplicate key 'id' in an object"),
    ('{"id": NaN}', r"NaN is not a valid number here"),
    ('{"id": -Infinity}', r"-Infinity is not a valid number here"),
    ("[1, 2]", r"a record must be a JSON object, got list"),
    ('{"id": "a",}', r"invalid JSON: Expecting property name enclosed in double quotes at column 12"),
])
def test_malformed_lines(tmp_path: Path, text: str, message: str) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [_line(id="ok"), text])
    with pytest.raises(InvalidConfigError, match=rf"^{path}:2: {message}"):
        read_vgym_jsonl(path)


def test_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(_line()).encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(InvalidConfigError, match=rf"^{path}:2: not UTF-8 text \(invalid start byte at byte 8\)"):
        read_json_lines(path)
    with pytest.raises(InvalidConfigError, match=r"cannot read the annotation file .*missing.jsonl: No such file"):
        read_vgym_jsonl(tmp_path / "missing.jsonl")
    big = tmp_path / "big.json"
    big.write_text("[" + "1, " * 100 + "1]")
    assert len(read_json(big)) == 101
    with pytest.raises(InvalidConfigError, match=r"big.json: annotation file is 303 bytes, over the limit of 100"):
        read_json(big, max_bytes=100)


# ---------------------------------------------------------------- confinement


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``root/`` with ``a/x.png``, a link ``root/out`` to ``outside/``, a link ``root/in`` to ``root/a`` and a
    link ``root/secret.png`` to ``outside/s.png``."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (root / "a" / "x.png").write_bytes(b"")
    (outside / "s.png").write_bytes(b"")
    os.symlink(outside, root / "out")
    os.symlink(root / "a", root / "in")
    os.symlink(outside / "s.png", root / "secret.png")
    return root


def test_confined_paths_inside_the_root(tree: Path) -> None:
    real = os.path.realpath(tree)
    assert confined_path(tree, "a/x.png") == os.path.join(real, "a", "x.png")
    assert confined_path(str(tree), "a/../a/x.png") == os.path.join(real, "a", "x.png")
    assert confined_path(tree, "in/x.png") == os.path.join(real, "a", "x.png")  # a link that stays inside is fine
    assert confined_path(tree, "a/new.png") == os.path.join(real, "a", "new.png")  # need not exist yet
    linked_root = tree.parent / "root-link"
    os.symlink(tree, linked_root)
    assert confined_path(linked_root, "a/x.png") == os.path.join(real, "a", "x.png")


@pytest.mark.parametrize("relative, message", [
    ("../outside/s.png", r"path '../outside/s.png' resolves to .*outside/s.png, outside the dataset root"),
    ("a/../../outside/s.png", r"resolves to .*, outside the dataset root"),
    ("out/s.png", r"path 'out/s.png' resolves to .*outside/s.png, outside the dataset root .*symbolic link"),
    ("secret.png", r"path 'secret.png' resolves to .*outside/s.png, outside"),
    ("/etc/passwd", r"absolute path '/etc/passwd' is not allowed"),
    ("", r"a dataset path must be a non-empty string"),
    ("a/\x00.png", r"a dataset path must be a non-empty string"),
])
def test_confined_path_refuses_escapes(tree: Path, relative: str, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        confined_path(tree, relative)


# ---------------------------------------------------------------- load_image


def test_rgb_png_and_jpeg(tmp_path: Path) -> None:
    image = _noise(30, 40)
    Image.fromarray(image).save(tmp_path / "a.png")
    loaded = load_image(str(tmp_path / "a.png"))
    assert loaded.dtype == np.uint8 and loaded.shape == (30, 40, 3) and loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, image)
    smooth = cv2.resize(image, (400, 300), interpolation=cv2.INTER_CUBIC)  # JPEG keeps smooth images close
    cv2.imwrite(str(tmp_path / "b.jpg"), smooth[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert np.abs(load_image(str(tmp_path / "b.jpg")).astype(int) - smooth).mean() < 3  # measured ~1.2


def test_mode_conversions(tmp_path: Path) -> None:
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey, mode="L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_image(str(tmp_path / "l.png")), np.repeat(grey[..., None], 3, axis=2))

    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, :, :3] = rgba[1, :, :3] = (0, 100, 255)
    rgba[0, :, 3] = (255, 0, 128)  # opaque, transparent, half
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = load_image(str(tmp_path / "a.png"))
    # Over white: c * a/255 + 255 * (1 - a/255), rounded; a = 128: 0 -> 127.5 (127), 100 -> 177.7, 255 -> 255.
    assert out[0].tolist() == [[0, 100, 255], [255, 255, 255], [127, 177, 255]]
    assert out[1].tolist() == [[255, 255, 255]] * 3  # alpha 0 everywhere

    sixteen = np.array([[0, 257, 1000, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), sixteen)
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # Pillow keeps 16 bits; convert("RGB") would clip
    assert load_image(str(tmp_path / "g16.png"))[0, :, 0].tolist() == [0, 1, 4, 255]  # round(v * 255 / 65535)

    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # cyan 0, magenta + yellow full: red
    assert np.abs(load_image(str(tmp_path / "c.jpg")).astype(int) - (255, 0, 0)).max() <= 3

    palette = Image.new("P", (4, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putdata([0, 1, 1, 0])
    palette.save(tmp_path / "p.png")
    assert load_image(str(tmp_path / "p.png"))[0].tolist() == [[10, 20, 30], [200, 100, 50], [200, 100, 50],
                                                              [10, 20, 30]]
    palette.save(tmp_path / "pt.png", transparency=1)  # index 1 transparent: white
    assert load_image(str(tmp_path / "pt.png"))[0].tolist() == [[10, 20, 30], [255] * 3, [255] * 3, [10, 20, 30]]

    Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1").save(tmp_path / "b.png")
    assert load_image(str(tmp_path / "b.png"))[0, :, 1].tolist() == [0, 255, 0]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` but holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_bomb_guard_reads_only_the_header(tmp_path: Path) -> None:
    Image.fromarray(_noise(30, 40)).save(tmp_path / "a.png")
    assert load_image(str(tmp_path / "a.png"), max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(InvalidConfigError, match=r"a.png: image is 40x30 = 1200 pixels, over max_pixels=1199"):
        load_image(str(tmp_path / "a.png"), max_pixels=1199)
    _png_header_only(tmp_path / "huge.png", 9000, 8000)  # 72 M pixels (216 MB decoded) in a 45-byte file
    with pytest.raises(InvalidConfigError, match=r"huge.png: image is 9000x8000 = 72000000 pixels, over "
                                                 r"max_pixels=64000000 \(raise max_image_pixels"):
        load_image(str(tmp_path / "huge.png"))


def test_broken_files_name_the_file(tmp_path: Path) -> None:
    image = _noise(64, 64)
    Image.fromarray(image).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    cv2.imwrite(str(tmp_path / "full.jpg"), image)
    jpeg = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image at all")
    for name in ("cut.png", "cut.jpg"):
        with pytest.raises(InvalidConfigError, match=rf"{name}: the image could not be decoded .*truncated"):
            load_image(str(tmp_path / name))
    for name in ("empty.png", "notes.png"):
        with pytest.raises(InvalidConfigError, match=rf"{name}: not an image Pillow can read"):
            load_image(str(tmp_path / name))
    with pytest.raises(InvalidConfigError, match=r"image file not found: .*gone.png"):
        load_image(str(tmp_path / "gone.png"))
    Image.fromarray(np.zeros((4, 4), np.float32), mode="F").save(tmp_path / "f.tiff")
    with pytest.raises(InvalidConfigError, match=r"f.tiff: floating-point images .* are not supported"):
        load_image(str(tmp_path / "f.tiff"))


# ---------------------------------------------------------------- score_record


def _record(answer_type: str, answer: str, **fields: Any) -> DatasetRecord:
    return parse_record(_line(answer_type=answer_type, answer=answer, **fields), where=WHERE)


@pytest.mark.parametrize("record, answer, expected", [
    (_record("exact", "red"), "Red.", 1.0),
    (_record("exact", "red"), "the red", 1.0),  # articles and punctuation are normalised away
    (_record("exact", "red"), "crimson", 0.0),
    (_record("exact", "red", aliases=["crimson"]), "Crimson", 1.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "B", 1.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "(b)", 1.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "blue", 1.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "B. blue", 1.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "A", 0.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "red", 0.0),
    (_record("choice", "B", options=["red", "blue", "green"]), "", 0.0),
    # numeric, tolerance relative to the gold value: gold 100 at 5 % accepts [95, 105].
    (_record("numeric", "100", tolerance=0.05), "105", 1.0),
    (_record("numeric", "100", tolerance=0.05), "95", 1.0),
    (_record("numeric", "100", tolerance=0.05), "94.9", 0.0),
    (_record("numeric", "100", tolerance=0.05), "105.2", 0.0),  # math.isclose(rel_tol=0.05) would accept: 5.26
    (_record("numeric", "100", tolerance=0.05), "about 100 m", 1.0),
    (_record("numeric", "100", tolerance=0.05), "100 or 101", 0.0),  # two numbers: ambiguous
    (_record("numeric", "-20", tolerance=0.05), "-21", 1.0),
    (_record("numeric", "-20", tolerance=0.05), "-21.1", 0.0),
    (_record("numeric", "0", tolerance=0.05), "0.001", 0.0),  # 5 % of 0 is 0
    (_record("numeric", "0", abs_tolerance=2), "-2", 1.0),
    (_record("numeric", "0", abs_tolerance=2), "2.5", 0.0),
    (_record("numeric", "1,250"), "1250", 1.0),
    (_record("numeric", "3"), "three", 0.0),
    # box IoU: [5, 0, 15, 10] overlaps [0, 0, 10, 10] in 5 x 10 = 50; union 100 + 100 - 50 = 150.
    (_record("box", "[0, 0, 10, 10]"), "[0, 0, 10, 10]", 1.0),
    (_record("box", "[0, 0, 10, 10]"), "[5, 0, 15, 10]", 1 / 3),
    (_record("box", "[0, 0, 10, 10]"), "[20, 20, 30, 30]", 0.0),
    (_record("box", "[0, 0, 10, 10]"), "[10, 10, 0, 0]", 0.0),
    # interval IoU: [3, 5] against [2, 4]: overlap 1, union 3.
    (_record("interval", "[2, 4]"), "[2.0, 4.0]", 1.0),
    (_record("interval", "[2, 4]"), "[3, 5]", 1 / 3),
    (_record("interval", "[2, 4]"), "[5, 3]", 0.0),
])
def test_score_record(record: DatasetRecord, answer: str, expected: float) -> None:
    assert score_record(record, answer) == pytest.approx(expected)


def test_score_record_unknown_type() -> None:
    record = DatasetRecord(id="x", split="test", question="q", answer="a", answer_type="yesno")
    with pytest.raises(InvalidConfigError, match=r"record 'x': answer_type must be one of"):
        score_record(record, "a")


# ---------------------------------------------------------------- DatasetTask


class ListTask(DatasetTask):
    """A dataset task over a given list of records (not registered)."""

    name = "list_dataset"
    config_cls = DatasetConfig
    default_tools = ("crop",)

    def __init__(self, config: Any, given: list[DatasetRecord]) -> None:
        self.given = given  # set before super().__init__, which calls records()
        super().__init__(config)

    def records(self) -> list[DatasetRecord]:
        return self.given

    def root(self) -> str:
        return self.config.root


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """``a.png`` (30x40 noise), ``b.png`` (20x20 noise) and ``clip.mp4`` (2 s at 8 fps: 16 frames)."""
    Image.fromarray(_noise(30, 40, 1)).save(tmp_path / "a.png")
    Image.fromarray(_noise(20, 20, 2)).save(tmp_path / "b.png")
    write_synthetic_clip(str(tmp_path / "clip.mp4"), seconds=2, fps=8)
    return tmp_path


def _records(*lines: dict[str, Any]) -> list[DatasetRecord]:
    return [parse_record(line, where=f"mem:{i}") for i, line in enumerate(lines)]


def test_sample_takes_the_index_modulo_the_split(media: Path) -> None:
    records = _records(*(_line(id=f"t{i}", answer=f"a{i}") for i in range(3)), _line(id="x", split="train"))
    task = ListTask({"root": str(media)}, records)
    assert [task.sample("test", i, 0).id for i in range(7)] == [f"list_dataset/t{i % 3}" for i in range(7)]
    assert task.sample("test", 2**31 - 2, 0).index == (2**31 - 2) % 3
    assert task.sample("train", 5, 0).id == "list_dataset/x"
    same = [task.sample("test", 1, seed).images[0].tobytes() for seed in (0, 9)]
    assert same[0] == same[1]  # the seed is unused: the data is fixed
    with pytest.raises(InvalidConfigError, match=r"list_dataset: the split 'val' has no records in .* \(records per "
                                                 r"split: \{'train': 1, 'val': 0, 'test': 3\}\)"):
        task.sample("val", 0, 0)
    with pytest.raises(InvalidConfigError, match=r"unknown split 'dev'"):
        task.sample("dev", 0, 0)
    with pytest.raises(InvalidConfigError, match=r"non-negative ints, got seed=0, index=-1"):
        task.sample("test", -1, 0)


def test_sample_fields_prompt_solution_and_score(media: Path) -> None:
    records = _records(
        _line(id="c", answer_type="choice", answer="B", options=["red", "blue"], images=["a.png", "b.png"],
              metadata={"source": "unit"}, tools=["crop"]),
        _line(id="n", answer_type="numeric", answer="12", tolerance=0.1),
        _line(id="b", answer_type="box", answer="[1, 2, 30, 20]"),
        _line(id="e", answer="red", aliases=["crimson"]),
    )
    task = ListTask({"root": str(media)}, records)
    choice, numeric, box, exact = (task.sample("test", i, 0) for i in range(4))
    assert choice.id == "list_dataset/c" and choice.task == "list_dataset" and choice.split == "test"
    assert choice.question == "What colour?\nA. red\nB. blue"
    np.testing.assert_array_equal(choice.images[0], _noise(30, 40, 1))
    np.testing.assert_array_equal(choice.images[1], _noise(20, 20, 2))
    assert choice.video is None and choice.answer == "B"
    assert choice.metadata["record"] == {"source": "unit"} and choice.metadata["answer_type"] == "choice"
    assert choice.metadata["options"] == ["red", "blue"] and choice.metadata["tools"] == ["crop"]
    json.dumps(dict(choice.metadata))
    assert task.prompt(choice, True) == choice.question + "\nAnswer with the letter (A or B) of the correct option."
    assert task.prompt(numeric, True).endswith("\nAnswer with a single number.")
    assert task.prompt(box, False).endswith("in pixels of image 0 at full resolution (40x30).")
    assert task.prompt(exact, True) == "What colour?\nAnswer with a single word or short phrase."
    for sample in (choice, numeric, box, exact):
        solution = task.solution(sample, tools_enabled=True)
        assert solution.tool_calls == () and solution.answer == sample.answer
        assert task.score(sample, solution.answer) == 1.0
    assert task.score(choice, "blue") == 1.0 and task.score(choice, "A") == 0.0
    assert task.score(numeric, "13.2") == 1.0 and task.score(numeric, "13.3") == 0.0  # 10 % of 12 = 1.2
    assert task.score(exact, "Crimson") == 1.0
    assert task.score(box, "[1, 2, 30, 11]") == pytest.approx(0.5)  # half the gold box's height
    assert task.answer_choices() is None and task.procedural is False


def test_video_records_show_evenly_spaced_decoded_frames(media: Path) -> None:
    records = _records(_line(id="v", images=None, video="clip.mp4", answer_type="interval", answer="[0.5, 1]"),
                       _line(id="iv", images=["b.png"], video="clip.mp4"))
    task = ListTask({"root": str(media)}, records)
    sample = task.sample("test", 0, 0)
    assert sample.video == os.path.realpath(media / "clip.mp4")
    # 16 frames at 1/8 s: the centres of 4 equal slices of 2 s are 0.25, 0.75, 1.25, 1.75 s = frames 2, 6, 10, 14.
    assert [frame_index(f) for f in sample.images] == [2, 6, 10, 14]
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in sample.images)
    video = sample.metadata["video"]
    assert video["frame_times"] == [0.25, 0.75, 1.25, 1.75] and video["duration_s"] == 2.0
    assert video["num_frames"] == 16 and video["fps"] == 8
    assert task.prompt(sample, True) == ("What colour?\nThe images are 4 evenly spaced frames of the 2.00 s video.\n"
                                         "Answer the time interval in seconds as [start, end].")
    assert task.score(sample, "[0.5, 1.0]") == 1.0 and task.score(sample, "[0.75, 1.25]") == pytest.approx(1 / 3)
    mixed = task.sample("test", 1, 0)
    np.testing.assert_array_equal(mixed.images[0], _noise(20, 20, 2))  # the record's images come first
    assert [frame_index(f) for f in mixed.images[1:]] == [2, 6, 10, 14]
    assert "\nImages 1 to 4 are 4 evenly spaced frames of the 2.00 s video.\n" in task.prompt(mixed, True)
    one = ListTask({"root": str(media), "overview_frames": 1}, records).sample("test", 0, 0)
    assert [frame_index(f) for f in one.images] == [8]  # the middle: 1.0 s


def test_sample_errors_name_the_record_and_file(media: Path) -> None:
    os.symlink(media.parent, media / "up")
    (media / "broken.mp4").write_bytes(b"\x00" * 100)
    records = _records(_line(id="gone", images=["missing.png"]), _line(id="out", images=["up/x.png"]),
                       _line(id="vid", images=None, video="broken.mp4"), _line(id="big", images=["a.png"]))
    task = ListTask({"root": str(media), "max_image_pixels": 1000}, records)
    with pytest.raises(InvalidConfigError, match=r"list_dataset record 'gone': image file not found: .*missing.png"):
        task.sample("test", 0, 0)
    with pytest.raises(InvalidConfigError, match=r"record 'out': path 'up/x.png' resolves to .* outside the dataset"):
        task.sample("test", 1, 0)
    with pytest.raises(InvalidConfigError, match=r"record 'vid': .*broken.mp4: the video could not be decoded"):
        task.sample("test", 2, 0)
    with pytest.raises(InvalidConfigError, match=r"record 'big': .*a.png: image is 40x30 = 1200 pixels, over "
                                                 r"max_pixels=1000"):
        task.sample("test", 3, 0)


def test_construction_checks_root_and_ids(media: Path) -> None:
    records = _records(_line(id="a"))
    with pytest.raises(InvalidConfigError, match=r"list_dataset reads a dataset from disk: set "
                                                 r"task_config=\{'root': \.\.\.\}"):
        ListTask(None, records)
    with pytest.raises(InvalidConfigError, match=r"the dataset root '.*nowhere' is not a folder"):
        ListTask({"root": str(media / "nowhere")}, records)
    with pytest.raises(InvalidConfigError, match=r"two records have the id 'a'"):
        ListTask({"root": str(media)}, records + _records(_line(id="a", split="train")))
    assert ListTask(DatasetConfig(root=media), records).root() == str(media)  # a Path is stored as str


@pytest.mark.parametrize("fields, message", [
    ({"overview_frames": 0}, r"overview_frames must be an int from 1 to 8, got 0"),
    ({"overview_frames": 9}, r"got 9"),
    ({"overview_frames": 2.0}, r"got 2.0"),
    ({"max_image_pixels": 0}, r"max_image_pixels must be an int >= 1, got 0"),
    ({"root": 3}, r"root must be a folder path \(str\), got 3"),
])
def test_dataset_config_validation(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        DatasetConfig(**fields)
