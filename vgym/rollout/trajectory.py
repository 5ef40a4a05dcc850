"""The trajectory record produced by a rollout, its on-disk form (JSONL + PNG images), and crash-safe writing.

Contents: :class:`Trajectory`, :func:`save_trajectories`, :func:`load_trajectory_records`,
:func:`staged_writes`, :func:`atomic_path`, :func:`append_line`.

Every file a run folder keeps (trajectories, eval records and reports, checkpoints) is written so that a kill
or a full disk never leaves a half-written file under its final name: new content goes to a hidden temporary
sibling (``.<name>.tmp-<pid>-<n>``), is flushed to disk, then renamed over the old (:func:`staged_writes`,
:func:`atomic_path`); append-only logs roll a failed append back (:func:`append_line`). A failed write raises
:class:`OSError` naming the path, and what was there before is byte-identical afterwards.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

__all__ = ["Trajectory", "save_trajectories", "load_trajectory_records", "staged_writes", "atomic_path",
           "append_line", "write_json"]


SAMPLE_ERROR = "sample_error"
"""Prefix of ``truncated_reason`` for an episode whose sample's media could not be loaded."""

POLICY_ERROR = "policy_error"
"""Prefix of ``truncated_reason`` for an episode the policy could not go on playing (its server refused the
turn's request; :attr:`vgym.policies.base.PolicyOutput.error`)."""


@dataclass
class Trajectory:
    """One finished episode, token-exact.

    Attributes:
        sample_id: the sample's id; ``group_id``: episodes sharing a sample in a GRPO group share it.
        task: task name.
        input_ids: (T,) the whole sequence: prompt, model turns and env messages, built by appending.
        loss_mask: (T,) 1 on tokens the policy generated (its turns and their end-of-turn tokens), else 0.
        logprobs: (T,) behaviour log-probs on policy tokens (0 elsewhere, and 0 for text-only policies).
        images: the images in sequence order as shown to the model (budget-fitted RGB uint8).
        pixel_values: (P, D) processor patches of ``images`` (what the model consumes), or None.
        image_grid_thw: (N, 3) processor grid per image, or None.
        turns: per model turn, ``{"text", "observation", "tool_calls"}``.
        reward: the episode reward; ``reward_parts``: its parts (accuracy, format, tool, total).
        answer: the final answer text, or None when the episode was truncated.
        terminated / truncated: how the episode ended.
        truncated_reason: why a truncated episode was cut — ``"max_turns"`` (the env's turn cap),
            ``"context_tokens"`` or ``"policy_tokens"`` (the rollout's budgets), or
            ``"sample_error: <message>"`` (the sample's media could not be loaded; no tokens, reward 0) or
            ``"policy_error: <message>"`` (the policy could not play a turn; the turns before it, reward 0)
            — else None.
        question: the sample's question, for reports and the viewer; written after the episode from the env's
            final step (``info["question"]``), never shown to a policy through this record. None when the env
            did not end the episode (a sample error, or a cut by the rollout's token budgets).
        gold_answer: the sample's gold answer (``info["gold"]`` of the final step), for reports and the
            viewer; None when ``question`` is.
    """

    sample_id: str
    group_id: int
    task: str
    input_ids: torch.Tensor
    loss_mask: torch.Tensor
    logprobs: torch.Tensor
    images: list[np.ndarray]
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    turns: list[dict[str, Any]] = field(default_factory=list)
    reward: float = 0.0
    reward_parts: dict[str, float] = field(default_factory=dict)
    answer: str | None = None
    terminated: bool = False
    truncated: bool = False
    truncated_reason: str | None = None
    question: str | None = None
    gold_answer: str | None = None

    @classmethod
    def failed(cls, sample_id: str, group_id: int, task: str, error: object) -> Trajectory:
        """An episode whose sample could not be loaded: no tokens or images, reward 0, truncated with
        ``truncated_reason = "sample_error: <error>"`` (the error names the file)."""
        empty = torch.zeros(0, dtype=torch.long)
        return cls(sample_id, group_id, task, empty, empty, torch.zeros(0), [], None, None, truncated=True,
                   truncated_reason=f"{SAMPLE_ERROR}: {error}")

    @property
    def sample_failed(self) -> bool:
        """Whether the sample could not be loaded (see :meth:`failed`)."""
        return (self.truncated_reason or "").startswith(SAMPLE_ERROR)

    @property
    def num_turns(self) -> int:
        """Model turns played."""
        return len(self.turns)

    @property
    def num_tool_calls(self) -> int:
        """Tool calls made, successful or not."""
        return sum(len(t["tool_calls"]) for t in self.turns)

    def record(self) -> dict[str, Any]:
        """A JSON-serialisable summary (no tensors, no pixels)."""
        return {
            "sample_id": self.sample_id,
            "group_id": self.group_id,
            "task": self.task,
            "reward": self.reward,
            "reward_parts": self.reward_parts,
            "answer": self.answer,
            "terminated": self.terminated,
            "truncated": self.truncated,
            "truncated_reason": self.truncated_reason,
            "question": self.question,
            "gold_answer": self.gold_answer,
            "num_tokens": int(self.input_ids.numel()),
            "num_policy_tokens": int(self.loss_mask.sum()),
            "turns": self.turns,
        }


