"""Synthetic video clips whose frames show their own index, so tests, sample datasets and tasks can tell
frames apart after any decoder.

Contents: :func:`synthetic_frame`, :func:`write_synthetic_clip`.

Contract: frame ``i`` encodes ``i`` in 12 black/white cells (up to 4096 frames), so a decoded frame's index
can be read back despite compression; the colours come from ``seed`` alone, so the same arguments give the
same pixels. :func:`write_synthetic_clip` validates its arguments before creating the file and writes frame
``i`` at ``i / fps`` s.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["synthetic_frame", "write_synthetic_clip"]

_BITS = 12  # synthetic clips encode the frame index in 12 black/white cells: up to 4096 frames


def synthetic_frame(
    index: int, *, num_frames: int, size: tuple[int, int] = (160, 120), seed: int = 0
) -> np.ndarray:
    """Frame ``index`` of a synthetic clip that shows its own index, so tests and tasks can tell frames apart.

    Top quarter: ``index`` in binary in 12 equal cells, most significant bit left (white 1, black 0). Middle:
    the index as a number. Bottom eighth: a progress bar over ``(index + 1) / num_frames`` of the width.
    Background and bar colours come from ``seed``.

    Args:
        index: the frame's index, ``0 <= index < num_frames <= 4096``.
        num_frames: frames in the clip.
        size: ``(width, height)`` in pixels, width at least 96 (8 px per cell) and height at least 48.
        seed: picks the colours.

    Returns:
        RGB uint8 (height, width, 3).

    Raises:
        ValueError: for an index, frame count or size out of range.
    """
    width, height = size
    if not 0 <= index < num_frames <= 2**_BITS or width < 8 * _BITS or height < 48:
        raise ValueError(
            f"need 0 <= index < num_frames <= {2**_BITS} and size >= (96, 48), got index={index}, "
            f"num_frames={num_frames}, size={size}"
        )
    background, bar = np.random.default_rng(seed).integers(40, 200, (2, 3))
    image = np.full((height, width, 3), background, np.uint8)
    for bit in range(_BITS):
        x1, x2 = bit * width // _BITS, (bit + 1) * width // _BITS
        image[: height // 4, x1:x2] = 255 if index >> (_BITS - 1 - bit) & 1 else 0
    image[height - height // 8 :, : round(width * (index + 1) / num_frames)] = bar
    font, scale, text = cv2.FONT_HERSHEY_SIMPLEX, height / 80, str(index)
    (w, h), _ = cv2.getTextSize(text, font, scale, 2)
    for colour, thickness in (
        ((0, 0, 0), max(2, round(5 * scale))),
        ((255, 255, 255), max(1, round(2 * scale))),
    ):
        # outlined
        cv2.putText(image, text, ((width - w) // 2, (height + h) // 2), font, scale, colour, thickness)
    return image


def write_synthetic_clip(path: str, *, seconds: float, fps: float, size: tuple[int, int] = (160, 120),
                         seed: int = 0) -> int:
    """Write an MPEG-4 (OpenCV ``mp4v``) clip of :func:`synthetic_frame` frames, frame ``i`` at ``i / fps`` s.

    Args:
        path: the ``.mp4`` file to write.
        seconds: clip length; ``round(seconds * fps)`` frames are written.
        fps: frame rate.
        size: ``(width, height)``; see :func:`synthetic_frame`.
        seed: picks the colours.

    Returns:
        The number of frames written.

    Raises:
        ValueError: if the clip would have no frames or the size is out of range.
        RuntimeError: if OpenCV cannot open an mp4v writer for ``path``.
    """
    num_frames = round(seconds * fps)
    if num_frames < 1:
        raise ValueError(f"seconds * fps must give at least one frame, got seconds={seconds}, fps={fps}")
    synthetic_frame(0, num_frames=num_frames, size=size, seed=seed)  # validates before creating the file
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open an mp4v writer for {path!r}")
    try:
        for i in range(num_frames):
            frame = synthetic_frame(i, num_frames=num_frames, size=size, seed=seed)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return num_frames
