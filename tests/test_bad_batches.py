"""Bad records among good ones (issue 9): a vgym JSONL dataset whose records name a truncated PNG, a truncated
MP4 and a missing file, through the loader (``vgym.tasks.local_data``), ``vgym.rollout.loop.rollout`` in every
mode, the env's video tools mid-episode, GRPO and ``vgym eval``.

Contents:

- :data:`RECORDS`, :data:`BAD_RECORDS` and the ``mixed_root`` fixture: the dataset (7 records, 3 bad).
- ``test_loading_keeps_every_good_record``: loading decodes nothing; each bad sample raises
  :class:`~vgym.errors.MediaError` naming its record and file, every good one loads.
- :data:`PLANS` and ``test_a_rollout_loses_only_the_bad_episodes``: lockstep, async, threads and Ray rollouts
  return every spec once, the good episodes identical to a rollout without the bad records, each bad one a
  flagged ``sample_error`` trajectory logged with its file.
- ``test_a_video_broken_mid_episode_is_an_error_observation``: a clip cut on disk after reset is a tool error
  observation naming the file; the episode goes on.
- ``test_grpo_trains_on_the_good_samples_and_counts_the_bad`` and
  ``test_eval_scores_a_bad_sample_zero_and_the_rest_as_usual``: GRPO drops and counts the bad groups; eval
  scores a bad sample 0 with its file named.

The contract: one bad record costs exactly its own episode, in every rollout mode. Shared builders live in
``tests/media_fixtures.py``.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from media_fixtures import BACKENDS, PNG, VFR_MS, jpeg_bytes, noise, png_bytes, smooth, write_clips

import vgym  # noqa: F401  (registers the tools and tasks)
from vgym.env import VisualToolEnv
from vgym.errors import MediaError
from vgym.tasks.local_data import VgymJsonlConfig, VgymJsonlTask


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good clips (``cfr``, ``vfr``, ``one``) and broken ones, each named after what is wrong with it."""
    return write_clips(tmp_path_factory.mktemp("clips"))


RECORDS = [("good_png", ["a.png"], None), ("bad_png", ["cut.png"], None), ("good_jpeg", ["b.jpg"], None),
           ("bad_video", [], "cut.mp4"), ("good_video", [], "clip.mp4"),
           ("missing", ["a.png", "gone.png"], None), ("vfr_video", [], "vfr.mp4")]
BAD_RECORDS = {"bad_png": "cut.png", "bad_video": "cut.mp4", "missing": "gone.png"}


