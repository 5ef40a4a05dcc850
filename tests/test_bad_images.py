"""Bad images (issue 9): truncated, corrupt, empty, mislabelled, huge and unusual images, written here with
real encoders (Pillow, OpenCV), through ``vgym.data.media.load_image``.

Contents:

- :data:`DECODED` and ``test_images_decode_to_rgb_uint8``: 16-bit, CMYK, grey, grey+alpha, RGBA, palette (with
  transparency), 1-bit, BMP, TIFF, WebP and wrong-extension files decode to RGB uint8, pixels checked against
  what was written (alpha composited over white).
- :data:`BAD` and ``test_bad_images_raise_media_error_naming_the_file``: truncated, corrupt, empty, non-image,
  missing, directory, float and decompression-bomb files raise :class:`~vgym.errors.MediaError` naming the
  file.
- ``test_the_bomb_guard_reads_no_pixels``: the pixel limit is checked from the header, before any decoding.
- ``test_mutated_images_decode_or_raise_media_error``: 320 seeded truncations and byte flips of eight formats
  either decode to RGB uint8 or raise ``MediaError``, never another exception.

The contract: each file is decoded correctly or fails with a clear error naming the file. Shared builders live
in ``tests/media_fixtures.py``; videos are in ``test_bad_videos.py``, mixed batches in
``test_bad_batches.py``.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from media_fixtures import JPEG, PNG, jpeg_bytes, noise, png_bytes, smooth
from PIL import Image

import vgym  # noqa: F401  (registers the tools and tasks)
from vgym.data.media import load_image
from vgym.errors import MediaError
from vgym.data.synthetic_video import write_synthetic_clip
from vgym.errors import InvalidConfigError


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha compositing over white, rounded as ``load_image`` documents: (c·a + 255·(255 - a) + 127) //
    255."""
    a = alpha.astype(np.int64)[..., None]
    return ((rgb.astype(np.int64) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


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
    # Pillow's formula
    expected = 255 - np.minimum(255, cmyk[..., :3].astype(int) + cmyk[..., 3:].astype(int))
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


_GREY = noise(10, 12, 10)[..., 0]
_SMOOTH = smooth(48, 64, 11)
_SMOOTH_GREY = np.ascontiguousarray(_SMOOTH[..., 0])
_BITS = np.where(noise(10, 12, 12)[..., 0] > 127, 255, 0).astype(np.uint8)
DECODED: dict[str, Callable[[Path], tuple[np.ndarray, float]]] = {
    "png_bytes.jpg": _raw(png_bytes(noise(10, 12, 1)), noise(10, 12, 1), 0),  # wrong extension: content wins
    "jpeg_bytes.png": _raw(jpeg_bytes(_SMOOTH), _SMOOTH, 3),
    "grey.png": lambda p: (cv2.imwrite(str(p), _GREY), (np.repeat(_GREY[..., None], 3, axis=2), 0))[1],
    "grey.jpg": lambda p: (cv2.imwrite(str(p), _SMOOTH_GREY),
                           (np.repeat(_SMOOTH_GREY[..., None], 3, 2), 3))[1],
    "grey16.png": _grey16,
    "rgb16.png": _rgb16,
    "rgba16.png": _rgba16,
    "cmyk.jpg": _cmyk,
    "grey_alpha.png": _la,
    "rgba.png": _rgba,
    "palette.png": lambda p: (_palette_image()[0].save(p), (_palette_image()[1], 0))[1],
    "palette_alpha.png": _palette_with_transparency,
    "palette.gif": lambda p: (_palette_image()[0].save(p), (_palette_image()[1], 0))[1],
    "one_bit.png": lambda p: (
        Image.fromarray(_BITS).convert("1").save(p),
        (np.repeat(_BITS[..., None], 3, 2), 0),
    )[1],
    "rgb.bmp": _save("BMP", noise(10, 12, 13)),
    "rgb.tiff": _save("TIFF", noise(10, 12, 14)),
    "lossless.webp": _save("WEBP", noise(10, 12, 15), lossless=True),
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
    data = bytearray(jpeg_bytes(smooth(16, 16, 16)))
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_with_size(width: int, height: int) -> bytes:
    """A real PNG whose IHDR claims ``width`` x ``height`` (CRC fixed up), with the pixel data of 8x8."""
    import zlib

    data = bytearray(png_bytes(noise(8, 8, 17)))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts at byte 16
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _corrupt_png() -> bytes:
    data = bytearray(png_bytes(noise(32, 32, 18)))
    start = data.index(b"IDAT") + 4
    for offset in range(start + 10, start + 60, 7):
        data[offset] ^= 0x5A  # inside the compressed pixels: the chunk's CRC no longer matches
    return bytes(data)


BAD: dict[str, tuple[bytes | None, str, int]] = {  # name -> (bytes, None: no file; message; max_pixels)
    "truncated.png": (PNG[: len(PNG) // 2], r"could not be decoded .*truncated or corrupt", 64_000_000),
    "truncated.jpg": (JPEG[: len(JPEG) // 2], r"could not be decoded .*truncated or corrupt", 64_000_000),
    "corrupt.png": (_corrupt_png(), r"could not be decoded", 64_000_000),
    "empty.png": (b"", r"not an image Pillow can read", 64_000_000),
    "empty.jpg": (b"", r"not an image Pillow can read", 64_000_000),
    "text.png": (b"id,label\n1,cat\n", r"not an image Pillow can read", 64_000_000),
    "random.jpg": (np.random.default_rng(20).bytes(4096), r"not an image Pillow can read", 64_000_000),
    "missing.png": (None, r"image file not found", 64_000_000),
    "bomb.png": (
        _png_with_size(9000, 8000),
        r"9000x8000 = 72000000 pixels, over max_pixels=64000000",
        64_000_000,
    ),
    "bomb.jpg": (
        _jpeg_with_size(9000, 8000),
        r"9000x8000 = 72000000 pixels, over max_pixels=64000000",
        64_000_000,
    ),
    # max_pixels raised past Pillow's own limit (2 x 89.5 M): Pillow refuses from the header, also before
    # decoding
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
    """A real 8200x8000 grey PNG (65.6 M pixels, 197 MB as RGB) is refused with under 4 MB allocated; the
    header-only files above prove the check precedes decoding (decoding them would fail as truncated
    instead)."""
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
    sources = {"png": PNG, "jpg": JPEG, "gif": None, "bmp": None, "tiff": None, "webp": None, "g16.png": None,
               "cmyk.jpg": None}
    for ext in ("gif", "bmp", "tiff", "webp"):
        buffer = io.BytesIO()
        Image.fromarray(noise(24, 24, 21)).save(buffer, format=ext.upper())
        sources[ext] = buffer.getvalue()
    sources["g16.png"] = cv2.imencode(".png", (noise(24, 24, 22)[..., 0].astype(np.uint16) * 257))[
        1
    ].tobytes()
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
