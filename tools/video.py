"""Video frames: sample frames evenly from a time range of the episode's video, or fetch the frame at a time.

Contents: :func:`sample_frames`, :func:`get_frame`, :data:`MAX_FRAMES`.

Both tools read ``ctx.video`` with :mod:`vgym.data.media` (the clip readers datasets use too). Time 0 is the
first frame's presentation time; valid times lie in ``[0, ClipInfo.duration]``. One helper,
:func:`~vgym.data.media.frame_indices`, maps times to frames, so all backends return the same frames:
``sample_frames`` takes the centres of ``num_frames`` equal slices of ``[start_s, end_s]``,
``t_k = start_s + (k + 1/2) · (end_s - start_s) / num_frames``, ``get_frame`` takes ``t_s``; each time maps to
the frame whose start is nearest (ties: the earlier). A range shorter than ``num_frames`` frame periods gives
each of its frames once (the text says so). Frames are RGB uint8, each fitted to the budget ``ctx.max_pixels``
(never enlarged).

Backends: ``auto`` (default) is ``decord``, then ``pyav`` when decord is missing or fails (decord 0.6 cannot
open AV1, for one); ``decord`` and ``pyav`` are the decoders of :data:`vgym.data.media.DECODERS`.

**Bad files.** A missing, empty, truncated or corrupt file, or one without a video stream or frames, is a
:class:`~vgym.errors.ToolError` for the model naming the file (and a warning on this module's logger with the
full path).

Open clips live in a :class:`~vgym.data.media.VideoReaderCache` per decoder, the backends' loaded resource, so
a ``ToolRuntime`` reuses them (loader option ``max_open``, default 4); without a runtime a call opens the clip
for itself.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from vgym.data.media import DECODERS, ClipInfo, VideoReaderCache, frame_indices
from vgym.errors import ToolError
from vgym.tooling import TOOLS, Backend, Tool, ToolContext, ToolResult, fit_to_budget

__all__ = ["sample_frames", "get_frame", "MAX_FRAMES"]

logger = logging.getLogger(__name__)

MAX_FRAMES = 16
"""Most frames one ``sample_frames`` call may return (each costs the model a full image budget)."""


def _load_readers(options: Mapping[str, Any]) -> dict[str, VideoReaderCache]:
    """The backends' resource: a reader cache per decoder. Option ``max_open`` (int ≥ 1, default 4)."""
    max_open = options.get("max_open", 4)
    if set(options) - {"max_open"} or not isinstance(max_open, int) or max_open < 1:
        raise ToolError(f"video tools accept only the option max_open (an int >= 1), got {dict(options)!r}.")
    return {name: VideoReaderCache(name, max_open) for name in DECODERS}


class _DecodeFailure(ToolError):
    """A decoder could not read the clip (``auto`` then tries the next one)."""


def _fetch(ctx: ToolContext, decoder: str, choose: Callable[[ClipInfo], list[int]]) -> tuple[ClipInfo, list]:
    """Open ``ctx.video`` with ``decoder`` and read the frames ``choose(info)`` picks (it raises for bad
    times)."""
    # a runtime's loaded reader caches; else open the clip for this call
    shared = isinstance(ctx.resource, dict)
    cache = ctx.resource[decoder] if shared else VideoReaderCache(decoder, max_open=1)
    try:
        with cache.open(str(ctx.video)) as clip:
            return clip.info, clip.read(choose(clip.info))
    except ToolError:
        raise
    except ImportError as error:
        raise _DecodeFailure(
            f"{decoder} is not installed ({error}); use the backend 'pyav' or 'auto'."
        ) from error
    except Exception as error:  # decord.DECORDError, av.FFmpegError, our checks' ValueError, ...
        detail = str(error) if type(error) is ValueError else repr(error)
        raise _DecodeFailure(
            f"the video could not be read with {decoder}: {detail} (file {os.path.basename(str(ctx.video))})."
        ) from error
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


def _sample(
    ctx: ToolContext, start_s: float, end_s: float, num_frames: int = 8, *, backend: str
) -> ToolResult:
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
        num_frames: How many frames to return (1 to 16, default 8), each from the middle of an equal slice of
            the range.
    """
    return _sample(ctx, start_s, end_s, num_frames, backend="auto")


def get_frame(ctx: ToolContext, t_s: float) -> ToolResult:
    """Look at the single video frame nearest a given time.

    Args:
        t_s: The time in seconds from the beginning of the video.
    """
    return _get(ctx, t_s, backend="auto")


def _backends(impl: Callable[..., ToolResult]) -> dict[str, Backend]:
    return {
        name: Backend(functools.partial(impl, backend=name), loader=_load_readers)
        for name in ("auto", *DECODERS)
    }


TOOLS.register("sample_frames", Tool(sample_frames, backends=_backends(_sample), default_backend="auto"))
TOOLS.register("get_frame", Tool(get_frame, backends=_backends(_get), default_backend="auto"))
