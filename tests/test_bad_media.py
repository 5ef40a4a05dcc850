"""Bad media (issue 9): truncated, corrupt, empty, mislabelled, huge and unusual images and videos, written here with
real encoders (Pillow, OpenCV, PyAV), through ``vgym.dataset_io.load_image``, the video tools
(``vgym.tools.video``), the vgym JSONL loader (``vgym.tasks.local_data``) and ``vgym.rollout.rollout``.

The contract: each file is decoded correctly (pixels and frame times checked against what was written) or fails
with a clear error naming the file (:class:`~vgym.dataset_io.MediaError` from loaders, a ``ToolError`` observation
from tools); one bad record costs exactly its own episode, in every rollout mode.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from PIL import Image

import vgym  # noqa: F401  (registers the tools and tasks)
from vgym.dataset_io import MediaError, load_image
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError, ToolError
from vgym.tasks.local_data import VgymJsonlConfig, VgymJsonlTask
from vgym.tooling import TOOLS, ToolContext
from vgym.tools.video import VideoReaderCache, synthetic_frame, write_synthetic_clip

BACKENDS = sorted(TOOLS.get("get_frame").backends)  # auto, decord, pyav: parametrised over the registry


def _noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _smooth(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth RGB image, which JPEG keeps within a few levels (noise it would not)."""
    return cv2.resize(_noise(height // 8, width // 8, seed), (width, height), interpolation=cv2.INTER_CUBIC)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha compositing over white, rounded as ``load_image`` documents: (c·a + 255·(255 - a) + 127) // 255."""
    a = alpha.astype(np.int64)[..., None]
    return ((rgb.astype(np.int64) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _jpeg_bytes(rgb: np.ndarray, quality: int = 95) -> bytes:
    return cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _palette_image() -> tuple[Image.Image, np.ndarray]:
    """A 4-colour palette image and its RGB pixels."""
    colours = np.array([[10, 20, 30], [200, 100, 50], [0, 255, 0], [255, 255, 255]], np.uint8)
    index = np.random.default_rng(3).integers(0, 4, (12, 16)).astype(np.uint8)
    image = Image.new("P", (16, 12))
    image.putpalette(colours.flatten().tolist() + [0] * (768 - 12))
    image.putdata(index.flatten().tolist())
    return image, colours[index]


# ---------------------------------------------------------------- images that must decode (name -> writer)
# Each writer saves a file and returns (expected RGB pixels, largest mean |difference| allowed: 0 = exact).


def _grey16(path: Path) -> tuple[np.ndarray, float]:
    v = np.random.default_rng(4).integers(0, 65536, (10, 12), dtype=np.uint16)
    cv2.imwrite(str(path), v)
    return np.repeat(((v.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)[..., None], 3, axis=2), 0


def _rgb16(path: Path) -> tuple[np.ndarray, float]:
    v = np.random.default_rng(5).integers(0, 65536, (10, 12, 3), dtype=np.uint16)
    cv2.imwrite(str(path), v[..., ::-1])  # OpenCV writes BGR
    return (v >> 8).astype(np.uint8), 0  # Pillow keeps the high byte of 16-bit colour (documented)


def _rgba16(path: Path) -> tuple[np.ndarray, float]:
    v = np.random.default_rng(6).integers(0, 65536, (10, 12, 4), dtype=np.uint16)
    cv2.imwrite(str(path), v[..., [2, 1, 0, 3]])
    high = (v >> 8).astype(np.uint8)
    return _over_white(high[..., :3], high[..., 3]), 0


def _cmyk(path: Path) -> tuple[np.ndarray, float]:
    cmyk = np.zeros((16, 32, 4), np.uint8)
    cmyk[:, :8] = (0, 255, 255, 0)  # red
    cmyk[:, 8:16] = (255, 0, 255, 0)  # green
    cmyk[:, 16:24] = (255, 255, 0, 0)  # blue
    cmyk[:, 24:] = (0, 0, 0, 255)  # black through K
    Image.frombytes("CMYK", (32, 16), cmyk.tobytes()).save(path, format="JPEG", quality=95)
    expected = 255 - np.minimum(255, cmyk[..., :3].astype(int) + cmyk[..., 3:].astype(int))  # Pillow's formula
    return expected.astype(np.uint8), 4  # JPEG blurs the block edges; measured mean 1.0


def _la(path: Path) -> tuple[np.ndarray, float]:
    grey, alpha = (np.random.default_rng(s).integers(0, 256, (10, 12), dtype=np.uint8) for s in (7, 8))
    Image.merge("LA", (Image.fromarray(grey), Image.fromarray(alpha))).save(path)
    return _over_white(np.repeat(grey[..., None], 3, axis=2), alpha), 0


def _rgba(path: Path) -> tuple[np.ndarray, float]:
    rgba = np.random.default_rng(9).integers(0, 256, (10, 12, 4), dtype=np.uint8)
    cv2.imwrite(str(path), rgba[..., [2, 1, 0, 3]])
    return _over_white(rgba[..., :3], rgba[..., 3]), 0


def _palette_with_transparency(path: Path) -> tuple[np.ndarray, float]:
    image, rgb = _palette_image()
    image.save(path, transparency=1)  # colour 1 is transparent: white
    rgb = rgb.copy()
    rgb[(rgb == (200, 100, 50)).all(axis=2)] = 255
    return rgb, 0


def _save(fmt: str, rgb: np.ndarray, **options: object) -> Callable[[Path], tuple[np.ndarray, float]]:
    def write(path: Path) -> tuple[np.ndarray, float]:
        Image.fromarray(rgb).save(path, format=fmt, **options)
        return rgb, 0

    return write


def _raw(data: bytes, expected: np.ndarray, tolerance: float) -> Callable[[Path], tuple[np.ndarray, float]]:
    def write(path: Path) -> tuple[np.ndarray, float]:
        path.write_bytes(data)
        return expected, tolerance

    return write


_GREY = _noise(10, 12, 10)[..., 0]
_SMOOTH = _smooth(48, 64, 11)
_SMOOTH_GREY = np.ascontiguousarray(_SMOOTH[..., 0])
_BITS = np.where(_noise(10, 12, 12)[..., 0] > 127, 255, 0).astype(np.uint8)
DECODED: dict[str, Callable[[Path], tuple[np.ndarray, float]]] = {
    "png_bytes.jpg": _raw(_png_bytes(_noise(10, 12, 1)), _noise(10, 12, 1), 0),  # wrong extension: content wins
    "jpeg_bytes.png": _raw(_jpeg_bytes(_SMOOTH), _SMOOTH, 3),
    "grey.png": lambda p: (cv2.imwrite(str(p), _GREY), (np.repeat(_GREY[..., None], 3, axis=2), 0))[1],
    "grey.jpg": lambda p: (cv2.imwrite(str(p), _SMOOTH_GREY), (np.repeat(_SMOOTH_GREY[..., None], 3, 2), 3))[1],
    "grey16.png": _grey16,
    "rgb16.png": _rgb16,
    "rgba16.png": _rgba16,
    "cmyk.jpg": _cmyk,
    "grey_alpha.png": _la,
    "rgba.png": _rgba,
    "palette.png": lambda p: (_palette_image()[0].save(p), (_palette_image()[1], 0))[1],
    "palette_alpha.png": _palette_with_transparency,
    "palette.gif": lambda p: (_palette_image()[0].save(p), (_palette_image()[1], 0))[1],
    "one_bit.png": lambda p: (Image.fromarray(_BITS).convert("1").save(p), (np.repeat(_BITS[..., None], 3, 2), 0))[1],
    "rgb.bmp": _save("BMP", _noise(10, 12, 13)),
    "rgb.tiff": _save("TIFF", _noise(10, 12, 14)),
    "lossless.webp": _save("WEBP", _noise(10, 12, 15), lossless=True),
}


@pytest.mark.parametrize("name", DECODED)
def test_images_decode_to_rgb_uint8(tmp_path: Path, name: str) -> None:
    expected, tolerance = DECODED[name](tmp_path / name)
    image = load_image(str(tmp_path / name))
    assert image.dtype == np.uint8 and image.shape == expected.shape and image.flags.c_contiguous
    error = np.abs(image.astype(np.int64) - expected).mean()
    assert error <= tolerance, (name, error)


# ---------------------------------------------------------------- images that must fail, naming the file


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header (SOF0) claims ``width`` x ``height``: no pixel data to match."""
    data = bytearray(_jpeg_bytes(_smooth(16, 16, 16)))
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_with_size(width: int, height: int) -> bytes:
    """A real PNG whose IHDR claims ``width`` x ``height`` (CRC fixed up), with the pixel data of 8x8."""
    import zlib

    data = bytearray(_png_bytes(_noise(8, 8, 17)))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts at byte 16
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _corrupt_png() -> bytes:
    data = bytearray(_png_bytes(_noise(32, 32, 18)))
    start = data.index(b"IDAT") + 4
    for offset in range(start + 10, start + 60, 7):
        data[offset] ^= 0x5A  # inside the compressed pixels: the chunk's CRC no longer matches
    return bytes(data)


_PNG, _JPEG = _png_bytes(_noise(64, 64, 19)), _jpeg_bytes(_smooth(64, 64, 19))
BAD: dict[str, tuple[bytes | None, str, int]] = {  # name -> (bytes, None: no file; message; max_pixels)
    "truncated.png": (_PNG[: len(_PNG) // 2], r"could not be decoded .*truncated or corrupt", 64_000_000),
    "truncated.jpg": (_JPEG[: len(_JPEG) // 2], r"could not be decoded .*truncated or corrupt", 64_000_000),
    "corrupt.png": (_corrupt_png(), r"could not be decoded", 64_000_000),
    "empty.png": (b"", r"not an image Pillow can read", 64_000_000),
    "empty.jpg": (b"", r"not an image Pillow can read", 64_000_000),
    "text.png": (b"id,label\n1,cat\n", r"not an image Pillow can read", 64_000_000),
    "random.jpg": (np.random.default_rng(20).bytes(4096), r"not an image Pillow can read", 64_000_000),
    "missing.png": (None, r"image file not found", 64_000_000),
    "bomb.png": (_png_with_size(9000, 8000), r"9000x8000 = 72000000 pixels, over max_pixels=64000000", 64_000_000),
    "bomb.jpg": (_jpeg_with_size(9000, 8000), r"9000x8000 = 72000000 pixels, over max_pixels=64000000", 64_000_000),
    # max_pixels raised past Pillow's own limit (2 x 89.5 M): Pillow refuses from the header, also before decoding
    "giant.jpg": (_jpeg_with_size(65000, 65000), r"exceeds limit .* decompression bomb", 10**10),
}


@pytest.mark.parametrize("name", [*BAD, "clip.png", "folder.png", "float.tiff"])
def test_bad_images_raise_media_error_naming_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    data, message, max_pixels = BAD.get(name, (None, "", 64_000_000))
    if data is not None:
        path.write_bytes(data)
    elif name == "clip.png":  # an MP4 named .png
        write_synthetic_clip(str(path.with_suffix(".mp4")), seconds=0.5, fps=10)
        path.with_suffix(".mp4").rename(path)
        message = r"not an image Pillow can read"
    elif name == "folder.png":
        path.mkdir()
        message = r"could not be decoded .*Is a directory"
    elif name == "float.tiff":
        Image.fromarray(np.zeros((4, 4), np.float32)).save(path)  # Pillow mode "F"
        message = r"floating-point images .* not supported"
    with pytest.raises(MediaError, match=message) as caught:
        load_image(str(path), max_pixels=max_pixels)
    assert isinstance(caught.value, InvalidConfigError)  # the vgym.errors type callers already catch
    assert str(path) in str(caught.value) and caught.value.path == str(path)


def test_the_bomb_guard_reads_no_pixels(tmp_path: Path) -> None:
    """A real 8200x8000 grey PNG (65.6 M pixels, 197 MB as RGB) is refused with under 4 MB allocated; the header-only
    files above prove the check precedes decoding (decoding them would fail as truncated instead)."""
    Image.new("L", (8200, 8000)).save(tmp_path / "big.png")
    tracemalloc.start()
    try:
        with pytest.raises(MediaError, match="8200x8000 = 65600000 pixels, over max_pixels=64000000"):
            load_image(str(tmp_path / "big.png"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt metadata it skips
def test_mutated_images_decode_or_raise_media_error(tmp_path: Path) -> None:
    """Seeded truncations and byte flips of eight formats: never another exception, never a wrong shape."""
    sources = {"png": _PNG, "jpg": _JPEG, "gif": None, "bmp": None, "tiff": None, "webp": None, "g16.png": None,
               "cmyk.jpg": None}
    for ext in ("gif", "bmp", "tiff", "webp"):
        buffer = io.BytesIO()
        Image.fromarray(_noise(24, 24, 21)).save(buffer, format=ext.upper())
        sources[ext] = buffer.getvalue()
    sources["g16.png"] = cv2.imencode(".png", (_noise(24, 24, 22)[..., 0].astype(np.uint16) * 257))[1].tobytes()
    _cmyk(tmp_path / "c.jpg")
    sources["cmyk.jpg"] = (tmp_path / "c.jpg").read_bytes()
    outcomes = {"decoded": 0, "error": 0}
    for ext, data in sources.items():
        for k in range(40):
            rng = np.random.default_rng([23, k, len(ext)])
            mutant = bytearray(data)  # type: ignore[arg-type]
            if k % 2:
                mutant = mutant[: int(rng.integers(1, len(mutant)))]
            else:
                for offset in rng.integers(0, len(mutant), int(rng.integers(1, 20))):
                    mutant[offset] = int(rng.integers(0, 256))
            path = tmp_path / f"m{k}.{ext}"
            path.write_bytes(bytes(mutant))
            try:
                image = load_image(str(path))
            except MediaError as error:
                assert str(path) in str(error)
                outcomes["error"] += 1
            else:
                assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
                outcomes["decoded"] += 1
    assert sum(outcomes.values()) == 320 and min(outcomes.values()) > 0, outcomes


# ---------------------------------------------------------------- videos


VFR_MS = [0, 40, 200, 240, 700, 704, 1500, 1600]
"""Presentation times of the variable-frame-rate clip's frames in ms (gaps from 4 ms to 800 ms)."""


def _index(frame: np.ndarray) -> int:
    """The frame index a synthetic frame encodes: 12 cells in its top quarter, white = 1, most significant left."""
    h, w = frame.shape[:2]
    cells = [frame[h // 16 : 3 * h // 16, (4 * k + 1) * w // 48 : (4 * k + 3) * w // 48].mean() for k in range(12)]
    return int("".join("1" if c > 128 else "0" for c in cells), 2)


def _write_pyav(path: Path, pts: list[int], time_base: Fraction, options: dict[str, str] | None = None,
                container_format: str | None = None) -> None:
    """Synthetic frames ``i`` at ``pts[i] * time_base`` s, MPEG-4 Part 2 through PyAV (keyframe every 5)."""
    with av.open(str(path), "w", format=container_format, options=options or {}) as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        stream.codec_context.gop_size = 5
        for i, t in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, num_frames=len(pts)), format="rgb24")
            frame.pts, frame.time_base = t, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for k in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _no_frames(path: Path) -> None:
    """An AVI whose video stream has no packet at all."""
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
    container.start_encoding()
    container.close()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good clips (``cfr``, ``vfr``, ``one``) and broken ones, each named after what is wrong with it."""
    folder = tmp_path_factory.mktemp("clips")
    out = {name: folder / f"{name}.mp4" for name in ("cfr", "vfr", "one", "index_first", "truncated",
                                                      "truncated_index", "empty", "garbage", "audio_only")}
    write_synthetic_clip(str(out["cfr"]), seconds=2, fps=10)  # OpenCV mp4v: the index (moov) comes last
    _write_pyav(out["vfr"], VFR_MS, Fraction(1, 1000))
    write_synthetic_clip(str(out["one"]), seconds=0.1, fps=10)
    _write_pyav(out["index_first"], list(range(20)), Fraction(1, 10), {"movflags": "faststart"})
    cfr, index_first = out["cfr"].read_bytes(), out["index_first"].read_bytes()
    out["truncated"].write_bytes(cfr[: len(cfr) // 2])  # the index is lost: nothing can be read
    out["truncated_index"].write_bytes(index_first[: len(index_first) * 6 // 10])  # the index lists 20 frames
    out["empty"].write_bytes(b"")
    out["garbage"].write_bytes(np.random.default_rng(24).bytes(20_000))
    _audio_only(out["audio_only"])
    out["no_frames"] = folder / "no_frames.avi"
    _no_frames(out["no_frames"])
    return out


BAD_CLIPS = {"truncated": r"could not be read with", "truncated_index":
             r"the container lists 20 frames but only \d+ can be read: the file is truncated or corrupt",
             "empty": r"could not be read with", "garbage": r"could not be read with",
             "audio_only": r"the file has no video stream", "no_frames": r"the video stream has no frames"}


def _ctx(video: Path | None) -> ToolContext:
    return ToolContext(images=[], metadata={}, rng=np.random.default_rng(0), max_pixels=10**7, video=video)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", BAD_CLIPS)
def test_bad_clips_are_tool_errors_naming_the_file(clips: dict[str, Path], name: str, backend: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = clips[name]
    for tool, arguments in (("get_frame", {"t_s": 0.3}), ("sample_frames", {"start_s": 0.0, "end_s": 0.5})):
        with caplog.at_level(logging.WARNING, "vgym.tools.video"):
            with pytest.raises(ToolError, match=BAD_CLIPS[name]) as caught:
                TOOLS.get(tool)(_ctx(path), arguments, backend=backend)
        assert f"(file {path.name})" in str(caught.value)  # the model sees the file's name
        assert str(path) in caplog.text  # the operator sees its full path
        caplog.clear()


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_variable_frame_rate_times_are_the_presentation_times(clips: dict[str, Path], decoder: str) -> None:
    with VideoReaderCache(decoder).open(str(clips["vfr"])) as clip:
        np.testing.assert_allclose(clip.info.times, np.array(VFR_MS) / 1000, atol=1e-6)
        frames = clip.read(list(range(len(VFR_MS))))
    assert [_index(frame) for frame, _ in frames] == list(range(len(VFR_MS)))  # frame i is the one written at i
    assert [round(time * 1000) for _, time in frames] == VFR_MS


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate_through_the_tools(clips: dict[str, Path], backend: str) -> None:
    path = clips["vfr"]
    result = TOOLS.get("get_frame")(_ctx(path), {"t_s": 0.703}, backend=backend)
    # 0.703 s is 3 ms after frame 4 (0.700) and 1 ms before frame 5 (0.704): the true times decide, not i / fps
    assert [_index(f) for f in result.images] == [5] and result.text.startswith("the frame at 0.704 s")
    assert "on average (variable frame rate)" in result.text
    # slices of [0.6, 0.8]: centres 0.65 and 0.75 -> frames 4 and 5, 4 ms apart, so stamps need 3 decimals
    result = TOOLS.get("sample_frames")(_ctx(path), {"start_s": 0.6, "end_s": 0.8, "num_frames": 2}, backend=backend)
    assert [_index(f) for f in result.images] == [4, 5] and "at [0.700, 0.704] s" in result.text
    result = TOOLS.get("sample_frames")(_ctx(path), {"start_s": 0.0, "end_s": 1.6, "num_frames": 4}, backend=backend)
    # centres 0.2, 0.6, 1.0, 1.4 -> 0.200 (2), 0.700 (4), 0.704 (5: 0.296 from 1.0 against 0.5 to 1.5), 1.500 (6)
    assert [_index(f) for f in result.images] == [2, 4, 5, 6]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_one_frame_clip(clips: dict[str, Path], backend: str) -> None:
    path = clips["one"]
    result = TOOLS.get("sample_frames")(_ctx(path), {"start_s": 0.0, "end_s": 0.1, "num_frames": 8}, backend=backend)
    assert [_index(f) for f in result.images] == [0] and "clip is 0.10 s, 1 frames at 10 fps" in result.text
    assert [_index(f) for f in TOOLS.get("get_frame")(_ctx(path), {"t_s": 0.1}, backend=backend).images] == [0]
    with pytest.raises(ToolError, match=r"t_s=0.2 is outside the video: the clip is 0.10 s"):
        TOOLS.get("get_frame")(_ctx(path), {"t_s": 0.2}, backend=backend)


CRASHERS = [106, 327]
"""Seeds ``[7, k]`` of byte-flip mutants of the 2 s clip that made ``get_frame`` with decord (before PyAV vetted
clips) abort the process with ``std::bad_alloc``: 2 of 400 mutants, each run in a child process."""


def test_decord_never_sees_a_clip_that_aborts_it(tmp_path: Path) -> None:
    """Run in a child process, so a regression fails this test instead of killing pytest."""
    write_synthetic_clip(str(tmp_path / "cfr.mp4"), seconds=2, fps=10)
    mutants = []
    for k in CRASHERS:
        data, rng = bytearray((tmp_path / "cfr.mp4").read_bytes()), np.random.default_rng([7, k])
        for _ in range(int(rng.integers(1, 50))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        mutants.append(tmp_path / f"mutant_{k}.mp4")
        mutants[-1].write_bytes(bytes(data))
    script = textwrap.dedent(f"""
        import numpy as np
        import vgym
        from vgym.errors import ToolError
        from vgym.tooling import TOOLS, ToolContext
        for path in {[str(m) for m in mutants]!r}:
            for backend in ("decord", "auto"):
                for t_s in (0.0, 0.3, 0.7, 1.5):
                    ctx = ToolContext([], {{}}, np.random.default_rng(0), 10**6, video=path)
                    try:
                        TOOLS.get("get_frame")(ctx, {{"t_s": t_s}}, backend=backend)
                        print("decoded")
                    except ToolError:
                        print("tool_error")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(done.stdout.split()) <= {"decoded", "tool_error"}, done.stdout
    assert len(done.stdout.split()) == 8 * len(CRASHERS)


# ---------------------------------------------------------------- a dataset with bad records among good ones


RECORDS = [("good_png", ["a.png"], None), ("bad_png", ["cut.png"], None), ("good_jpeg", ["b.jpg"], None),
           ("bad_video", [], "cut.mp4"), ("good_video", [], "clip.mp4"), ("missing", ["a.png", "gone.png"], None),
           ("vfr_video", [], "vfr.mp4")]
BAD_RECORDS = {"bad_png": "cut.png", "bad_video": "cut.mp4", "missing": "gone.png"}


@pytest.fixture
def mixed_root(tmp_path: Path, clips: dict[str, Path]) -> Path:
    """A vgym JSONL dataset (test split) whose records 1, 3 and 5 name a truncated PNG, a truncated MP4 and a
    missing file."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.png").write_bytes(_png_bytes(_noise(40, 48, 25)))
    (root / "b.jpg").write_bytes(_jpeg_bytes(_smooth(32, 32, 26)))
    (root / "cut.png").write_bytes(_PNG[: len(_PNG) // 3])
    for name, source in (("cut.mp4", "truncated_index"), ("clip.mp4", "cfr"), ("vfr.mp4", "vfr")):
        (root / name).write_bytes(clips[source].read_bytes())
    lines = [{"id": rid, "question": "What is shown?", "answer": "noise", "answer_type": "exact", "images": images,
              **({"video": video} if video else {})} for rid, images, video in RECORDS]
    (root / "data.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return root


def test_loading_keeps_every_good_record(mixed_root: Path) -> None:
    task = VgymJsonlTask(VgymJsonlConfig(root=str(mixed_root)))  # decodes nothing: the bad files do not matter yet
    assert [r.id for r in task.split_records("test")] == [rid for rid, _, _ in RECORDS]
    for index, (rid, images, video) in enumerate(RECORDS):
        if rid in BAD_RECORDS:
            with pytest.raises(MediaError, match=rf"vgym_jsonl record '{rid}': .*{BAD_RECORDS[rid]}") as caught:
                task.sample("test", index, 0)
            assert caught.value.sample_id == f"vgym_jsonl/{rid}"
            assert caught.value.path == str(mixed_root / BAD_RECORDS[rid])
        else:
            sample = task.sample("test", index, 0)
            assert sample.id == f"vgym_jsonl/{rid}" and len(sample.images) == (len(images) or 4)
    vfr = task.sample("test", 6, 0).metadata["video"]  # overview frames at their true presentation times:
    # duration 1.6 + 1 / (200/41 average fps) = 1.805 s; centres of 4 slices 0.226, 0.677, 1.128, 1.579 s -> the
    # frames starting nearest: 0.240 (3), 0.700 (4), 1.500 (6), 1.600 (7)
    assert vfr["frame_indices"] == [3, 4, 6, 7] and vfr["frame_times"] == [VFR_MS[i] / 1000 for i in (3, 4, 6, 7)]


def _content(t: Any) -> tuple:
    """What must not change about a good episode when bad ones share its batch."""
    return (t.sample_id, t.group_id, t.input_ids.tolist(), t.loss_mask.tolist(), t.reward, t.answer, t.num_turns,
            t.pixel_values.sum().item() if t.pixel_values is not None else None)


@pytest.fixture(scope="module")
def processor(tiny_dir):  # type: ignore[no-untyped-def]
    from vgym.tiny import load_vlm

    return load_vlm(tiny_dir)[1]


PLANS = [("lockstep", "local", 0), ("async", "local", 0), ("lockstep", "local", 2), ("async", "local", 2),
         pytest.param("async", "ray", 0, marks=pytest.mark.slow)]  # starting Ray and its worker: most of the time
"""(mode, parallel, threads) of :func:`vgym.rollout.rollout`: inline, a thread pool, a Ray worker."""


@pytest.mark.parametrize(("mode", "parallel", "threads"), PLANS)
def test_a_rollout_loses_only_the_bad_episodes(mixed_root: Path, processor: Any, caplog: pytest.LogCaptureFixture,
                                               mode: str, parallel: str, threads: int) -> None:
    """Two passes over the 7 records, 4 in flight: every spec comes back once, in order; the good episodes equal a
    rollout without the bad records; each bad one is a flagged failure, logged with its file."""
    from vgym.policies.oracle import OraclePolicy
    from vgym.rollout import ChatEncoder, EpisodeSpec, rollout

    env_fn = functools.partial(VisualToolEnv, "vgym_jsonl", task_config={"root": str(mixed_root)}, split="test")
    good = [i for i, (rid, _, _) in enumerate(RECORDS) if rid not in BAD_RECORDS]
    reference = {RECORDS[i][0]: _content(t) for i, t in zip(good, rollout(
        env_fn, OraclePolicy(), ChatEncoder(processor), [EpisodeSpec("test", i, group_id=i, seed=i) for i in good]))}
    n = len(RECORDS)
    specs = [EpisodeSpec("test", i % n, group_id=i % n, seed=i % n) for i in range(2 * n)]
    ray = pytest.importorskip("ray") if parallel == "ray" else None
    started = ray is not None and not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finished: list[str] = []
    try:
        with caplog.at_level(logging.WARNING, "vgym.rollout"):
            trajectories = rollout(env_fn, OraclePolicy(), ChatEncoder(processor), specs, batch_size=4, mode=mode,
                                   parallel=parallel, num_workers=1, threads=threads,
                                   on_episode=lambda t: finished.append(t.sample_id))
    finally:
        if started:
            ray.shutdown()
    assert [t.sample_id for t in trajectories] == [f"vgym_jsonl/{rid}" for rid, _, _ in RECORDS] * 2
    assert sorted(finished) == sorted(t.sample_id for t in trajectories)  # each reported once
    for position, t in enumerate(trajectories):
        rid = RECORDS[position % n][0]
        if rid not in BAD_RECORDS:
            assert _content(t) == reference[rid] and t.reward == 1.0 and t.truncated_reason is None
            continue
        path = str(mixed_root / BAD_RECORDS[rid])
        assert t.truncated and not t.terminated and t.reward == 0.0 and t.answer is None
        assert t.truncated_reason.startswith(f"sample_error: vgym_jsonl record '{rid}': ")
        assert path in t.truncated_reason
        assert t.input_ids.numel() == t.loss_mask.numel() == t.logprobs.numel() == 0 and t.images == [] and not t.turns
        json.dumps(t.record())  # still a valid trajectory record
    warnings = [r.getMessage() for r in caplog.records if r.name == "vgym.rollout" and r.levelno == logging.WARNING]
    assert len(warnings) == 2 * len(BAD_RECORDS)
    assert all(any(str(mixed_root / f) in w for f in BAD_RECORDS.values()) for w in warnings)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_video_broken_mid_episode_is_an_error_observation(mixed_root: Path, clips: dict[str, Path],
                                                            backend: str) -> None:
    """The clip is cut on disk after reset (the reader cache sees the new size): ``step`` returns the tool's error
    for the model, naming the file, and the episode goes on to its answer."""
    env = VisualToolEnv("vgym_jsonl", task_config={"root": str(mixed_root)}, split="test",
                        tools=("get_frame", "sample_frames"), tool_runtime={"backends": {"get_frame": backend}})
    try:
        env.reset(options={"index": 4})  # good_video: its overview frames decode
        (mixed_root / "clip.mp4").write_bytes(clips["truncated"].read_bytes())
        obs, reward, terminated, truncated, info = env.step(env.protocol.format_tool_call("get_frame", {"t_s": 0.5}))
        assert not (terminated or truncated) and reward == 0
        assert "Error:" in obs["text"] and "could not be read with" in obs["text"] and "(file clip.mp4)" in obs["text"]
        assert info["tool_calls"][0]["ok"] is False and not obs["images"]
        *_, terminated, truncated, _ = env.step("<answer>noise</answer>")
        assert terminated and not truncated
    finally:
        env.close()


def test_grpo_trains_on_the_good_samples_and_counts_the_bad(mixed_root: Path, tiny: Any) -> None:
    """A GRPO step over records 0..3 (records 1 and 3 are bad): the bad groups are dropped and counted, the step
    trains on the good ones; a step whose every sample is bad fails with a clear error naming the file."""
    from vgym.errors import VgymError
    from vgym.trainers.grpo import GRPOConfig, GRPOTrainer

    model, processor = tiny
    env_fn = functools.partial(VisualToolEnv, "vgym_jsonl", task_config={"root": str(mixed_root)}, split="test",
                               tools=())
    cfg = GRPOConfig(num_generations=2, prompts_per_step=4, max_new_tokens=4, steps=1, split="test")
    trainer = GRPOTrainer(model, processor, env_fn, cfg)
    trajs, metrics = trainer.collect()
    assert metrics["rollout/sample_errors"] == 4.0  # 2 bad records x 2 generations
    assert sorted({t.sample_id for t in trajs}) == ["vgym_jsonl/good_jpeg", "vgym_jsonl/good_png"]
    assert all(t.input_ids.numel() > 0 for t in trajs)
    bad_only = GRPOTrainer(model, processor, env_fn, GRPOConfig(num_generations=2, prompts_per_step=1,
                                                                 max_new_tokens=4, steps=1, split="test",
                                                                 data_offset=1))
    with pytest.raises(VgymError, match=r"no sample of the step could be loaded .*cut\.png"):
        bad_only.collect()


def test_eval_scores_a_bad_sample_zero_and_the_rest_as_usual(mixed_root: Path, tmp_path: Path) -> None:
    """``vgym eval`` with the oracle (the text-only path) over the 7 records: each bad one is a scored failure
    naming its file, every good one scores 1."""
    from vgym.evaluate import EvalConfig, run_eval

    report = run_eval(EvalConfig(policy="oracle", suite=("vgym_jsonl",), n=len(RECORDS),
                                 task_config={"root": str(mixed_root)}), tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(len(RECORDS)))
    for line in lines:
        rid = RECORDS[line["index"]][0]
        if rid in BAD_RECORDS:
            assert line["accuracy"] == 0.0 and str(mixed_root / BAD_RECORDS[rid]) in line["truncated_reason"]
        else:
            assert line["accuracy"] == 1.0 and line["truncated_reason"] is None
    assert report["overall"]["avg_at_k"] == pytest.approx(4 / 7)
