"""SFT's training set held compactly: token ids and masks in memory, images on disk, patches made per batch.

Contents: :func:`pad_tokens`, :class:`SpillFile`, :class:`SFTDataset`.

A rollout's :class:`~vgym.rollout.trajectory.Trajectory` carries the processor's fp32 patches of its images
(``pixel_values``: at the 224² budget, 256 patches × 1,176 floats = 1.2 MB per Qwen2-VL image, eight times the
uint8 image). Kept for every episode of a training set they made RAM grow by ~2 MB per episode (``vgym
train``: 2.99 GB peak with 768 SFT episodes). :class:`SFTDataset` keeps per episode only its token ids
(int32), loss mask (uint8) and image grids; the images go to an unlinked temporary file (:class:`SpillFile`)
as raw uint8 bytes, and :meth:`SFTDataset.batch` reads a batch's images back and patches them with the
processor (:meth:`~vgym.rollout.chat.ChatEncoder.encode_images`), which gives the rollout's patches bit for
bit (checked on the first trajectory added; the tests check whole batches). Without a processor the
trajectories' own patches go to the file instead. Either way RAM holds ~2 kB per episode of a few hundred
tokens, whatever the image sizes, and the file grows by the images' bytes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vgym.rollout.chat import ChatEncoder
from vgym.rollout.trajectory import Trajectory

__all__ = ["SFTDataset", "SpillFile", "pad_tokens"]


def pad_tokens(input_ids: Sequence[torch.Tensor], loss_masks: Sequence[torch.Tensor],
               pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows of token ids and their loss masks into a batch.

    Args:
        input_ids: per row, (T_b,) token ids.
        loss_masks: per row, (T_b,) 1 on trained tokens.
        pad_id: the id written after each row's end (masked out of attention and loss).

    Returns:
        ``input_ids`` (B, T), ``attention_mask`` (B, T) and ``loss_mask`` (B, T), all int64, T the longest
        row.
    """
    length = max(len(ids) for ids in input_ids)
    batch = len(input_ids)
    ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, length), dtype=torch.long)
    loss_mask = torch.zeros((batch, length), dtype=torch.long)
    for row, (row_ids, row_mask) in enumerate(zip(input_ids, loss_masks)):
        n = len(row_ids)
        ids[row, :n] = row_ids
        attention[row, :n] = 1
        loss_mask[row, :n] = row_mask
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss_mask}


@dataclass(frozen=True, slots=True)
class _ArrayRef:
    """Where :class:`SpillFile` wrote an array: byte offset, dtype and shape."""

    offset: int
    dtype: str
    shape: tuple[int, ...]


