"""Tests of vgym/datasets.py and vgym/dataset_records.py: record validation (every rule, messages matched),
the JSON Lines reader's limits, path confinement (``..``, absolute paths, symbolic links out of and inside the
root), image loading (each mode converted, pixels checked against what was written, the bomb guard, broken
files). Scoring and :class:`DatasetTask`: ``test_dataset_task.py``.
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
from dataset_helpers import WHERE, noise, record_line, write_jsonl
from PIL import Image

from vgym.data.files import confined_path, MAX_LINE_BYTES, read_json, read_json_lines
from vgym.data.media import load_image
from vgym.data.records import DatasetRecord, parse_record, read_vgym_jsonl
from vgym.errors import InvalidConfigError

# ---------------------------------------------------------------- parse_record


def test_parse_record_builds_every_field() -> None:
    record = parse_record({"id": "q7", "question": "Which?", "answer": "b", "answer_type": "choice",
                           "options": ["red", "blue"], "images": ["x/a.png", "b.jpg"], "video": "v.mp4",
                           "split": "train", "tools": ["crop"], "metadata": {"source": "s"}}, where=WHERE)
    assert record == DatasetRecord(
        id="q7",
        split="train",
        question="Which?",
        answer="B",
        answer_type="choice",
        images=("x/a.png", "b.jpg"),
        video="v.mp4",
        options=("red", "blue"),
        tools=("crop",),
        metadata={"source": "s"},
    )
    numeric = parse_record(
        record_line(answer_type="numeric", answer="1,250 m", tolerance=0.05, abs_tolerance=2), where=WHERE
    )
    # split defaults to test
    assert (numeric.tolerance, numeric.abs_tolerance, numeric.split) == (0.05, 2.0, "test")
    video_only = parse_record(
        record_line(images=None, video="clip.mp4", answer_type="interval", answer="[0, 1.5]"), where=WHERE
    )
    assert video_only.images == () and video_only.video == "clip.mp4"
    # stays inside
    assert parse_record(record_line(images=["a/../b.png"]), where=WHERE).images == ("a/../b.png",)


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"answer_type": "yesno"},
            r"answer_type must be one of \('exact', 'choice', 'numeric', 'box', 'interval'\), "
            r"got 'yesno'",
        ),
        ({"question": None}, r"missing required field\(s\) \['question'\]"),
        (
            {"imgaes": ["a.png"]},
            r"unknown field\(s\) \['imgaes'\] \(did you mean 'images'\?\).*under 'metadata'",
        ),
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
        (
            {"answer_type": "numeric", "aliases": ["x"], "answer": "3"},
            r"'aliases' applies only to answer_type 'exact'",
        ),
        ({"answer_type": "choice", "options": ["only"], "answer": "A"}, r"needs 2 to 26 'options', got 1"),
        ({"answer_type": "choice", "answer": "A"}, r"needs 2 to 26 'options', got 0"),
        ({"answer_type": "choice", "options": ["x1", "x2"], "answer": "C"}, r"letter \(A to B\), got 'C'"),
        ({"answer_type": "choice", "options": ["x1", "x2"], "answer": "x2"}, r"letter \(A to B\), got 'x2'"),
        ({"answer_type": "numeric", "answer": "3 or 4"}, r"must hold exactly one number, got '3 or 4'"),
        ({"answer_type": "numeric", "answer": "many"}, r"must hold exactly one number"),
        (
            {"answer_type": "numeric", "answer": "3", "tolerance": -0.1},
            r"'tolerance' must be a finite number >= 0",
        ),
        (
            {"answer_type": "numeric", "answer": "3", "abs_tolerance": True},
            r"'abs_tolerance' must be a finite number",
        ),
        (
            {"answer_type": "box", "answer": "[10, 10, 5, 20]"},
            r"x1 < x2 and y1 < y2, got '\[10, 10, 5, 20\]'",
        ),
        ({"answer_type": "box", "answer": "[1, 2, 3]"}, r"a 'box' answer is"),
        ({"answer_type": "interval", "answer": "[5, 2]"}, r"0 <= start < end, got '\[5, 2\]'"),
        ({"answer_type": "interval", "answer": "[-1, 2]"}, r"0 <= start < end"),
    ],
)
def test_parse_record_rejects(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfigError, match=f"^{WHERE}: .*{message}"):
        parse_record(record_line(**fields), where=WHERE)


def test_parse_record_rejects_a_non_object() -> None:
    with pytest.raises(InvalidConfigError, match=f"^{WHERE}: a record must be a JSON object, got list"):
        parse_record([1, 2], where=WHERE)  # type: ignore[arg-type]


# ---------------------------------------------------------------- JSON Lines limits


def test_reader_skips_blank_and_comment_lines_and_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + "\n".join(
            [
                json.dumps(record_line(id="a")),
                "",
                "   ",
                "// a comment",
                json.dumps(record_line(id="b")),
                "{broken",
            ]
        ).encode()
    )
    with pytest.raises(InvalidConfigError, match=rf"^{path}:6: invalid JSON: Expecting property name"):
        read_vgym_jsonl(path)  # line numbers count every line, skipped ones included
    path.write_bytes(path.read_bytes().rsplit(b"\n", 1)[0])
    assert [r.id for r in read_vgym_jsonl(path)] == ["a", "b"]


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [record_line(id="a"), record_line(id="b"), record_line(id="a")])
    with pytest.raises(InvalidConfigError, match=rf"^{path}:3: duplicate id 'a' \(first used at {path}:1\)"):
        read_vgym_jsonl(path)


def test_line_length_limit_is_exactly_one_mebibyte(tmp_path: Path) -> None:
    def line_of(size: int) -> str:
        text = json.dumps(record_line(metadata={"pad": ""}))
        return text.replace('"pad": ""', '"pad": "' + "x" * (size - len(text)) + '"')

    assert len(line_of(MAX_LINE_BYTES)) == MAX_LINE_BYTES
    path = write_jsonl(tmp_path / "ok.jsonl", [line_of(MAX_LINE_BYTES)])
    assert len(read_vgym_jsonl(path)[0].metadata["pad"]) > 1_000_000
    path = write_jsonl(tmp_path / "long.jsonl", [record_line(id="a"), line_of(MAX_LINE_BYTES + 1)])
    with pytest.raises(InvalidConfigError, match=rf"^{path}:2: line is over 1048576 bytes \(1 MiB\)"):
        read_vgym_jsonl(path)
    # 5 MB without a newline: read in bounded pieces
    path.write_text(json.dumps(record_line()) + "\n" + "[" * 5_000_000)
    with pytest.raises(InvalidConfigError, match=r":2: line is over"):
        read_vgym_jsonl(path)


def _nested(levels: int) -> dict[str, Any]:
    """A record whose JSON depth is ``levels``: the record (1), its metadata (2), then lists."""
    value: Any = "leaf"
    for _ in range(levels - 2):
        value = [value]
    return record_line(metadata={"deep": value})


def test_nesting_limit_is_32(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ok.jsonl", [_nested(32)])
    assert read_vgym_jsonl(path)[0].id == "r1"
    path = write_jsonl(tmp_path / "deep.jsonl", [_nested(33)])
    with pytest.raises(InvalidConfigError, match=rf"^{path}:1: JSON nested deeper than 32 levels \(33\)"):
        read_vgym_jsonl(path)
    # the decoder's own recursion
    path = write_jsonl(tmp_path / "deeper.jsonl", ["[" * 200_000 + "]" * 200_000])
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
    path = write_jsonl(tmp_path / "d.jsonl", [record_line(id="ok"), text])
    with pytest.raises(InvalidConfigError, match=rf"^{path}:2: {message}"):
        read_vgym_jsonl(path)


def test_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(record_line()).encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(
        InvalidConfigError, match=rf"^{path}:2: not UTF-8 text \(invalid start byte at byte 8\)"
    ):
        read_json_lines(path)
    with pytest.raises(
        InvalidConfigError, match=r"cannot read the annotation file .*missing.jsonl: No such file"
    ):
        read_vgym_jsonl(tmp_path / "missing.jsonl")
    big = tmp_path / "big.json"
    big.write_text("[" + "1, " * 100 + "1]")
    assert len(read_json(big)) == 101
    with pytest.raises(
        InvalidConfigError, match=r"big.json: annotation file is 303 bytes, over the limit of 100"
    ):
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
    # a link that stays inside is fine
    assert confined_path(tree, "in/x.png") == os.path.join(real, "a", "x.png")
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
    image = noise(30, 40)
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
    # Pillow keeps 16 bits; convert("RGB") would clip
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
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
    assert load_image(str(tmp_path / "pt.png"))[0].tolist() == [
        [10, 20, 30],
        [255] * 3,
        [255] * 3,
        [10, 20, 30],
    ]

    Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1").save(tmp_path / "b.png")
    assert load_image(str(tmp_path / "b.png"))[0, :, 1].tolist() == [0, 255, 0]


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` but holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_bomb_guard_reads_only_the_header(tmp_path: Path) -> None:
    Image.fromarray(noise(30, 40)).save(tmp_path / "a.png")
    assert load_image(str(tmp_path / "a.png"), max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(
        InvalidConfigError, match=r"a.png: image is 40x30 = 1200 pixels, over max_pixels=1199"
    ):
        load_image(str(tmp_path / "a.png"), max_pixels=1199)
    _png_header_only(tmp_path / "huge.png", 9000, 8000)  # 72 M pixels (216 MB decoded) in a 45-byte file
    with pytest.raises(InvalidConfigError, match=r"huge.png: image is 9000x8000 = 72000000 pixels, over "
                                                 r"max_pixels=64000000 \(raise max_image_pixels"):
        load_image(str(tmp_path / "huge.png"))


def test_broken_files_name_the_file(tmp_path: Path) -> None:
    image = noise(64, 64)
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
