"""Video frames: sample frames evenly from a time range of the episode's video, or fetch the frame at a time.

Contents: :func:`sample_frames`, :func:`get_frame`, :func:`frame_indices`, :class:`ClipInfo`,
:class:`VideoReaderCache`. Re-exported from :mod:`vgym.synthetic_video` (defined there): :func:`synthetic_frame`,
:func:`write_synthetic_clip`.

Both tools read ``ctx.video``. Time 0 is the first frame's presentation time; frame ``i`` starts at
``ClipInfo.times[i]`` (the frame's presentation time, so variable-frame-rate clips get their true times); valid
times lie in ``[0, ClipInfo.duration]``. One helper, :func:`frame_indices`, maps times
to frames, so all backends return the same frames: ``sample_frames`` takes the centres of ``num_frames`` equal
slices of ``[start_s, end_s]``, ``t_k = start_s + (k + 1/2) · (end_s - start_s) / num_frames``, ``get_frame`` takes
``t_s``; each time maps to the frame whose start is nearest (ties: the earlier). A range shorter than
``num_frames`` frame periods gives each of its frames once (the text says so). Frames are RGB uint8, each fitted
to the budget ``ctx.max_pixels`` (never enlarged).

Backends: ``auto`` (default) is ``decord``, then ``pyav`` when decord is missing or fails (decord 0.6 cannot open
AV1, for one). ``decord``: ``VideoReader`` on the CPU, ``get_batch``, times from ``get_frame_timestamp`` (float32,
so all times are rounded to the microsecond). ``pyav``: times from one demux pass over the packets, frames by
seeking to the keyframe before each and decoding forward; a frame's time is ``frame.pts * time_base``.

**Bad files.** A missing, empty, truncated or corrupt file, or one without a video stream or frames, is a
:class:`~vgym.errors.ToolError` for the model naming the file (and a warning on this module's logger with the full
path). A clip whose container lists more frames than can be read is refused as truncated, not served shorter. PyAV
vets every clip (one demux pass, no decoding) before decord opens it: decord 0.6 aborts the whole process
(``std::bad_alloc``) on some corrupt files, and it must also count the frames PyAV counts.

Open clips live in a :class:`VideoReaderCache` per decoder, the backends' loaded resource, so a ``ToolRuntime``
reuses them (loader option ``max_open``, default 4); without a runtime a call opens the clip for itself.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from vgym.errors import ToolError
from vgym.synthetic_video import synthetic_frame, write_synthetic_clip
from vgym.tooling import TOOLS, Backend, Tool, ToolContext, ToolResult, fit_to_budget

__all__ = ["sample_frames", "get_frame", "frame_indices", "ClipInfo", "VideoReaderCache", "synthetic_frame",
           "write_synthetic_clip"]

logger = logging.getLogger(__name__)

MAX_FRAMES = 16
"""Most frames one ``sample_frames`` call may return (each costs the model a full image budget)."""

_PYAV_DEMUXERS = "mov,matroska,avi,mpegts,mpeg,flv,ogg,asf,gif,h264,hevc,m4v,ivf,mjpeg,yuv4mpegpipe"
"""FFmpeg demuxers PyAV may use: containers of a single media file. Playlists and manifests (hls, concat, dash)
are left out: FFmpeg opens the files they name wherever those are, so a clip inside a dataset root could read
files outside it."""
_PLAYLIST_HEADS = (b"#EXTM3U", b"ffconcat version")


def _refuse_playlist(path: str) -> None:
    """Raise ValueError when ``path`` is an HLS playlist, an ffconcat list or a DASH manifest, not a video file.

    decord cannot be told which demuxers to use (it opens an HLS playlist named ``x.mp4`` and reads the files it
    names), so both decoders check the file's first bytes before opening it.
    """
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(_PLAYLIST_HEADS) or b"<MPD" in head:
        raise ValueError(f"{path} is a playlist or manifest (HLS, ffconcat or DASH), not a video file; it would make "
                         "the decoder open the files it names, so it is refused")


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
        """Whether frame gaps differ by more than 5 % (a variable-frame-rate clip; ``fps`` is then an average)."""
        smallest, largest = self._gaps
        return largest > 1.05 * smallest

    def describe(self) -> str:
        """``"clip is 10.00 s, 250 frames at 25 fps"`` (``"... at 4.878 fps on average (variable frame rate)"``),
        for tool texts and error messages."""
        rate = " on average (variable frame rate)" if self.variable_rate else ""
        return f"clip is {self.duration:.2f} s, {len(self.times)} frames at {self.fps:.4g} fps{rate}"

    def stamp(self, time: float) -> str:
        """``time`` in seconds to the precision that tells frames apart: 2 decimals while frames are at least 10 ms
        apart (up to 100 fps), 3 down to 1 ms, else 6 (the smallest gap decides, so close frames of a
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
    """A clip read by ``decord.VideoReader`` (CPU). As :class:`_PyAVClip`: ``info``, ``read(indices)`` (RGB uint8
    frames at distinct indices with their start times in s, in the order asked) and ``close()``."""

    def __init__(self, path: str) -> None:
        import decord  # lazy: decord has no wheels for every platform

        _refuse_playlist(path)
        probe = _PyAVClip(path)  # PyAV vets the file first: decord aborts the process on some corrupt files
        probe.close()
        self._reader = decord.VideoReader(path, ctx=decord.cpu(0))
        if len(self._reader) != len(probe.info.times):
            raise ValueError(f"decord finds {len(self._reader)} frames where PyAV finds {len(probe.info.times)}; "
                             "the file may be corrupt")
        starts = np.asarray(self._reader.get_frame_timestamp(list(range(len(self._reader))))[:, 0], np.float64)
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
            packets = sorted((p.pts, p.is_keyframe) for p in self._container.demux(self._stream) if p.pts is not None)
            if not packets:
                raise ValueError("the video stream has no frames")
            if self._stream.frames > len(packets):  # the container's index (MP4, AVI; 0 = unknown) lists more
                raise ValueError(f"the container lists {self._stream.frames} frames but only {len(packets)} can be "
                                 "read: the file is truncated or corrupt")
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


_OPENERS: dict[str, Callable[[str], Any]] = {"decord": _DecordClip, "pyav": _PyAVClip}


class VideoReaderCache:
    """Open clips of one backend, at most ``max_open``, the least recently used closed first.

    A clip is keyed by (path, modification time, size), so a rewritten file is reopened. Reads hold the cache's
    lock: readers are not thread-safe, so reads of one cache run one at a time.
    """

    def __init__(self, backend: str, max_open: int = 4) -> None:
        """Args:
        backend: ``"decord"`` or ``"pyav"``.
        max_open: how many clips stay open.

        Raises:
            ValueError: for an unknown backend or ``max_open < 1``.
        """
        if backend not in _OPENERS or max_open < 1:
            raise ValueError(f"need backend in {sorted(_OPENERS)} and max_open >= 1, got {backend!r}, {max_open}")
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
                self._clips[key] = _OPENERS[self.backend](path)
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


def _load_readers(options: Mapping[str, Any]) -> dict[str, VideoReaderCache]:
    """The backends' resource: a reader cache per decoder. Option ``max_open`` (int ≥ 1, default 4)."""
    max_open = options.get("max_open", 4)
    if set(options) - {"max_open"} or not isinstance(max_open, int) or max_open < 1:
        raise ToolError(f"video tools accept only the option max_open (an int >= 1), got {dict(options)!r}.")
    return {name: VideoReaderCache(name, max_open) for name in _OPENERS}


class _DecodeFailure(ToolError):
    """A decoder could not read the clip (``auto`` then tries the next one)."""


def _fetch(ctx: ToolContext, decoder: str, choose: Callable[[ClipInfo], list[int]]) -> tuple[ClipInfo, list]:
    """Open ``ctx.video`` with ``decoder`` and read the frames ``choose(info)`` picks (it raises for bad times)."""
    shared = isinstance(ctx.resource, dict)  # a runtime's loaded reader caches; else open the clip for this call
    cache = ctx.resource[decoder] if shared else VideoReaderCache(decoder, max_open=1)
    try:
        with cache.open(str(ctx.video)) as clip:
            return clip.info, clip.read(choose(clip.info))
    except ToolError:
        raise
    except ImportError as error:
        raise _DecodeFailure(f"{decoder} is not installed ({error}); use the backend 'pyav' or 'auto'.") from error
    except Exception as error:  # decord.DECORDError, av.FFmpegError, our checks' ValueError, ...
        detail = str(error) if type(error) is ValueError else repr(error)
        raise _DecodeFailure(f"the video could not be read with {decoder}: {detail} (file "
                             f"{os.path.basename(str(ctx.video))}).") from error
    finally:
        if not shared:
            cache.close()


def _frames(ctx: ToolContext, backend: str, choose: Callable[[ClipInfo], list[int]]) -> tuple[ClipInfo, list]:
    """:func:`_fetch` with the named backend; ``auto`` is decord, then PyAV if decord fails."""
    if ctx.video is None:
        raise ToolError("this episode has no video, so there are no frames to read; answer from the images.")
    try:
        if backend != "auto":
            return _fetch(ctx, backend, choose)
        try:
            return _fetch(ctx, "decord", choose)
        except _DecodeFailure as failure:
            logger.info("decord failed on %s, using PyAV: %s", ctx.video, failure)
            return _fetch(ctx, "pyav", choose)
    except _DecodeFailure as failure:
        logger.warning("video tool could not read %s: %s", ctx.video, failure)
        raise


def _check_time(name: str, value: float, info: ClipInfo | None = None) -> None:
    """Raise :class:`ToolError` unless ``value`` is finite (and, given ``info``, within the clip)."""
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float, e.g. 10**400
        finite = False
    if not finite:
        raise ToolError(f"{name} must be a finite number of seconds, got {value!r}.")
    if info is not None and not 0.0 <= value <= info.duration:
        raise ToolError(f"{name}={value:g} is outside the video: the {info.describe()}, so times lie in "
                        f"[0, {info.duration:.2f}] s.")


def _sample(ctx: ToolContext, start_s: float, end_s: float, num_frames: int = 8, *, backend: str) -> ToolResult:
    _check_time("start_s", start_s)
    _check_time("end_s", end_s)
    if not 1 <= num_frames <= MAX_FRAMES:
        raise ToolError(f"num_frames must be between 1 and {MAX_FRAMES}, got {num_frames}.")
    if start_s >= end_s:
        raise ToolError(f"start_s must be less than end_s, got start_s={start_s:g}, end_s={end_s:g}.")

    def choose(info: ClipInfo) -> list[int]:
        _check_time("start_s", start_s, info)
        _check_time("end_s", end_s, info)
        step = (end_s - start_s) / num_frames
        return frame_indices(info.times, [start_s + (k + 0.5) * step for k in range(num_frames)])

    info, frames = _frames(ctx, backend, choose)
    fewer = "" if len(frames) == num_frames else f" (only {len(frames)} distinct frames in that range)"
    times = ", ".join(info.stamp(t) for _, t in frames)
    text = f"{len(frames)} frames from [{start_s:g}, {end_s:g}] s at [{times}] s{fewer}; {info.describe()}."
    return ToolResult(text=text, images=[fit_to_budget(frame, ctx.max_pixels) for frame, _ in frames])


def _get(ctx: ToolContext, t_s: float, *, backend: str) -> ToolResult:
    _check_time("t_s", t_s)

    def choose(info: ClipInfo) -> list[int]:
        _check_time("t_s", t_s, info)
        return frame_indices(info.times, [t_s])

    info, [(frame, time)] = _frames(ctx, backend, choose)
    text = f"the frame at {info.stamp(time)} s (nearest to {t_s:g} s); {info.describe()}."
    return ToolResult(text=text, images=[fit_to_budget(frame, ctx.max_pixels)])


def sample_frames(ctx: ToolContext, start_s: float, end_s: float, num_frames: int = 8) -> ToolResult:
    """Look at frames of the video spread evenly over a time range, with the time of each frame.

    Args:
        start_s: Start of the range in seconds from the beginning of the video.
        end_s: End of the range in seconds (greater than start_s).
        num_frames: How many frames to return (1 to 16, default 8), each from the middle of an equal slice of the range.
    """
    return _sample(ctx, start_s, end_s, num_frames, backend="auto")


def get_frame(ctx: ToolContext, t_s: float) -> ToolResult:
    """Look at the single video frame nearest a given time.

    Args:
        t_s: The time in seconds from the beginning of the video.
    """
    return _get(ctx, t_s, backend="auto")


def _backends(impl: Callable[..., ToolResult]) -> dict[str, Backend]:
    return {name: Backend(functools.partial(impl, backend=name), loader=_load_readers) for name in ("auto", *_OPENERS)}


TOOLS.register("sample_frames", Tool(sample_frames, backends=_backends(_sample), default_backend="auto"))
TOOLS.register("get_frame", Tool(get_frame, backends=_backends(_get), default_backend="auto"))
