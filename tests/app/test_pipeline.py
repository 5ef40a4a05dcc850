"""vgym/app/pipeline.py's SFT data: built batch by batch as the episodes are played (so they never all sit in
memory), it is the data :func:`collect` returns whole — same episodes, the lazy teacher's random draws
included, same order, same model batches."""

from __future__ import annotations

from pathlib import Path

import torch

from vgym.app.pipeline import collect, collect_sft_data
from vgym.env import VisualToolEnv
from vgym.policies.oracle import OraclePolicy
from vgym.rollout.chat import ChatEncoder
from vgym.trainers.sft import collate
from vgym.trainers.sft_data import SFTDataset


def test_sft_data_built_batch_by_batch_is_collects_data(tiny, tmp_path: Path) -> None:
    """11 episodes in lockstep batches of 4 (the last one short) with a teacher that skips the tool at random:
    the dataset's fingerprint and every batch equal those of collect's trajectories, the kept head is their
    first 3 without patches, progress counts every episode, and the spill file is invisible in its folder."""
    _, processor = tiny
    encoder = ChatEncoder(processor)
    env_fn = lambda: VisualToolEnv("visual_search")
    whole = collect(env_fn, OraclePolicy(skip_tools=0.5, seed=5), encoder, "train", 11, batch_size=4,
                    progress=lambda *a: None, stage="")
    reported: list[tuple[str, int, int]] = []
    dataset, head = collect_sft_data(env_fn, OraclePolicy(skip_tools=0.5, seed=5), encoder, "train", 11,
                                     batch_size=4, progress=lambda *a: reported.append(a), stage="data",
                                     spill_dir=tmp_path, keep=3)
    assert len({len(t.images) for t in whole}) == 2  # the teacher's draws decided something
    whole_data = SFTDataset(encoder)
    whole_data.extend(whole)
    assert len(dataset) == 11 and dataset.fingerprint == whole_data.fingerprint
    pad = processor.tokenizer.pad_token_id
    for indices in (list(range(11)), [10, 3, 8]):
        got, want = dataset.batch(indices, pad), collate([whole[i] for i in indices], pad)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert [t.sample_id for t in head] == [t.sample_id for t in whole[:3]]
    assert all(h.pixel_values is None and torch.equal(h.input_ids, t.input_ids)
               and all((a == b).all() for a, b in zip(h.images, t.images)) for h, t in zip(head, whole))
    assert reported == [("data", k, 11) for k in range(1, 12)]
    assert list(tmp_path.iterdir()) == []
    dataset.close()
