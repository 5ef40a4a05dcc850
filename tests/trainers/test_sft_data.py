"""Tests of trainers/sft_data.py with the tiny Qwen2-VL's real processor: batches patched from the kept uint8
images equal the rollout's eagerly made patches bit for bit (with and without an encoder), the dataset keeps
no patches (RAM holds tokens only; the images sit in an unlinked file), its fingerprint is the one SFT
checkpoints have always stored, and a processor that patches differently or a full disk is reported."""

from __future__ import annotations

import gc
import hashlib
import tracemalloc
import weakref
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_disk_full import _file_size_limit

from vgym.engine.tiny import load_vlm
from vgym.env import VisualToolEnv
from vgym.policies.oracle import OraclePolicy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, rollout
from vgym.rollout.trajectory import Trajectory
from vgym.trainers.sft import collate
from vgym.trainers.sft_data import SFTDataset, SpillFile


def _play(processor, n: int) -> list[Trajectory]:  # type: ignore[no-untyped-def]
    """``n`` episodes of a lazy oracle: about half crop (two images), the rest guess (one image), so batches
    mix rows with different image counts and lengths."""
    specs = [EpisodeSpec("train", i, group_id=i, seed=i) for i in range(n)]
    return rollout(lambda: VisualToolEnv("visual_search"), OraclePolicy(skip_tools=0.5, seed=3),
                   ChatEncoder(processor), specs)


@pytest.fixture(scope="module")
def played(tiny_dir: Path):  # type: ignore[no-untyped-def]
    """(processor, 10 trajectories); read-only."""
    _, processor = load_vlm(tiny_dir)
    data = _play(processor, 10)
    assert {len(t.images) for t in data} == {1, 2}  # both kinds of rows, or the test below proves less
    return processor, data


# Batches: in order, shuffled with a repeat, one row, rows of one image only.
INDICES = [list(range(10)), [7, 2, 9, 2, 0, 5], [4], None]


@pytest.mark.parametrize("with_encoder", [True, False])
def test_batches_equal_the_eagerly_collated_trajectories(played, with_encoder: bool) -> None:
    """Every key of every batch equals what collate makes of the trajectories' own patches: same dtype,
    shape and bits (with the encoder the patches are made anew from the uint8 images)."""
    processor, data = played
    pad = processor.tokenizer.pad_token_id
    dataset = SFTDataset(ChatEncoder(processor) if with_encoder else None)
    dataset.extend(data)
    assert len(dataset) == 10
    one_image = [i for i, t in enumerate(data) if len(t.images) == 1]
    for indices in INDICES:
        indices = indices or one_image
        got = dataset.batch(indices, pad)
        want = collate([data[i] for i in indices], pad)
        assert got.keys() == want.keys() == {"input_ids", "attention_mask", "loss_mask", "pixel_values",
                                             "image_grid_thw"}
        for key in want:
            assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), (indices, key)
    with pytest.raises(IndexError, match="trajectory 10 of a dataset of 10"):
        dataset.batch([0, 10], pad)
    dataset.close()


def test_the_dataset_keeps_no_patches_and_spills_only_the_images(played, tmp_path: Path) -> None:
    """Added trajectories are not kept (their patch tensors are freed once the caller drops them); the
    dataset's own arrays (traced by tracemalloc: numpy registers its allocations) take 5 bytes per token plus
    under 1 kB per row, less than 1 % of the patches' bytes; the spill file holds exactly the uint8 images,
    and it is never visible in its folder."""
    processor, _ = played
    fresh = _play(processor, 6)  # trajectories this test may drop
    patch_bytes = sum(t.pixel_values.numel() * t.pixel_values.element_size() for t in fresh)
    image_bytes = sum(im.nbytes for t in fresh for im in t.images)
    tokens = sum(len(t.input_ids) for t in fresh)
    refs = [weakref.ref(t.pixel_values) for t in fresh]
    dataset = SFTDataset(ChatEncoder(processor), spill_dir=tmp_path)
    tracemalloc.start()
    try:
        dataset.extend(fresh)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del fresh
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert held < 0.01 * patch_bytes, (held, patch_bytes)
    # int32 ids + uint8 mask: 5 bytes per token; per row, the array and reference objects: < 1 kB
    assert held < 5 * tokens + 1024 * 6, (held, tokens)
    assert dataset.spill.nbytes == image_bytes
    assert list(tmp_path.iterdir()) == []  # unlinked at creation
    dataset.close()
    dataset.close()  # harmless twice


def test_fingerprint_is_the_one_sft_checkpoints_store(played) -> None:
    """The SHA-256 over each trajectory's input_ids, loss_mask and image_grid_thw (shape, then int64 bytes),
    as SFTTrainer.data_fingerprint has computed it since checkpoints carry it; order matters."""
    processor, data = played
    digest = hashlib.sha256()
    for traj in data:
        for tensor in (traj.input_ids, traj.loss_mask, traj.image_grid_thw):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.numpy().tobytes())
    dataset, reordered = SFTDataset(ChatEncoder(processor)), SFTDataset(ChatEncoder(processor))
    dataset.extend(data)
    reordered.extend(data[::-1])
    assert dataset.fingerprint == digest.hexdigest()
    assert reordered.fingerprint != dataset.fingerprint


def test_patches_that_the_processor_would_not_make_are_refused(played) -> None:
    """One patch value off by a float32 ulp in the first trajectory: the dataset refuses it (it would train
    on other pixels than the rollout's) instead of silently re-patching."""
    processor, data = played
    pixels = data[0].pixel_values.clone()
    pixels[3, 5] = torch.nextafter(pixels[3, 5], torch.tensor(10.0))
    with pytest.raises(ValueError, match="differ from the ones the rollout made"):
        SFTDataset(ChatEncoder(processor)).add(replace(data[0], pixel_values=pixels))
    with pytest.raises(ValueError, match="has 1 images but 2 image grids"):
        bad = replace(data[0], images=data[0].images[:1],
                      image_grid_thw=torch.cat([data[0].image_grid_thw[:1]] * 2))
        SFTDataset(ChatEncoder(processor)).add(bad)


def test_a_full_disk_while_spilling_names_the_folder(played, tmp_path: Path) -> None:
    """A real file-size limit (EFBIG, as ENOSPC on a full disk) stops the spill write with an OSError naming
    the folder; what was written before stays readable."""
    spill = SpillFile(tmp_path)
    small = torch.arange(12, dtype=torch.uint8).numpy().reshape(2, 2, 3)
    ref = spill.put(small)
    big = played[1][0].images[0]  # 150 kB
    with _file_size_limit(64 * 1024), pytest.raises(OSError, match=f"temporary file in {tmp_path}"):
        spill.put(big)
    assert (spill.get(ref, small.dtype, small.shape) == small).all()
    spill.close()