def save_trajectories(
    trajectories: Sequence[Trajectory], folder: str | Path, name: str = "trajectories"
) -> Path:
    """Write ``<folder>/<name>.jsonl`` (one record per line) and each episode's images as PNG files, all or
    nothing.

    Image ``k`` of trajectory ``i`` goes to ``<folder>/images/<name>_<i>_<k>.png``; each record lists its
    image paths relative to ``folder``. Everything is staged in temporary files and renamed into place only
    when all of it was written (the JSONL last), so a kill or a full disk leaves an earlier save of ``name``
    intact.

    Returns:
        The JSONL path.

    Raises:
        OSError: when a file cannot be written (disk full, file-size limit), naming it; nothing was replaced.
        ValueError: when an image cannot be encoded as PNG.
    """
    folder = Path(folder)
    path = folder / f"{name}.jsonl"
    pngs: list[tuple[Path, bytes]] = []
    lines = []
    for i, traj in enumerate(trajectories):
        record = traj.record()
        record["images"] = []
        for k, image in enumerate(traj.images):
            rel = f"images/{name}_{i}_{k}.png"
            ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            if not ok:
                raise ValueError(
                    f"image {k} of trajectory {i} ({np.asarray(image).shape}) cannot be encoded as PNG"
                )
            pngs.append((folder / rel, png.tobytes()))
            record["images"].append(rel)
        lines.append(json.dumps(record) + "\n")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with staged_writes() as stage:
        for target, data in pngs:
            stage(target).write_bytes(data)
        stage(path).write_text("".join(lines))  # the records last: they are what readers look for
    return path


def load_trajectory_records(path: str | Path) -> list[dict[str, Any]]:
    """Read the records written by :func:`save_trajectories`."""
    with Path(path).open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


_COUNTER = itertools.count()