class SpillFile:
    """Arrays written to an anonymous temporary file and read back by reference.

    The file is unlinked at creation (``tempfile.TemporaryFile``): nothing is left on disk after
    :meth:`close`, the process's exit or a kill. Reads and writes use ``pread``/``pwrite`` on the descriptor,
    so they need no file position and no buffering; what the kernel caches of the file is page cache, not
    this process's memory.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        """Args:
        folder: where the file lives (its disk holds the data); None = the system's temporary folder
            (``TMPDIR``) — a RAM disk on some systems (tmpfs), so pass a folder on disk for large sets.

        Raises:
            OSError: if no file can be created in ``folder``.
        """
        self.folder = Path(folder) if folder is not None else Path(tempfile.gettempdir())
        self._file = tempfile.TemporaryFile(dir=folder)
        self.nbytes = 0
        """Bytes written so far (the file's size)."""

    def put(self, array: np.ndarray) -> _ArrayRef:
        """Append ``array``'s bytes (C order) and return where they are.

        Raises:
            OSError: when the write fails (e.g. a full disk), naming the folder; the bytes already written
                stay readable.
        """
        data = memoryview(np.ascontiguousarray(array)).cast("B")
        ref = _ArrayRef(self.nbytes, array.dtype.str, tuple(array.shape))
        fd, done = self._file.fileno(), 0
        try:
            while done < len(data):  # pwrite may write only part (e.g. up to a file-size limit)
                done += os.pwrite(fd, data[done:], ref.offset + done)
        except OSError as exc:
            raise OSError(exc.errno, f"could not write SFT data to a temporary file in {self.folder} "
                                     f"({exc.strerror}); free disk space there or pass another "
                                     "folder") from exc
        self.nbytes += len(data)
        return ref

    def get(self, ref: _ArrayRef) -> np.ndarray:
        """The array :meth:`put` wrote at ``ref`` (a new, writable copy)."""
        dtype = np.dtype(ref.dtype)
        size = int(np.prod(ref.shape, dtype=np.int64)) * dtype.itemsize
        data = os.pread(self._file.fileno(), size, ref.offset)
        if len(data) != size:  # only a file truncated behind our back gets here
            raise OSError(f"SFT data file in {self.folder}: read {len(data)} of {size} bytes at {ref.offset}")
        return np.frombuffer(bytearray(data), dtype=dtype).reshape(ref.shape)

    def close(self) -> None:
        """Close and thereby delete the file; harmless twice."""
        self._file.close()


@dataclass(frozen=True, slots=True)
class _Example:
    """One trajectory as :class:`SFTDataset` keeps it."""

    input_ids: np.ndarray
    """(T,) int32."""
    loss_mask: np.ndarray
    """(T,) uint8."""
    image_grid_thw: np.ndarray | None
    """(N, 3) int64, or None without images."""
    media: tuple[_ArrayRef, ...]
    """Its N images (uint8, patched per batch) or, without an encoder, its patches (verbatim)."""


class SFTDataset:
    """An SFT training set whose RAM does not grow with its images (see the module docstring).

    Add trajectories in training order (:meth:`add`, :meth:`extend`; a rollout's can be added as they come and
    then dropped), then read batches by index (:meth:`batch`). :attr:`fingerprint` identifies the data for
    exact resume; it equals the SHA-256 that :class:`~vgym.trainers.sft.SFTTrainer` has always computed over
    its trajectories, so checkpoints written before this class existed resume too.
    """

    def __init__(self, encoder: ChatEncoder | None, *, spill_dir: str | Path | None = None) -> None:
        """Args:
        encoder: the chat encoder of the processor the trajectories were encoded with; batches then patch
            their images with it. None keeps each trajectory's own patches (in the spill file), e.g. for a
            trainer given only a ``pad_id``.
        spill_dir: folder of the spill file (see :class:`SpillFile`); None = the system's temporary folder.

        Raises:
            OSError: if the spill file cannot be created.
        """
        self.encoder = encoder
        self.spill = SpillFile(spill_dir)
        self._examples: list[_Example] = []
        self._digest = hashlib.sha256()
        self._checked = False  # whether a trajectory's patches were compared with the encoder's
        self.policy_tokens = 0
        """Trained tokens (``loss_mask == 1``) over all trajectories."""

    def __len__(self) -> int:
        return len(self._examples)

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of every trajectory's token ids, loss mask and image grid (shapes and bytes as the
        trajectories held them), in order."""
        return self._digest.hexdigest()

    def add(self, trajectory: Trajectory) -> None:
        """Append one trajectory: its tokens and grids are copied, its images (or, without an encoder, its
        patches) written to the spill file; nothing of ``trajectory`` is kept.

        Raises:
            ValueError: if its image grids do not match its images in number, if its token ids do not fit
                int32, or — checked on the first trajectory with patches — if the encoder's patches of its
                images differ from the ones it carries (SFT would train on other inputs than the rollout's).
            OSError: if the spill file cannot be written.
        """
        for tensor in (trajectory.input_ids, trajectory.loss_mask, trajectory.image_grid_thw):
            if tensor is not None:
                self._digest.update(str(tuple(tensor.shape)).encode())
                self._digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        ids = trajectory.input_ids.detach().cpu().numpy()
        if ids.size and (ids.min() < np.iinfo(np.int32).min or ids.max() > np.iinfo(np.int32).max):
            raise ValueError(f"trajectory {trajectory.sample_id}: token ids outside int32")
        grids, media = trajectory.image_grid_thw, ()
        if grids is not None:
            media = self._spill_media(trajectory, grids)
        mask = trajectory.loss_mask.detach().cpu().numpy()
        self._examples.append(_Example(ids.astype(np.int32), mask.astype(np.uint8),
                                       None if grids is None else grids.detach().cpu().numpy().copy(), media))
        self.policy_tokens += int(mask.sum())

    def _spill_media(self, trajectory: Trajectory, grids: torch.Tensor) -> tuple[_ArrayRef, ...]:
        if self.encoder is None:
            if trajectory.pixel_values is None:
                raise ValueError(f"trajectory {trajectory.sample_id} has image grids but no patches, and "
                                 "this dataset has no encoder to make them")
            return (self.spill.put(trajectory.pixel_values.detach().cpu().numpy()),)
        if len(trajectory.images) != len(grids):
            raise ValueError(f"trajectory {trajectory.sample_id} has {len(trajectory.images)} images but "
                             f"{len(grids)} image grids")
        if not self._checked and trajectory.pixel_values is not None:
            pixels, remade = self.encoder.encode_images(trajectory.images)
            if not (torch.equal(remade, grids) and torch.equal(pixels, trajectory.pixel_values)):
                raise ValueError(f"the processor's patches of trajectory {trajectory.sample_id}'s images "
                                 "differ from the ones the rollout made; SFT would train on other inputs "
                                 "(was it encoded with another processor?)")
            self._checked = True
        return tuple(self.spill.put(np.asarray(image)) for image in trajectory.images)

    def extend(self, trajectories: Iterable[Trajectory]) -> None:
        """:meth:`add` each of ``trajectories`` in order."""
        for trajectory in trajectories:
            self.add(trajectory)

    def batch(self, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        """The model batch of the trajectories at ``indices``: what :func:`vgym.trainers.sft.collate` gives
        for the same trajectories, tensor for tensor.

        Args:
            indices: positions in the order the trajectories were added (repeats allowed).
            pad_id: padding id (see :func:`pad_tokens`).

        Returns:
            ``input_ids``, ``attention_mask``, ``loss_mask`` (B, T) and, when any row has images,
            ``pixel_values`` (P, D) and ``image_grid_thw`` (N, 3) in row order.
        """
        rows = [self._examples[i] for i in indices]
        out = pad_tokens([torch.from_numpy(r.input_ids.astype(np.int64)) for r in rows],
                         [torch.from_numpy(r.loss_mask.astype(np.int64)) for r in rows], pad_id)
        grids = [r.image_grid_thw for r in rows if r.image_grid_thw is not None]
        if not grids:
            return out
        media = [self.spill.get(ref) for r in rows for ref in r.media]
        out["image_grid_thw"] = torch.from_numpy(np.concatenate(grids))
        if self.encoder is None:
            out["pixel_values"] = torch.from_numpy(np.concatenate(media))
            return out
        out["pixel_values"], remade = self.encoder.encode_images(media)
        assert torch.equal(remade, out["image_grid_thw"]), "the processor's grids changed since add()"
        return out

    def close(self) -> None:
        """Delete the spill file; the dataset cannot make batches afterwards. Harmless twice."""
        self.spill.close()
