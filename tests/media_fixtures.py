"""Builders shared by the bad-media tests (``test_bad_images.py``, ``test_bad_videos.py``,
``test_bad_batches.py``).

Imported by those ``test_*.py`` files beside it (pytest puts this folder on ``sys.path``); not a test module
itself, and it defines no fixture: each test module wraps :func:`write_clips` in its own module-scoped
``clips`` fixture.

Contents:

- :data:`BACKENDS`: the video tools' backends, read from the registry (tests parametrise over it).
- :func:`noise`, :func:`smooth`: seeded RGB uint8 images (``smooth`` survives JPEG within a few levels).
- :func:`jpeg_bytes`, :func:`png_bytes`: the encoded bytes of an RGB image; :data:`PNG`, :data:`JPEG`: a 64x64
  image of each, the source of the truncated and mutated files.
- :data:`VFR_MS`, :func:`frame_index`, :func:`write_pyav`, :func:`write_audio_only`, :func:`write_no_frames`,
  :func:`write_clips`: real clips written with OpenCV and PyAV, good and broken, whose frames encode their
  index.

Every random choice comes from an explicit seed, so every build writes the same bytes.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

import vgym  # noqa: F401  (registers the tools and tasks)
from vgym.data.synthetic_video import synthetic_frame, write_synthetic_clip
from vgym.tooling import TOOLS

__all__ = ["BACKENDS", "noise", "smooth", "jpeg_bytes", "png_bytes", "PNG", "JPEG", "VFR_MS", "frame_index",
           "write_pyav", "write_audio_only", "write_no_frames", "write_clips"]

BACKENDS = sorted(TOOLS.get("get_frame").backends)  # auto, decord, pyav: parametrised over the registry


def noise(height: int, width: int, seed: int) -> np.ndarray:
    """Uniform RGB uint8 noise of ``height`` x ``width`` from ``seed``."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth RGB image, which JPEG keeps within a few levels (noise it would not)."""
    return cv2.resize(noise(height // 8, width // 8, seed), (width, height), interpolation=cv2.INTER_CUBIC)


def jpeg_bytes(rgb: np.ndarray, quality: int = 95) -> bytes:
    """``rgb`` encoded as a JPEG file by OpenCV."""
    return cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def png_bytes(rgb: np.ndarray) -> bytes:
    """``rgb`` encoded as a PNG file by Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


PNG, JPEG = png_bytes(noise(64, 64, 19)), jpeg_bytes(smooth(64, 64, 19))
"""A good 64x64 PNG and JPEG, cut or mutated into bad files by the tests."""


VFR_MS = [0, 40, 200, 240, 700, 704, 1500, 1600]
"""Presentation times of the variable-frame-rate clip's frames in ms (gaps from 4 ms to 800 ms)."""


def frame_index(frame: np.ndarray) -> int:
    """The frame index a synthetic frame encodes: 12 cells in its top quarter, white = 1, most significant
    left."""
    h, w = frame.shape[:2]
    cells = [
        frame[h // 16 : 3 * h // 16, (4 * k + 1) * w // 48 : (4 * k + 3) * w // 48].mean() for k in range(12)
    ]
    return int("".join("1" if c > 128 else "0" for c in cells), 2)


def write_pyav(path: Path, pts: list[int], time_base: Fraction, options: dict[str, str] | None = None,
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


def write_audio_only(path: Path) -> None:
    """An MP4 holding only an AAC audio stream (8 silent frames): no video stream at all."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for k in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, k * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def write_no_frames(path: Path) -> None:
    """An AVI whose video stream has no packet at all."""
    container = av.open(str(path), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
    container.start_encoding()
    container.close()


def write_clips(folder: Path) -> dict[str, Path]:
    """Good clips (``cfr``, ``vfr``, ``one``) and broken ones, each named after what is wrong with it, in
    ``folder``.

    Returns:
        name -> path: ``cfr`` (2 s at 10 fps, OpenCV), ``vfr`` (frames at :data:`VFR_MS`), ``one`` (one
            frame),
        ``index_first`` (20 frames, index before the data), ``truncated`` (``cfr`` cut in half: no index),
        ``truncated_index`` (``index_first`` cut to 60 %: the index lists frames that are gone), ``empty``
        (0 bytes), ``garbage`` (seeded random bytes), ``audio_only`` and ``no_frames`` (an AVI).
    """
    out = {name: folder / f"{name}.mp4" for name in ("cfr", "vfr", "one", "index_first", "truncated",
                                                      "truncated_index", "empty", "garbage", "audio_only")}
    write_synthetic_clip(str(out["cfr"]), seconds=2, fps=10)  # OpenCV mp4v: the index (moov) comes last
    write_pyav(out["vfr"], VFR_MS, Fraction(1, 1000))
    write_synthetic_clip(str(out["one"]), seconds=0.1, fps=10)
    write_pyav(out["index_first"], list(range(20)), Fraction(1, 10), {"movflags": "faststart"})
    cfr, index_first = out["cfr"].read_bytes(), out["index_first"].read_bytes()
    out["truncated"].write_bytes(cfr[: len(cfr) // 2])  # the index is lost: nothing can be read
    out["truncated_index"].write_bytes(index_first[: len(index_first) * 6 // 10])  # the index lists 20 frames
    out["empty"].write_bytes(b"")
    out["garbage"].write_bytes(np.random.default_rng(24).bytes(20_000))
    write_audio_only(out["audio_only"])
    out["no_frames"] = folder / "no_frames.avi"
    write_no_frames(out["no_frames"])
    return out