def _temp_sibling(path: Path, kind: str = "tmp") -> Path:
    """A hidden, unique sibling of ``path`` (globs of the final names, like ``checkpoint-*``, never match
    it)."""
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{next(_COUNTER)}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file, or every file under a folder, to disk."""
    files = [path] if not path.is_dir() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_error(path: Path, exc: Exception) -> OSError:
    errno = exc.errno if isinstance(exc, OSError) else None
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
    return OSError(errno, f"could not write {path} ({detail}); nothing was replaced, the previous content is "
                          "unchanged (free disk space and retry)")


def _remove_stale(path: Path) -> None:
    """Clean up after a killed writer of ``path`` (whose process is gone): its temporaries are removed, and a
    folder it had moved aside but not yet replaced (killed between the two renames) is put back."""
    prefix = f".{path.name}."
    for old in sorted(path.parent.glob(f"{prefix}*")):
        kind, _, rest = old.name[len(prefix):].partition("-")
        pid = rest.split("-")[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if kind == "old" and not path.exists():
            os.replace(old, path)
        else:
            _remove(old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextmanager
def staged_writes(*, clean_stale: bool = False) -> Iterator[Callable[[str | Path], Path]]:
    """Write several files or folders all or nothing: ``stage(path)`` returns a temporary path to write
    ``path``'s new content to (a file, or a folder you create); when the block ends without an exception every
    staged temporary is flushed to disk and renamed onto its path, in staging order (stage the file readers
    look for last). An existing folder at a path is replaced whole. ``clean_stale``: first remove what a
    killed writer of the same path left (one directory scan per path: worth it for big folders such as
    checkpoints, not for the thousands of small images of an eval run, whose leftovers are hidden and
    harmless).

    >>> import pathlib, tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with staged_writes() as stage:
    ...     _ = stage(target).write_text("new")
    >>> target.read_text()
    'new'

    Raises:
        OSError: for any exception raised while writing (disk full, a file-size limit, a serializer's I/O
            error such as torch's ``RuntimeError``), with the errno when there is one and a message naming the
            path being written; every temporary is removed and nothing was replaced. A ``KeyboardInterrupt``
            or a kill leaves the old files too.
    """
    staged: list[tuple[Path, Path]] = []

    def stage(path: str | Path) -> Path:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if clean_stale:
            _remove_stale(target)
        tmp = _temp_sibling(target)
        staged.append((tmp, target))
        return tmp

    try:
        yield stage
        for tmp, _ in staged:
            _fsync(tmp)
    except Exception as exc:
        for tmp, _ in staged:
            _remove(tmp)
        raise _write_error(staged[-1][1] if staged else Path("?"), exc) from exc
    except BaseException:
        for tmp, _ in staged:
            _remove(tmp)
        raise
    for tmp, target in staged:
        _replace(tmp, target)


def _replace(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target``; a folder there is first moved aside (a kill between the two renames
    leaves it under a hidden ``.<name>.old-*`` name), then deleted."""
    old = None
    if target.is_dir() and not target.is_symlink():
        old = _temp_sibling(target, "old")
        os.replace(target, old)
    os.replace(tmp, target)
    try:  # make the renames durable too
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems cannot fsync a folder; the data itself is already on disk
        pass
    if old is not None:
        _remove(old)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Write-then-rename for one file or folder: yields the temporary path to write (for a folder, create it);
    see :func:`staged_writes` for when it is renamed and what a failure raises. What a killed writer of
    ``path`` left is cleaned up first (a folder it had moved aside but not replaced is put back).

    >>> import pathlib, tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "ckpt"
    >>> with atomic_path(target) as tmp:
    ...     tmp.mkdir()
    ...     _ = (tmp / "weights.bin").write_bytes(b"1")
    >>> sorted(p.name for p in target.parent.iterdir())
    ['ckpt']
    """
    with staged_writes(clean_stale=True) as stage:
        yield stage(path)


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented JSON to ``path``, write-then-rename (:func:`atomic_path`): a kill or a full
    disk leaves the previous file; raises OSError naming ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2))


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` (one record ending with a newline) to ``path`` and fsync; all or nothing.

    Raises:
        OSError: when the append fails (disk full, a file-size limit), naming ``path``; the file is cut back
            to its size before the call, so it stays byte-identical and ends with a whole line.
    """
    path = Path(path)
    data = line.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # os.write may write only part (e.g. up to a file-size limit), then fail on the rest
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, size)
            raise OSError(
                exc.errno,
                f"could not append to {path} ({exc.strerror}); the file was cut back to its "
                f"{size} bytes before this line (free disk space and resume)",
            ) from exc
    finally:
        os.close(fd)
