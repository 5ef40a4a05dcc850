"""Reading media files: images and videos, for dataset loaders and tools alike.

Contents: :func:`load_image`; :class:`ClipInfo`, :func:`frame_indices`, :data:`DECODERS`,
:class:`VideoReaderCache`, :func:`overview_frames`.

**Images.** :func:`load_image` decodes any format Pillow reads to RGB uint8, refusing images over
``max_pixels`` before decoding them; every failure is a :class:`~vgym.errors.MediaError` naming the file.

**Videos.** Time 0 is the first frame's presentation time; frame ``i`` starts at ``ClipInfo.times[i]`` (the
frame's presentation time, so variable-frame-rate clips get their true times); valid times lie in
``[0, ClipInfo.duration]``. :func:`frame_indices` maps times to frames (the frame whose start is nearest;
ties: the earlier), so every decoder returns the same frames. Decoders (:data:`DECODERS`): ``decord``
(``VideoReader`` on the CPU, ``get_batch``, times from ``get_frame_timestamp``, rounded to the microsecond)
and ``pyav`` (times from one demux pass over the packets, frames by seeking to the keyframe before each and
decoding forward). PyAV vets every clip (one demux pass, no decoding) before decord opens it: decord 0.6
aborts the whole process (``std::bad_alloc``) on some corrupt files, and it must also count the frames PyAV
counts. A clip whose container lists more frames than can be read is refused as truncated, not served shorter;
playlists and manifests are refused (they would make the decoder open the files they name). Readers raise
``ValueError`` (and the decoders' own errors); callers turn them into their own error for the model or the
record. Open clips live in a :class:`VideoReaderCache`.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vgym.errors import MediaError

__all__ = ["load_image", "ClipInfo", "frame_indices", "DECODERS", "VideoReaderCache", "overview_frames"]


def _to_rgb(image: Image.Image, path: str) -> np.ndarray:
    """The decoded ``image`` as RGB uint8 (H, W, 3); see :func:`load_image` for the conversions."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode.startswith("I;16") or mode == "I":  # 16-bit grey (PNG): scale 0..65535 to 0..255, rounded
        grey = np.asarray(image).astype(np.int64)
        if grey.min() < 0 or grey.max() > 65535:
            raise MediaError(f"{path}: 32-bit integer pixels outside 0..65535 are not supported", path=path)
        return np.repeat(((grey * 255 + 32767) // 65535).astype(np.uint8)[..., None], 3, axis=2)
    if mode == "F":
        raise MediaError(f"{path}: floating-point images (Pillow mode 'F') are not supported; save 8-bit RGB",
                         path=path)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA")).astype(np.int64)  # over white, as viewers show transparency
        colour, alpha = rgba[..., :3], rgba[..., 3:]
        return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    try:
        return np.asarray(image.convert("RGB"))  # L, 1, P, CMYK, YCbCr, ...
    except ValueError as error:
        raise MediaError(f"{path}: cannot convert Pillow mode {mode!r} to RGB ({error})", path=path) from None


def load_image(path: str, *, max_pixels: int = 64_000_000) -> np.ndarray:
    """Decode an image file as RGB uint8, whatever its extension says (the format is read from the bytes).

    Conversions: grey and 1-bit are replicated to three channels; palettes are expanded; alpha (RGBA, LA, or a
    palette with transparency) is composited over white; 16-bit grey is scaled to 8 bits (``v * 255 / 65535``,
    rounded); 16-bit colour (RGB / RGBA PNG) keeps each sample's high byte, as Pillow decodes it (within 1 of
    the rounded value); CMYK and YCbCr go through Pillow's conversion. Multi-frame files give their first
    frame. EXIF orientation is *not* applied: annotations such as COCO boxes refer to the stored pixel grid.

    Args:
        path: the file (resolve it with :func:`confined_path` first).
        max_pixels: largest W·H accepted, checked from the header before any pixel is decoded (a decompression
            bomb guard; Pillow's own limit of about 179 M pixels applies on top).

    Returns:
        (H, W, 3) uint8, C-contiguous.

    Raises:
        MediaError: naming the file, when it is missing, empty, not an image, truncated or corrupt, too large,
            or in a mode that has no RGB meaning.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise MediaError(
                    f"{path}: image is {width}x{height} = {width * height} pixels, over "
                    f"max_pixels={max_pixels} (raise max_image_pixels if the file is trusted)",
                    path=path,
                )
            image.load()
            return np.ascontiguousarray(_to_rgb(image, path), dtype=np.uint8)
    except MediaError:
        raise
    except FileNotFoundError:
        raise MediaError(f"image file not found: {path}", path=path) from None
    except UnidentifiedImageError:
        raise MediaError(
            f"{path}: not an image Pillow can read (empty, corrupt or unsupported)", path=path
        ) from None
    except Image.DecompressionBombError as error:
        raise MediaError(f"{path}: {error}", path=path) from None
    except (OSError, SyntaxError, EOFError, ValueError) as error:  # Pillow's decoders raise all of these
        raise MediaError(
            f"{path}: the image could not be decoded ({error}); the file may be truncated or corrupt",
            path=path,
        ) from None


_PYAV_DEMUXERS = "mov,matroska,avi,mpegts,mpeg,flv,ogg,asf,gif,h264,hevc,m4v,ivf,mjpeg,yuv4mpegpipe"
"""FFmpeg demuxers PyAV may use: containers of a single media file. Playlists and manifests (hls, concat,
dash) are left out: FFmpeg opens the files they name wherever those are, so a clip inside a dataset root could
read files outside it."""
_PLAYLIST_HEADS = (b"#EXTM3U", b"ffconcat version")


def _refuse_playlist(path: str) -> None:
    """Raise ValueError when ``path`` is an HLS playlist, an ffconcat list or a DASH manifest, not a video
    file.

    decord cannot be told which demuxers to use (it opens an HLS playlist named ``x.mp4`` and reads the files
    it names), so both decoders check the file's first bytes before opening it.
    """
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(_PLAYLIST_HEADS) or b"<MPD" in head:
        raise ValueError(
            f"{path} is a playlist or manifest (HLS, ffconcat or DASH), not a video file; it would make "
            "the decoder open the files it names, so it is refused"
        )


@dataclass(frozen=True)
class ClipInfo:
    """What a backend knows about a clip before decoding it.

    Attributes:
        times: (N,) float64 start time of each frame in seconds, in presentation order, ``times[0] == 0``.
        fps: the stream's average frame rate.
    """

    times: np.ndarray
    fps: float

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end (the last frame lasts ``1 / fps``)."""
        return float(self.times[-1]) + 1.0 / self.fps

    @functools.cached_property
    def _gaps(self) -> tuple[float, float]:
        """Smallest and largest positive gap between consecutive frame starts (``1 / fps`` for one frame)."""
        gaps = np.diff(self.times)
        gaps = gaps[gaps > 0]
        return (float(gaps.min()), float(gaps.max())) if gaps.size else (1.0 / self.fps, 1.0 / self.fps)

    @property
    def variable_rate(self) -> bool:
        """Whether frame gaps differ by more than 5 % (a variable-frame-rate clip; ``fps`` is then an
        average)."""
        smallest, largest = self._gaps
        return largest > 1.05 * smallest

    def describe(self) -> str:
        """``"clip is 10.00 s, 250 frames at 25 fps"``
        (``"... at 4.878 fps on average (variable frame rate)"``), for tool texts and error messages."""
        rate = " on average (variable frame rate)" if self.variable_rate else ""
        return f"clip is {self.duration:.2f} s, {len(self.times)} frames at {self.fps:.4g} fps{rate}"

    def stamp(self, time: float) -> str:
        """``time`` in seconds to the precision that tells frames apart: 2 decimals while frames are at least
        10 ms apart (up to 100 fps), 3 down to 1 ms, else 6 (the smallest gap decides, so close frames of a
        variable-frame-rate clip get distinct stamps)."""
        smallest = self._gaps[0] * (1 + 1e-3)  # tolerance: times are rounded to the microsecond
        return f"{time:.{2 if smallest >= 0.01 else 3 if smallest >= 0.001 else 6}f}"


def frame_indices(times: np.ndarray, targets: Sequence[float]) -> list[int]:
    """The distinct frames whose start times are nearest ``targets`` (ties go to the earlier frame), in order.

    Args:
        times: (N,) increasing frame start times in seconds.
        targets: wanted times in seconds, increasing.

    Returns:
        Frame indices, increasing and without repeats (so possibly fewer than ``targets``).
    """
    chosen: list[int] = []
    for t in targets:
        after = min(int(np.searchsorted(times, t)), len(times) - 1)  # the first frame starting at or after t
        i = after - 1 if after > 0 and t - times[after - 1] <= times[after] - t else after
        if not chosen or chosen[-1] != i:
            chosen.append(i)
    return chosen


class _DecordClip:
    """A clip read by ``decord.VideoReader`` (CPU). As :class:`_PyAVClip`: ``info``, ``read(indices)`` (RGB
    uint8 frames at distinct indices with their start times in s, in the order asked) and ``close()``."""

    def __init__(self, path: str) -> None:
        import decord  # lazy: decord has no wheels for every platform

        _refuse_playlist(path)
        probe = _PyAVClip(path)  # PyAV vets the file first: decord aborts the process on some corrupt files
        probe.close()
        self._reader = decord.VideoReader(path, ctx=decord.cpu(0))
        if len(self._reader) != len(probe.info.times):
            raise ValueError(
                f"decord finds {len(self._reader)} frames where PyAV finds {len(probe.info.times)}; "
                "the file may be corrupt"
            )
        starts = np.asarray(
            self._reader.get_frame_timestamp(list(range(len(self._reader))))[:, 0], np.float64
        )
        self.info = ClipInfo(np.round(starts - starts[0], 6), float(self._reader.get_avg_fps()))

    def read(self, indices: Sequence[int]) -> list[tuple[np.ndarray, float]]:
        batch = self._reader.get_batch(list(indices)).asnumpy()
        return [(np.ascontiguousarray(frame), float(self.info.times[i])) for frame, i in zip(batch, indices)]

    def close(self) -> None:
        del self._reader


class _PyAVClip:
    """A clip read by PyAV: one demux pass for the timestamps, then seek + decode per request."""

    def __init__(self, path: str) -> None:
        import av

        _refuse_playlist(path)
        self._container = av.open(path, container_options={"format_whitelist": _PYAV_DEMUXERS,
                                                           "protocol_whitelist": "file"})
        try:
            if not self._container.streams.video:
                raise ValueError("the file has no video stream")
            self._stream = self._container.streams.video[0]
            packets = sorted(
                (p.pts, p.is_keyframe) for p in self._container.demux(self._stream) if p.pts is not None
            )
            if not packets:
                raise ValueError("the video stream has no frames")
            if self._stream.frames > len(packets):  # the container's index (MP4, AVI; 0 = unknown) lists more
                raise ValueError(
                    f"the container lists {self._stream.frames} frames but only {len(packets)} can be "
                    "read: the file is truncated or corrupt"
                )
        except BaseException:
            self._container.close()  # no file handle outlives a failed open
            raise
        self._pts = [p for p, _ in packets]
        self._keys = [p for p, key in packets if key] or self._pts[:1]
        starts = np.array([float((p - self._pts[0]) * self._stream.time_base) for p in self._pts])
        fps = float(self._stream.average_rate or self._stream.guessed_rate or 1)
        self.info = ClipInfo(np.round(starts, 6), fps)
        self._frames: Iterator[Any] = iter(())  # the decoder, positioned after the frame with pts self._last
        self._last: int | None = None  # None: nothing decoded since the last seek (pts may be negative)

    def _seek(self, pts: int) -> None:
        self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._last = None

    def _decode_to(self, target: int) -> Any:
        """Decode forward to the frame with pts ``target`` (or the first one after it)."""
        keyframe = self._keys[max(0, int(np.searchsorted(self._keys, target, side="right")) - 1)]
        if self._last is None or target <= self._last or keyframe > self._last:
            self._seek(keyframe)  # go on decoding only when the target is ahead and no keyframe lies between
        for attempt in range(2):
            for frame in self._frames:
                if frame.pts is None:
                    continue
                if self._last is None and frame.pts > target and attempt == 0:
                    break  # the seek overshot (demuxers may seek by dts): decode from the start instead
                self._last = frame.pts
                if frame.pts >= target:
                    return frame
            self._seek(self._pts[0])
        raise ValueError(f"PyAV could not decode the frame at pts {target}")

    def read(self, indices: Sequence[int]) -> list[tuple[np.ndarray, float]]:
        out: dict[int, tuple[np.ndarray, float]] = {}
        for i in sorted(indices):
            frame = self._decode_to(self._pts[i])
            time = float((frame.pts - self._pts[0]) * self._stream.time_base)
            out[i] = (frame.to_ndarray(format="rgb24"), round(time, 6))
        return [out[i] for i in indices]

    def close(self) -> None:
        self._container.close()


DECODERS: dict[str, Callable[[str], Any]] = {"decord": _DecordClip, "pyav": _PyAVClip}
"""Video decoders by name: each opens a clip (``info``, ``read(indices)``, ``close()``)."""


class VideoReaderCache:
    """Open clips of one backend, at most ``max_open``, the least recently used closed first.

    A clip is keyed by (path, modification time, size), so a rewritten file is reopened. Reads hold the
    cache's lock: readers are not thread-safe, so reads of one cache run one at a time.
    """

    def __init__(self, backend: str, max_open: int = 4) -> None:
        """Args:
        backend: ``"decord"`` or ``"pyav"``.
        max_open: how many clips stay open.

        Raises:
            ValueError: for an unknown backend or ``max_open < 1``.
        """
        if backend not in DECODERS or max_open < 1:
            raise ValueError(
                f"need backend in {sorted(DECODERS)} and max_open >= 1, got {backend!r}, {max_open}"
            )
        self.backend, self.max_open = backend, max_open
        self._clips: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def open(self, path: str) -> Iterator[Any]:
        """The open clip at ``path`` (opened now if needed), locked for the ``with`` block."""
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key not in self._clips:
                self._clips[key] = DECODERS[self.backend](path)
                while len(self._clips) > self.max_open:
                    self._clips.popitem(last=False)[1].close()
            self._clips.move_to_end(key)
            yield self._clips[key]

    def close(self) -> None:
        """Close every open clip (harmless to repeat; the cache stays usable)."""
        with self._lock:
            while self._clips:
                self._clips.popitem()[1].close()

    def __len__(self) -> int:
        return len(self._clips)


def overview_frames(path: str, count: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    """``count`` frames spread evenly over the clip at ``path`` (the centres of equal slices, as
    ``sample_frames`` picks over the whole clip), decoded with PyAV, and the clip's facts.

    Returns:
        The frames, RGB uint8 (H, W, 3), and ``{"duration_s", "fps", "num_frames", "frame_indices",
        "frame_times"}`` (the chosen frames' indices and start times).

    Raises:
        MediaError: naming the file, when it is missing or cannot be decoded.
    """
    import av  # lazy: PyAV loads FFmpeg

    if not os.path.isfile(path):
        raise MediaError(f"video file not found: {path}", path=path)
    cache = VideoReaderCache("pyav", max_open=1)
    try:
        with cache.open(path) as clip:
            info = clip.info
            chosen = frame_indices(info.times, [(k + 0.5) * info.duration / count for k in range(count)])
            frames = clip.read(chosen)
    except (av.FFmpegError, OSError, ValueError, IndexError) as error:  # PyAV and our reader's failures
        detail = str(error) if type(error) is ValueError else repr(error)  # our reader's checks read plainly
        raise MediaError(f"{path}: the video could not be decoded with PyAV ({detail})", path=path) from None
    finally:
        cache.close()
    facts = {"duration_s": round(info.duration, 6), "fps": info.fps, "num_frames": len(info.times),
             "frame_indices": chosen, "frame_times": [time for _, time in frames]}
    return [np.ascontiguousarray(frame) for frame, _ in frames], facts
