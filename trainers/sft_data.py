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
trajectories' own patches go to the file instead. Either way RAM holds 5 bytes per token and ~100 bytes per
trajectory (in a few growing buffers), whatever the image sizes, and the file grows by the images' bytes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
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


class SpillFile:
    """Arrays written to an anonymous temporary file and read back by offset.

    The file is unlinked at creation (``tempfile.TemporaryFile``): nothing is left on disk after
    :meth:`close`, the process's exit or a kill. Reads and writes use ``preadv``/``pwrite`` on the
    descriptor, so they need no file position and no buffering; what the kernel caches of the file is page
    cache, not this process's memory.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        """Args:
        folder: where the file lives (its disk holds the data); None = the system's temporary folder
            (``TMPDIR``) — a RAM disk on some systems (tmpfs), so pass a folder on disk for large sets.

        Raises:
            OSError: if no file can be created in ``folder``.
        """
        self.folder = Path(folder) if folder is not None else Path(tempfile.gettempdir())
        self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - open for the object's lifetime
        self.nbytes = 0
        """Bytes written so far (the file's size)."""

    def put(self, array: np.ndarray) -> int:
        """Append ``array``'s bytes (C order).

        Returns:
            Their offset in the file: :meth:`get` ``(offset, array.dtype, array.shape)`` reads them back.

        Raises:
            OSError: when the write fails (e.g. a full disk), naming the folder; the bytes already written
                stay readable.
        """
        data = memoryview(np.ascontiguousarray(array)).cast("B")
        offset, fd, done = self.nbytes, self._file.fileno(), 0
        try:
            while done < len(data):  # pwrite may write only part (e.g. up to a file-size limit)
                done += os.pwrite(fd, data[done:], offset + done)
        except OSError as exc:
            raise OSError(exc.errno, f"could not write SFT data to a temporary file in {self.folder} "
                                     f"({exc.strerror}); free disk space there or pass another "
                                     "folder") from exc
        self.nbytes += len(data)
        return offset

    def get(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """The array :meth:`put` wrote at ``offset`` (a new, writable array)."""
        out = np.empty(shape, dtype)
        read = os.preadv(self._file.fileno(), [memoryview(out).cast("B")], offset) if out.nbytes else 0
        if read != out.nbytes:  # only a file truncated behind our back gets here
            raise OSError(f"SFT data file in {self.folder}: read {read} of {out.nbytes} bytes at {offset}")
        return out

    def close(self) -> None:
        """Close and thereby delete the file; harmless twice."""
        self._file.close()


class _Column:
    """A growable 1-D array: rows of all trajectories one after the other in one buffer (doubling when
    full), so that the data needs a few large allocations instead of small ones per trajectory — small
    long-lived blocks scattered among the rollouts' freed megabyte tensors kept glibc from reusing or
    returning that heap (+60 MB of RSS at 10,000 trajectories)."""

    def __init__(self, dtype: type[np.generic]) -> None:
        self._data = np.empty(1024, dtype)
        self.size = 0

    def append(self, values: np.ndarray) -> None:
        n = len(values)
        if self.size + n > len(self._data):
            grown = np.empty(max(2 * len(self._data), self.size + n), self._data.dtype)
            grown[: self.size] = self._data[: self.size]
            self._data = grown
        self._data[self.size : self.size + n] = values
        self.size += n

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self._data[: self.size][rows]


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
        self._ids = _Column(np.int32)  # every trajectory's token ids, one after the other
        self._mask = _Column(np.uint8)  # and their loss masks
        self._grids = _Column(np.int64)  # image grids, 3 values each
        self._media = _Column(np.int64)  # per image (or patch block): spill offset, ndim, 3 dims (1-padded)
        self._ends = _Column(np.int64)  # per trajectory: its end in _ids, in _grids (grids) and in _media
        self._media_dtype: np.dtype | None = None  # uint8 images, or the patches' float dtype
        self._digest = hashlib.sha256()
        self._checked = False  # whether a trajectory's patches were compared with the encoder's
        self.policy_tokens = 0
        """Trained tokens (``loss_mask == 1``) over all trajectories."""

    def __len__(self) -> int:
        return self._ends.size // 3

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
                int32, if its images are not uint8 (H, W, C) arrays, or — checked on the first trajectory
                with patches — if the encoder's patches of its images differ from the ones it carries (SFT
                would train on other inputs than the rollout's).
            OSError: if the spill file cannot be written.
        """
        ids = trajectory.input_ids.detach().cpu().numpy()
        if ids.size and (ids.min() < np.iinfo(np.int32).min or ids.max() > np.iinfo(np.int32).max):
            raise ValueError(f"trajectory {trajectory.sample_id}: token ids outside int32")
        grids = trajectory.image_grid_thw
        media = [] if grids is None else self._media_of(trajectory, grids)
        for tensor in (trajectory.input_ids, trajectory.loss_mask, grids):
            if tensor is not None:
                self._digest.update(str(tuple(tensor.shape)).encode())
                self._digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        mask = trajectory.loss_mask.detach().cpu().numpy()
        self._ids.append(ids)
        self._mask.append(mask)
        if grids is not None:
            self._grids.append(grids.detach().cpu().numpy().reshape(-1))
        for array in media:
            shape = array.shape + (1,) * (3 - array.ndim)
            self._media.append(np.array([self.spill.put(array), array.ndim, *shape], dtype=np.int64))
        self._ends.append(np.array([self._ids.size, self._grids.size // 3, self._media.size // 5]))
        self.policy_tokens += int(mask.sum())

    def _media_of(self, trajectory: Trajectory, grids: torch.Tensor) -> list[np.ndarray]:
        """What the spill file keeps of ``trajectory``'s images: the images, or without an encoder its
        patches (checked, see :meth:`add`)."""
        if self.encoder is None:
            if trajectory.pixel_values is None:
                raise ValueError(f"trajectory {trajectory.sample_id} has image grids but no patches, and "
                                 "this dataset has no encoder to make them")
            media = [trajectory.pixel_values.detach().cpu().numpy()]
        else:
            media = [np.asarray(image) for image in trajectory.images]
            if len(media) != len(grids):
                raise ValueError(f"trajectory {trajectory.sample_id} has {len(media)} images but "
                                 f"{len(grids)} image grids")
            if any(image.dtype != np.uint8 or image.ndim != 3 for image in media):
                raise ValueError(f"trajectory {trajectory.sample_id}: images must be uint8 (H, W, C) arrays, "
                                 f"got {[(image.dtype.name, image.shape) for image in media]}")
            if not self._checked and trajectory.pixel_values is not None:
                pixels, remade = self.encoder.encode_images(media)
                if not (torch.equal(remade, grids) and torch.equal(pixels, trajectory.pixel_values)):
                    raise ValueError(f"the processor's patches of trajectory {trajectory.sample_id}'s images "
                                     "differ from the ones the rollout made; SFT would train on other "
                                     "inputs (was it encoded with another processor?)")
                self._checked = True
        if self._media_dtype is None:
            self._media_dtype = media[0].dtype
        if any(array.dtype != self._media_dtype for array in media):
            raise ValueError(f"trajectory {trajectory.sample_id}: patches of dtype {media[0].dtype}, earlier "
                             f"ones {self._media_dtype}")
        return media

    def extend(self, trajectories: Iterable[Trajectory]) -> None:
        """:meth:`add` each of ``trajectories`` in order."""
        for trajectory in trajectories:
            self.add(trajectory)

    def _row(self, index: int) -> tuple[slice, slice, slice]:
        """Where trajectory ``index`` lies in the token, grid and media columns."""
        if not 0 <= index < len(self):
            raise IndexError(f"trajectory {index} of a dataset of {len(self)}")
        ends = self._ends[3 * index : 3 * index + 3]
        starts = self._ends[3 * index - 3 : 3 * index] if index else np.zeros(3, dtype=np.int64)
        return tuple(slice(int(a), int(b)) for a, b in zip(starts, ends))  # type: ignore[return-value]

    def batch(self, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
        """The model batch of the trajectories at ``indices``: what :func:`vgym.trainers.sft.collate` gives
        for the same trajectories, tensor for tensor.

        Args:
            indices: positions in the order the trajectories were added (repeats allowed).
            pad_id: padding id (see :func:`pad_tokens`).

        Returns:
            ``input_ids``, ``attention_mask``, ``loss_mask`` (B, T) and, when any row has images,
            ``pixel_values`` (P, D) and ``image_grid_thw`` (N, 3) in row order.

        Raises:
            IndexError: for an index outside the dataset.
        """
        rows = [self._row(i) for i in indices]
        out = pad_tokens([torch.from_numpy(self._ids[tokens].astype(np.int64)) for tokens, _, _ in rows],
                         [torch.from_numpy(self._mask[tokens].astype(np.int64)) for tokens, _, _ in rows],
                         pad_id)
        grids = [self._grids[slice(3 * g.start, 3 * g.stop)] for _, g, _ in rows if g.stop > g.start]
        if not grids:
            return out
        out["image_grid_thw"] = torch.from_numpy(np.concatenate(grids).reshape(-1, 3))
        media, dtype = [], self._media_dtype
        assert dtype is not None  # set by the first trajectory with images
        for _, _, kept in rows:
            for record in self._media[slice(5 * kept.start, 5 * kept.stop)].reshape(-1, 5):
                offset, ndim, *shape = (int(v) for v in record)
                media.append(self.spill.get(offset, dtype, tuple(shape[:ndim])))
        if self.encoder is None:
            out["pixel_values"] = torch.from_numpy(np.concatenate(media))
            return out
        out["pixel_values"], remade = self.encoder.encode_images(media)
        assert torch.equal(remade, out["image_grid_thw"]), "the processor's grids changed since add()"
        return out

    def close(self) -> None:
        """Delete the spill file; the dataset cannot make batches afterwards. Harmless twice."""
        self.spill.close()
