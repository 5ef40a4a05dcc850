"""The clip cache of the procedural video tasks: render once, reuse, atomic writes, pruned to a size limit."""

from __future__ import annotations

import os
import time
from pathlib import Path

import av
import numpy as np

import vgym.data.clips as clips
from vgym.data.clips import ensure_clip, prune_clips, write_clip
from vgym.tasks.video_grounding import VideoGroundingConfig, VideoGroundingTask


def _frames(n: int = 4, value: int = 80) -> list[np.ndarray]:
    return [np.full((32, 48, 3), value + 10 * i, np.uint8) for i in range(n)]


def _clip(folder: Path, name: str, age_s: float, size: int = 1000) -> Path:
    path = folder / name
    path.write_bytes(b"\0" * size)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_write_clip_is_decodable_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "c.mp4"
    write_clip(str(path), _frames(6), fps=5)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape == (32, 48, 3)
    assert abs(float(decoded[3].mean()) - 110) < 6  # the 4th frame's grey level, through a lossy codec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4"]


def test_ensure_clip_renders_once_then_only_marks_use(tmp_path: Path) -> None:
    path, calls = tmp_path / "c.mp4", []

    def render() -> list[np.ndarray]:
        calls.append(1)
        return _frames()

    ensure_clip(str(path), render, 5)
    old = time.time() - 3600
    os.utime(path, (old, old))
    ensure_clip(str(path), render, 5)
    assert len(calls) == 1 and path.stat().st_mtime > old + 3000


def test_prune_removes_least_recently_used_until_under_the_limit_and_spares_recent_clips(
    tmp_path: Path,
) -> None:
    oldest = _clip(tmp_path, "a.mp4", 5000)
    older = _clip(tmp_path, "b.mp4", 4000)
    old = _clip(tmp_path, "c.mp4", 3000)
    recent = [_clip(tmp_path, f"r{i}.mp4", 10) for i in range(3)]  # used in the last 10 minutes
    other = _clip(tmp_path, "notes.txt", 9000)
    deleted, freed = prune_clips(str(tmp_path), limit_bytes=4500, min_age_s=600)
    assert (deleted, freed) == (2, 2000)
    assert not oldest.exists() and not older.exists() and old.exists()
    assert all(p.exists() for p in recent) and other.exists()
    # Recent clips are never pruned, even over the limit.
    assert prune_clips(str(tmp_path), limit_bytes=0, min_age_s=600) == (1, 1000)
    assert all(p.exists() for p in recent)
    assert prune_clips(str(tmp_path / "missing"), limit_bytes=0) == (0, 0)


def test_tasks_prune_their_folder_every_few_writes(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A real video task writing into a folder that is over its limit prunes the stale clips, keeps its
    own."""
    stale = [_clip(tmp_path, f"stale{i}.mp4", 7200, size=50_000) for i in range(4)]
    monkeypatch.setattr(clips, "PRUNE_EVERY", 2)
    monkeypatch.setattr(clips, "CLIP_FOLDER_LIMIT_BYTES", 60_000)
    monkeypatch.setattr(clips, "_writes", 0)
    task = VideoGroundingTask(VideoGroundingConfig(clip_dir=str(tmp_path), difficulty=0))
    samples = [task.sample("train", i, 0) for i in range(2)]
    assert all(os.path.exists(s.video) for s in samples)
    assert not any(p.exists() for p in stale)