@pytest.fixture
def mixed_root(tmp_path: Path, clips: dict[str, Path]) -> Path:
    """A vgym JSONL dataset (test split) whose records 1, 3 and 5 name a truncated PNG, a truncated MP4 and a
    missing file."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "a.png").write_bytes(png_bytes(noise(40, 48, 25)))
    (root / "b.jpg").write_bytes(jpeg_bytes(smooth(32, 32, 26)))
    (root / "cut.png").write_bytes(PNG[: len(PNG) // 3])
    for name, source in (("cut.mp4", "truncated_index"), ("clip.mp4", "cfr"), ("vfr.mp4", "vfr")):
        (root / name).write_bytes(clips[source].read_bytes())
    lines = [{"id": rid, "question": "What is shown?", "answer": "noise", "answer_type": "exact",
              "images": images, **({"video": video} if video else {})} for rid, images, video in RECORDS]
    (root / "data.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return root


def test_loading_keeps_every_good_record(mixed_root: Path) -> None:
    # decodes nothing: the bad files do not matter yet
    task = VgymJsonlTask(VgymJsonlConfig(root=str(mixed_root)))
    assert [r.id for r in task.split_records("test")] == [rid for rid, _, _ in RECORDS]
    for index, (rid, images, video) in enumerate(RECORDS):
        if rid in BAD_RECORDS:
            message = rf"vgym_jsonl record '{rid}': .*{BAD_RECORDS[rid]}"
            with pytest.raises(MediaError, match=message) as caught:
                task.sample("test", index, 0)
            assert caught.value.sample_id == f"vgym_jsonl/{rid}"
            assert caught.value.path == str(mixed_root / BAD_RECORDS[rid])
        else:
            sample = task.sample("test", index, 0)
            assert sample.id == f"vgym_jsonl/{rid}" and len(sample.images) == (len(images) or 4)
    vfr = task.sample("test", 6, 0).metadata["video"]  # overview frames at their true presentation times:
    # duration 1.6 + 1 / (200/41 average fps) = 1.805 s; centres of 4 slices 0.226, 0.677, 1.128, 1.579
    # s -> the frames starting nearest: 0.240 (3), 0.700 (4), 1.500 (6), 1.600 (7)
    assert vfr["frame_indices"] == [3, 4, 6, 7]
    assert vfr["frame_times"] == [VFR_MS[i] / 1000 for i in (3, 4, 6, 7)]


def _content(t: Any) -> tuple:
    """What must not change about a good episode when bad ones share its batch."""
    return (t.sample_id, t.group_id, t.input_ids.tolist(), t.loss_mask.tolist(), t.reward, t.answer,
            t.num_turns, t.pixel_values.sum().item() if t.pixel_values is not None else None)


@pytest.fixture(scope="module")
def processor(tiny_dir):  # type: ignore[no-untyped-def]
    from vgym.engine.tiny import load_vlm

    return load_vlm(tiny_dir)[1]


PLANS = [("lockstep", "local", 0), ("async", "local", 0), ("lockstep", "local", 2), ("async", "local", 2),
         # starting Ray and its worker: most of the time
         pytest.param("async", "ray", 0, marks=pytest.mark.slow)]
"""(mode, parallel, threads) of :func:`vgym.rollout.loop.rollout`: inline, a thread pool, a Ray worker."""


@pytest.mark.parametrize(("mode", "parallel", "threads"), PLANS)
def test_a_rollout_loses_only_the_bad_episodes(mixed_root: Path, processor: Any,
                                               caplog: pytest.LogCaptureFixture, mode: str, parallel: str,
                                               threads: int) -> None:
    """Two passes over the 7 records, 4 in flight: every spec comes back once, in order; the good episodes
    equal a rollout without the bad records; each bad one is a flagged failure, logged with its file."""
    from vgym.policies.oracle import OraclePolicy
    from vgym.rollout.chat import ChatEncoder
    from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout

    env_fn = functools.partial(VisualToolEnv, "vgym_jsonl", task_config={"root": str(mixed_root)},
                               split="test")
    good = [i for i, (rid, _, _) in enumerate(RECORDS) if rid not in BAD_RECORDS]
    good_specs = [EpisodeSpec("test", i, group_id=i, seed=i) for i in good]
    reference = {RECORDS[i][0]: _content(t)
                 for i, t in zip(good, rollout(env_fn, OraclePolicy(), ChatEncoder(processor), good_specs))}
    n = len(RECORDS)
    specs = [EpisodeSpec("test", i % n, group_id=i % n, seed=i % n) for i in range(2 * n)]
    ray = pytest.importorskip("ray") if parallel == "ray" else None
    started = ray is not None and not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finished: list[str] = []
    try:
        with caplog.at_level(logging.WARNING, "vgym.rollout.loop"):
            settings = RolloutConfig(batch_size=4, mode=mode, parallel=parallel, num_workers=1,
                                     threads=threads)
            trajectories = rollout(env_fn, OraclePolicy(), ChatEncoder(processor), specs, settings,
                                   on_episode=lambda t: finished.append(t.sample_id))
    finally:
        if started:
            ray.shutdown()
    assert [t.sample_id for t in trajectories] == [f"vgym_jsonl/{rid}" for rid, _, _ in RECORDS] * 2
    assert sorted(finished) == sorted(t.sample_id for t in trajectories)  # each reported once
    for position, t in enumerate(trajectories):
        rid = RECORDS[position % n][0]
        if rid not in BAD_RECORDS:
            assert _content(t) == reference[rid] and t.reward == 1.0 and t.truncated_reason is None
            continue
        path = str(mixed_root / BAD_RECORDS[rid])
        assert t.truncated and not t.terminated and t.reward == 0.0 and t.answer is None
        assert t.truncated_reason.startswith(f"sample_error: vgym_jsonl record '{rid}': ")
        assert path in t.truncated_reason
        assert t.input_ids.numel() == t.loss_mask.numel() == t.logprobs.numel() == 0
        assert t.images == [] and not t.turns
        json.dumps(t.record())  # still a valid trajectory record
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "vgym.rollout.loop" and r.levelno == logging.WARNING]
    assert len(warnings) == 2 * len(BAD_RECORDS)
    assert all(any(str(mixed_root / f) in w for f in BAD_RECORDS.values()) for w in warnings)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_video_broken_mid_episode_is_an_error_observation(mixed_root: Path, clips: dict[str, Path],
                                                            backend: str) -> None:
    """The clip is cut on disk after reset (the reader cache sees the new size): ``step`` returns the tool's
    error for the model, naming the file, and the episode goes on to its answer."""
    env = VisualToolEnv("vgym_jsonl", task_config={"root": str(mixed_root)}, split="test",
                        tools=("get_frame", "sample_frames"),
                        tool_runtime={"backends": {"get_frame": backend}})
    try:
        env.reset(options={"index": 4})  # good_video: its overview frames decode
        (mixed_root / "clip.mp4").write_bytes(clips["truncated"].read_bytes())
        call = env.protocol.format_tool_call("get_frame", {"t_s": 0.5})
        obs, reward, terminated, truncated, info = env.step(call)
        assert not (terminated or truncated) and reward == 0
        assert "Error:" in obs["text"] and "could not be read with" in obs["text"]
        assert "(file clip.mp4)" in obs["text"]
        assert info["tool_calls"][0]["ok"] is False and not obs["images"]
        *_, terminated, truncated, _ = env.step("<answer>noise</answer>")
        assert terminated and not truncated
    finally:
        env.close()


def test_grpo_trains_on_the_good_samples_and_counts_the_bad(mixed_root: Path, tiny: Any) -> None:
    """A GRPO step over records 0..3 (records 1 and 3 are bad): the bad groups are dropped and counted, the
    step trains on the good ones; a step whose every sample is bad fails with a clear error naming the
    file."""
    from vgym.errors import VgymError
    from vgym.trainers.grpo import GRPOTrainer, hf_policy
    from vgym.trainers.grpo_config import GRPOConfig

    model, processor = tiny
    env_fn = functools.partial(VisualToolEnv, "vgym_jsonl", task_config={"root": str(mixed_root)},
                               split="test", tools=())
    cfg = GRPOConfig(num_generations=2, prompts_per_step=4, max_new_tokens=4, steps=1, split="test")
    trainer = GRPOTrainer(model, processor, hf_policy(model, processor, cfg), env_fn, cfg)
    trajs, metrics = trainer.collect()
    assert metrics["rollout/sample_errors"] == 4.0  # 2 bad records x 2 generations
    assert sorted({t.sample_id for t in trajs}) == ["vgym_jsonl/good_jpeg", "vgym_jsonl/good_png"]
    assert all(t.input_ids.numel() > 0 for t in trajs)
    bad_cfg = GRPOConfig(num_generations=2, prompts_per_step=1, max_new_tokens=4, steps=1, split="test",
                         data_offset=1)
    bad_only = GRPOTrainer(model, processor, hf_policy(model, processor, bad_cfg), env_fn, bad_cfg)
    with pytest.raises(VgymError, match=r"no sample of the step could be loaded .*cut\.png"):
        bad_only.collect()


def test_eval_scores_a_bad_sample_zero_and_the_rest_as_usual(mixed_root: Path, tmp_path: Path) -> None:
    """``vgym eval`` with the oracle (the text-only path) over the 7 records: each bad one is recorded as a
    failure naming its file, every good one scores 1. The report counts the bad ones as episodes that could
    not run, apart from the scores (4 good of 4 scored); ``count_errors_as_failures`` scores them 0."""
    from vgym.eval.evaluate import EvalConfig, run_eval

    config = EvalConfig(policy="oracle", suite=("vgym_jsonl",), n=len(RECORDS),
                        task_config={"root": str(mixed_root)})
    report = run_eval(config, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(len(RECORDS)))
    for line in lines:
        rid = RECORDS[line["index"]][0]
        if rid in BAD_RECORDS:
            assert line["accuracy"] == 0.0 and str(mixed_root / BAD_RECORDS[rid]) in line["truncated_reason"]
        else:
            assert line["accuracy"] == 1.0 and line["truncated_reason"] is None
    assert report["overall"]["avg_at_k"] == 1.0 and report["overall"]["episodes"] == 4
    assert report["overall"]["could_not_run"] == len(BAD_RECORDS) == 3
    config.count_errors_as_failures = True  # an output-only field: the folder resumes, the report is rebuilt
    counted = run_eval(config, tmp_path / "run")
    assert counted["overall"]["avg_at_k"] == pytest.approx(4 / 7) and counted["overall"]["could_not_run"] == 3
