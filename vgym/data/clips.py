"""The on-disk cache of rendered video clips shared by the procedural video tasks, kept to a size limit.

Contents: :data:`CLIP_FOLDER_LIMIT_BYTES`, :func:`default_clip_dir`, :func:`clip_path`,
:func:`overview_indices`, :class:`OverviewTimeline`, :func:`overview_timeline`, :func:`write_clip`,
:func:`ensure_clip`, :func:`prune_clips`.

Contract: a clip is named by a hash of everything that fixes its pixels (:func:`clip_path`), so a cached file
is always the right one; :func:`ensure_clip` renders only when the file is missing and otherwise refreshes its
modification time. Writes are atomic (temporary name, then ``os.replace``), so concurrent samplers and readers
never see half a clip. Every :data:`PRUNE_EVERY` writes in a process, the folder is pruned back under
:data:`CLIP_FOLDER_LIMIT_BYTES`: the least recently used clips go first, and never one used in the last
``min_age_s`` seconds (a live episode's clip stays; a pruned clip is simply rendered again when its sample is
drawn again). Without the limit a multi-day run grew the folder without bound (the soak benchmark measured
~216 MB/h at 10 episodes/s).

The procedural video tasks show a few *overview* frames of their clip (:func:`overview_indices`) and hide the
events a tool must find between them (:func:`overview_timeline`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from vgym.data.media import frame_indices

__all__ = ["CLIP_FOLDER_LIMIT_BYTES", "PRUNE_EVERY", "default_clip_dir", "clip_path", "overview_indices",
           "OverviewTimeline", "overview_timeline", "write_clip", "ensure_clip", "prune_clips"]

logger = logging.getLogger(__name__)

CLIP_FOLDER_LIMIT_BYTES = 2 << 30
"""Size the clip folder is pruned back under (2 GiB: ~100,000 clips of the built-in tasks)."""
PRUNE_EVERY = 256
"""Clip writes per process between two prunes (a prune lists the folder once)."""

_writes = 0
_lock = threading.Lock()


def default_clip_dir() -> str:
    """``<tempfile.gettempdir()>/vgym-clips``: where tasks cache clips when their ``clip_dir`` is None."""
    return os.path.join(tempfile.gettempdir(), "vgym-clips")


def clip_path(task: str, key: Sequence[Any], *, clip_dir: str | None = None) -> str:
    """The cache path of a clip rendered from ``key``: ``clip_dir / <task>-<hash>.mp4``, the hash being the
    first 20 hex digits of the SHA-1 of ``json.dumps([task, *key], sort_keys=True)``.

    Args:
        task: the task's name: the file name's prefix, and hashed too.
        key: everything that fixes the clip's pixels, JSON-serialisable (the task's version, its renderer's
            version, and its config less ``clip_dir``, or the clip's plan, ...). The folder is not part of it:
            the same key gives the same file name anywhere.
        clip_dir: the folder; None = :func:`default_clip_dir`.

    Raises:
        TypeError: if ``key`` is not JSON-serialisable.
    """
    digest = hashlib.sha1(json.dumps([task, *key], sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(clip_dir or default_clip_dir(), f"{task}-{digest}.mp4")


def overview_indices(num_frames: int, fps: int, count: int) -> list[int]:
    """The frames of a clip that the ``sample_frames`` tool picks for ``count`` frames over the whole clip
    (the frame starting nearest ``(k + 1/2) · D / count`` s, D = ``num_frames / fps``): what the video tasks
    show as the sample's overview images.

    Returns:
        Frame indices, increasing, without repeats (fewer than ``count`` only when ``count > num_frames``).
    """
    duration = num_frames / fps
    return frame_indices(np.arange(num_frames) / fps, [(k + 0.5) * duration / count for k in range(count)])


@dataclass(frozen=True)
class OverviewTimeline:
    """Where a video task can hide events from its overview images (see :func:`overview_timeline`)."""

    overview: list[int]
    """The overview frames (:func:`overview_indices`), n of them."""
    gaps: list[tuple[int, int]]
    """The n + 1 half-open frame ranges ``[a, b)`` before, between and after the overview frames (the clip's
    edges included; a range is empty when two overview frames, or one and an edge, are neighbours)."""
    probes: list[list[int]]
    """Per inner gap k = 1 .. n - 1: every frame a ``sample_frames`` call aimed at the gap's middle, time
    k·D/n, may return (two frames when a rounding tie could go either way)."""


def overview_timeline(num_frames: int, fps: int, count: int) -> OverviewTimeline:
    """The overview frames of a ``num_frames`` clip at ``fps`` showing ``count`` of them, the gaps between
    them and the frames at the inner gaps' middles (:class:`OverviewTimeline`).

    A ``sample_frames`` call over ``[D / (2n), D - D / (2n)]`` s with n - 1 frames returns one probe frame per
    inner gap, so an event covering a gap's probes is seen by that call and by none of the overview frames.
    """
    overview = overview_indices(num_frames, fps, count)
    bounds = [-1, *overview, num_frames]
    gaps = [(a + 1, b) for a, b in zip(bounds, bounds[1:])]
    # The call aims at frame k·N/n; a tie (x.5) may go either way after float rounding, so both frames count.
    probes = [
        [i for i in range(num_frames) if abs(i - k * num_frames / count) <= 0.5 + 1e-3]
        for k in range(1, count)
    ]
    return OverviewTimeline(overview, gaps, probes)


def write_clip(path: str, frames: list[np.ndarray], fps: int) -> None:
    """Write RGB ``frames`` as an mp4v clip at ``path``: to a temporary name in the same folder, then
    ``os.replace`` (atomic), so concurrent samplers and readers never see half a clip.

    Raises:
        RuntimeError: if OpenCV cannot open an mp4v writer.
    """
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".mp4", prefix=".part-", dir=folder)  # the suffix picks the container
    os.close(fd)
    try:
        height, width = frames[0].shape[:2]
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise RuntimeError(f"OpenCV could not open an mp4v writer for {tmp!r}")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def ensure_clip(path: str, render: Callable[[], list[np.ndarray]], fps: int, *,
                limit_bytes: int | None = None) -> None:
    """Make sure the clip at ``path`` exists: render and write it when missing (``render()`` gives the RGB
    frames), else mark it used (its modification time). Prunes the folder every :data:`PRUNE_EVERY` writes.

    Args:
        limit_bytes: the folder's size limit; None = :data:`CLIP_FOLDER_LIMIT_BYTES`.
    """
    global _writes
    try:
        os.utime(path)
        return
    except FileNotFoundError:
        pass
    write_clip(path, render(), fps)
    with _lock:
        _writes += 1
        due = _writes % PRUNE_EVERY == 0
    if due:
        prune_clips(os.path.dirname(path), CLIP_FOLDER_LIMIT_BYTES if limit_bytes is None else limit_bytes)


def prune_clips(folder: str, limit_bytes: int, *, min_age_s: float = 600.0) -> tuple[int, int]:
    """Delete the least recently used ``*.mp4`` clips of ``folder`` until its clips total at most
    ``limit_bytes``, sparing any used in the last ``min_age_s`` seconds. Files that vanish meanwhile (another
    process pruning) are skipped.

    Returns:
        ``(clips deleted, bytes freed)``.
    """
    entries = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.endswith(".mp4") and not entry.name.startswith(".part-"):
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    entries.append((st.st_mtime, st.st_size, entry.path))
    except FileNotFoundError:
        return 0, 0
    total = sum(size for _, size, _ in entries)
    deleted = freed = 0
    cutoff = time.time() - min_age_s
    for mtime, size, path in sorted(entries):
        if total <= limit_bytes or mtime > cutoff:
            break
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        total -= size
        deleted, freed = deleted + 1, freed + size
    if deleted:
        logger.info("pruned %d clips (%.1f MB) from %s", deleted, freed / 1e6, folder)
    return deleted, freed
