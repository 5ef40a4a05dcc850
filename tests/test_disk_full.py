"""Fault tests (issue 9), full disk: writes that hit a real file-size limit (``RLIMIT_FSIZE`` with ``SIGXFSZ``
ignored, so ``write`` fails with ``EFBIG``) raise an ``OSError`` naming the file, leave the earlier files
byte-identical and leave no temporary file behind: trajectories, eval records and reports, GRPO and SFT
checkpoints; a writer killed between its two renames loses nothing. Hangs, crashes and
kills: ``test_faults.py``.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_faults import GRPO_FAST

from vgym.env import VisualToolEnv


@contextlib.contextmanager
def _file_size_limit(nbytes: int):  # type: ignore[no-untyped-def]
    """No file this process writes can grow past ``nbytes``: with SIGXFSZ ignored, the write that would pass
    it fails with EFBIG, as a write fails with ENOSPC on a full disk (the kernel's own check, nothing
    mocked)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _snapshot(folder) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """Every file under ``folder`` (hidden ones included) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _trajectories(seed: int, side: int, text: int) -> list:  # type: ignore[type-arg]
    """Two trajectories with one random ``side``-pixel image each and ``text`` characters of turn text."""
    import torch

    from vgym.rollout.trajectory import Trajectory

    rng = np.random.default_rng(seed)
    empty = torch.zeros(0, dtype=torch.long)
    return [Trajectory(f"s{i}", i, "visual_search", empty, empty, torch.zeros(0),
                       [rng.integers(0, 256, (side, side, 3), dtype=np.uint8)], None, None,
                       [{"text": "x" * text, "observation": "", "tool_calls": []}], 1.0, {"accuracy": 1.0},
                       "a")
            for i in range(2)]


@pytest.mark.parametrize("fails_on, side, text", [("png", 64, 10), ("jsonl", 4, 40_000)])
def test_disk_full_while_saving_trajectories_keeps_the_earlier_save(tmp_path: Path, fails_on: str, side: int,
                                                                     text: int) -> None:
    from vgym.rollout.trajectory import save_trajectories

    save_trajectories(_trajectories(0, 64, 10), tmp_path, "t")
    before = _snapshot(tmp_path)
    # png: a 64x64 noise PNG (~12 KB) passes the 4 KB limit; jsonl: the images fit, the 80 KB of records do
    # not, so the new images were written (as temporaries) before the failure and must not replace the old
    # ones.
    written = r"images/t_0_0\.png" if fails_on == "png" else r"t\.jsonl"
    with _file_size_limit(4096), pytest.raises(OSError, match=r"could not write .*" + written) as err:
        save_trajectories(_trajectories(1, side, text), tmp_path, "t")
    assert err.value.errno == errno.EFBIG
    assert _snapshot(tmp_path) == before  # byte-identical, and no temporary file left


def test_disk_full_during_evaluation_keeps_whole_lines_and_resumes(tmp_path: Path) -> None:
    import json

    from vgym.eval.evaluate import EvalConfig, run_eval

    base = dict(policy="oracle", suite=("visual_search",), k=1, difficulties=(0,))  # oracle: no failure files
    run, path = tmp_path / "run", tmp_path / "run" / "episodes.jsonl"
    run_eval(EvalConfig(**base, n=4), run)
    old = path.read_bytes()
    line = len(old) // 4
    with _file_size_limit(len(old) + line + line // 2), pytest.raises(
            OSError, match=r"could not append to .*episodes\.jsonl") as err:
        run_eval(EvalConfig(**base, n=8), run)  # one more line fits, the next does not
    assert err.value.errno == errno.EFBIG
    now = path.read_bytes()
    assert now.startswith(old) and now.endswith(b"\n") and now.count(b"\n") == 5  # rolled back to whole lines
    assert not [p for p in run.rglob(".*")]
    full = run_eval(EvalConfig(**base, n=8), run)  # space again: the run resumes
    assert full == run_eval(EvalConfig(**base, n=8), tmp_path / "straight")
    # A report that cannot be written leaves the previous one.
    report = (run / "report.json").read_bytes()
    with _file_size_limit(len(report) // 2), pytest.raises(OSError, match=r"could not write .*report\.json"):
        run_eval(EvalConfig(**base, n=8), run)
    assert (run / "report.json").read_bytes() == report and not [p for p in run.rglob(".*")]
    assert len(path.read_text().splitlines()) == 8 and json.loads(report)["overall"]["episodes"] == 8


@pytest.mark.parametrize("trainer_kind", ["grpo", "sft"])
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tiny_dir: Path, tmp_path: Path,
                                                                     trainer_kind: str) -> None:
    import functools

    from vgym.app.pipeline import collect
    from vgym.engine.tiny import load_vlm
    from vgym.policies.oracle import OraclePolicy
    from vgym.rollout.chat import ChatEncoder
    from vgym.trainers.grpo import GRPOTrainer, hf_policy
    from vgym.trainers.grpo_config import GRPOConfig
    from vgym.trainers.sft import SFTConfig, SFTTrainer

    def make():  # type: ignore[no-untyped-def]
        model, processor = load_vlm(tiny_dir)
        env_fn = functools.partial(VisualToolEnv, "visual_search")
        if trainer_kind == "grpo":
            config = GRPOConfig(**{**GRPO_FAST, "steps": 3})
            return GRPOTrainer(model, processor, hf_policy(model, processor, config), env_fn, config)
        data = collect(env_fn, OraclePolicy(), ChatEncoder(processor), "train", 4, batch_size=4,
                       progress=lambda *a: None, stage="")
        return SFTTrainer(model, data, SFTConfig(steps=3, batch_size=2),
                          pad_id=processor.tokenizer.pad_token_id)

    trainer = make()
    folder = tmp_path / "checkpoint"
    trainer.save(folder)
    before = _snapshot(tmp_path)
    trainer.step()  # new weights, so a torn write would show
    with _file_size_limit(256 * 1024), pytest.raises(OSError, match=f"could not write {folder}"):
        trainer.save(folder)  # the weights (~3 MB) pass the limit
    assert _snapshot(tmp_path) == before
    fresh = make()
    fresh.load(folder)
    assert fresh.step_count == 0


def test_a_writer_killed_between_its_two_renames_loses_nothing(tmp_path: Path) -> None:
    from vgym.rollout.trajectory import atomic_path

    # Replacing a folder moves the old one aside, then renames the new one in; a kill between the two leaves
    # only the hidden old copy. The next write of the path puts it back before anything else, so even when
    # that write fails (here: a full disk) the old content is where it was.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    aside = tmp_path / f".ckpt.old-{dead.pid}-0"
    aside.mkdir()
    (aside / "weights.bin").write_bytes(b"old weights")
    with _file_size_limit(4), pytest.raises(OSError, match="could not write .*ckpt"):
        with atomic_path(tmp_path / "ckpt") as tmp:
            tmp.mkdir()
            (tmp / "weights.bin").write_bytes(b"new weights")
    assert _snapshot(tmp_path) == {"ckpt/weights.bin": b"old weights"}
