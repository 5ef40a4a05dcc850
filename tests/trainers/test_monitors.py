"""Tests of trainers/monitors.py and trainers/reporters.py: rollout metrics on hand-built trajectories, the
CSV log (round trip, new keys, resume), reporter construction, and the tool-collapse / LLD / entropy alarms on
synthetic metric streams."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vgym.errors import InvalidConfigError, UnknownNameError
from vgym.rollout.trajectory import Trajectory
from vgym.trainers.monitors import AlarmConfig, AlarmMonitor, rollout_metrics
from vgym.trainers.reporters import (
    REPORTERS,
    CSVReporter,
    Reporter,
    TensorBoardReporter,
    make_reporters,
    read_metrics_csv,
)

# -----------------------------------------------------------------------------------------------
# rollout_metrics


def _call(name: str, ok: bool) -> dict[str, Any]:
    return {
        "turn": 0,
        "name": name,
        "arguments": {},
        "ok": ok,
        "error": None if ok else "bad",
        "latency_s": 0.0,
        "image_indices": [],
        "backend": None,
        "cache_hit": False,
    }


def _traj(group: int, reward: float, parts: dict[str, float], calls_per_turn: list[list[dict[str, Any]]],
          policy_tokens: int, *, truncated: bool = False) -> Trajectory:
    """A trajectory with a 4-token prompt followed by ``policy_tokens`` policy tokens."""
    n = 4 + policy_tokens
    mask = torch.tensor([0] * 4 + [1] * policy_tokens)
    return Trajectory(
        sample_id=f"s{group}", group_id=group, task="visual_search", input_ids=torch.arange(n),
        loss_mask=mask, logprobs=torch.zeros(n), images=[np.zeros((2, 2, 3), np.uint8)], pixel_values=None,
        image_grid_thw=None, turns=[{"text": "", "observation": "", "tool_calls": c} for c in calls_per_turn],
        reward=reward, reward_parts=parts, answer=None if truncated else "a", terminated=not truncated,
        truncated=truncated, truncated_reason="max_turns" if truncated else None,
    )


@pytest.fixture
def batch() -> list[Trajectory]:
    """Two GRPO groups of two episodes; the expected metrics are worked out by hand in the test."""
    return [
        # group 0: solved after one good crop (2 turns, 5 policy tokens)
        _traj(
            0,
            1.0,
            {"accuracy": 1.0, "format": 1.0, "tool": 1.0, "total": 1.0},
            [[_call("crop", True)], []],
            5,
        ),
        # group 0: one turn, a failed crop and a good OCR, wrong answer
        _traj(
            0,
            0.2,
            {"accuracy": 0.0, "format": 1.0, "tool": 1.0, "total": 0.2},
            [[_call("crop", False), _call("ocr", True)]],
            3,
        ),
        # group 1: three turns, each calling a tool that does not exist, truncated
        _traj(
            1,
            0.0,
            {"accuracy": 0.0, "format": 0.0, "tool": 0.0, "total": 0.0},
            [[_call("zoom", False)]] * 3,
            7,
            truncated=True,
        ),
        # group 1: answers at once, no "tool" part at all (counts as 0)
        _traj(1, 0.0, {"accuracy": 0.0, "format": 1.0, "total": 0.0}, [[]], 1),
    ]


def test_rollout_metrics_hand_computed(batch: list[Trajectory]) -> None:
    m = rollout_metrics(batch)
    expected = {
        "rollout/reward": (1.0 + 0.2 + 0 + 0) / 4,
        "rollout/accuracy": 1 / 4,
        "rollout/format": 3 / 4,
        "rollout/tool_reward": 2 / 4,
        "rollout/tool_calls_per_episode": (1 + 2 + 3 + 0) / 4,
        "rollout/tool_error_rate": (1 + 3) / 6,  # the failed crop and the three unknown-tool calls
        "rollout/truncated_rate": 1 / 4,
        "rollout/turns": (2 + 1 + 3 + 1) / 4,
        "rollout/policy_tokens": (5 + 3 + 7 + 1) / 4,
        "rollout/zero_std_groups": 1 / 2,  # group 0 has rewards {1.0, 0.2}; group 1 has {0.0, 0.0}
        "rollout/episodes": 4.0,
        "tool/crop/calls": 2 / 4,
        "tool/crop/error_rate": 1 / 2,
        "tool/ocr/calls": 1 / 4,
        "tool/ocr/error_rate": 0.0,
        "tool/_unknown/calls": 3 / 4,  # "zoom" is not a registered tool, so it gets no column of its own
        "tool/_unknown/error_rate": 1.0,
    }
    assert m.keys() == expected.keys()
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key
    assert all(type(v) is float for v in m.values())


def test_rollout_metrics_edge_cases(batch: list[Trajectory]) -> None:
    # One episode without tool calls: error rate 0 by definition, no tool/ keys; a singleton group is
    # zero-std.
    m = rollout_metrics(batch[3:])
    assert m["rollout/tool_error_rate"] == 0.0 and m["rollout/zero_std_groups"] == 1.0
    assert not [k for k in m if k.startswith("tool/")]
    # Group 1 alone (equal rewards) is zero-std; group 0 alone is not.
    assert rollout_metrics(batch[2:])["rollout/zero_std_groups"] == 1.0
    assert rollout_metrics(batch[:2])["rollout/zero_std_groups"] == 0.0
    with pytest.raises(ValueError, match="empty batch"):
        rollout_metrics([])


# ------------------------------------------------------------------------------------------------------ CSV
# log


def test_csv_round_trip_new_keys_and_exact_floats(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.csv"
    with CSVReporter(path) as rep:
        rep.log(1, {"loss/pg": 0.1 + 0.2, "rollout/reward": 1 / 3})
        rep.log(2, {"loss/pg": -1e-300, "rollout/reward": float("inf")})
        rep.log(3, {"rollout/reward": 0.5, "tool/crop/calls": 2.0, "loss/kl": float("nan")})  # two new keys
    with path.open(newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["step", "loss/pg", "rollout/reward", "tool/crop/calls", "loss/kl"]
    rows = read_metrics_csv(path)
    assert rows[:2] == [  # bit-exact floats; earlier rows have no cell for later keys
        {"step": 1.0, "loss/pg": 0.1 + 0.2, "rollout/reward": 1 / 3},
        {"step": 2.0, "loss/pg": -1e-300, "rollout/reward": float("inf")},
    ]
    assert rows[2].keys() == {"step", "rollout/reward", "tool/crop/calls", "loss/kl"}
    assert math.isnan(rows[2]["loss/kl"]) and rows[2]["tool/crop/calls"] == 2.0


def test_csv_resume_appends_and_drops_redone_steps(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    with CSVReporter(path) as rep:
        for step in range(1, 5):
            rep.log(step, {"loss/pg": float(step)})
    # Resume with no step given: every earlier row stays, new rows (and a new key) are appended.
    with CSVReporter(path) as rep:
        rep.log(5, {"loss/pg": 5.0, "optim/lr": 0.1})
    assert [r["step"] for r in read_metrics_csv(path)] == [1, 2, 3, 4, 5]
    assert read_metrics_csv(path)[0] == {"step": 1.0, "loss/pg": 1.0}
    # The run crashed after logging step 5 but its last checkpoint is step 2: steps 3..5 are redone.
    with CSVReporter(path, resume_step=2) as rep:
        rep.log(3, {"loss/pg": 30.0})
    rows = read_metrics_csv(path)
    assert [(r["step"], r["loss/pg"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    with path.open(newline="") as fh:
        assert next(csv.reader(fh)) == ["step", "loss/pg", "optim/lr"]  # the header survives the filtering


def test_csv_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss/pg\n1,0.5\n2,0.2")  # killed while writing row 2
    with CSVReporter(path) as rep:
        rep.log(2, {"loss/pg": 0.25})
    assert read_metrics_csv(path) == [{"step": 1.0, "loss/pg": 0.5}, {"step": 2.0, "loss/pg": 0.25}]


def test_csv_misuse(tmp_path: Path) -> None:
    rep = CSVReporter(tmp_path / "m.csv")
    with pytest.raises(ValueError, match="index column"):
        rep.log(1, {"step": 1.0})
    rep.close()
    rep.close()  # closing twice is harmless
    with pytest.raises(ValueError, match="closed"):
        rep.log(1, {"loss/pg": 1.0})


# -------------------------------------------------------------------------------------------- reporter
# factory


def test_make_reporters_none_and_csv(tmp_path: Path) -> None:
    assert make_reporters(["none"], tmp_path) == [] and make_reporters("none", tmp_path) == []
    reps = make_reporters("csv", tmp_path)  # a bare string is one name, not a list of letters
    assert len(reps) == 1 and isinstance(reps[0], CSVReporter) and reps[0].path == tmp_path / "metrics.csv"
    reps[0].log(0, {"loss/pg": 1.0})
    reps[0].close()
    assert read_metrics_csv(tmp_path / "metrics.csv") == [{"step": 0.0, "loss/pg": 1.0}]


def test_make_reporters_bad_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'csv'"):
        make_reporters(["cvs"], tmp_path)
    with pytest.raises(InvalidConfigError, match="distinct"):
        make_reporters(["csv", "csv"], tmp_path)
    with pytest.raises(InvalidConfigError, match=r"\['none'\]"):
        make_reporters(["none", "csv"], tmp_path)
    assert not (tmp_path / "metrics.csv").exists()  # nothing is created before every name checks out


@pytest.mark.parametrize("name", REPORTERS.names())
def test_every_registered_reporter_builds_or_names_its_package(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each reporter either works (logs a row, closes twice) or fails with an ImportError saying what to
    install."""
    monkeypatch.setenv("WANDB_MODE", "offline")  # never reach the network if wandb happens to be installed
    try:
        reps = make_reporters([name], tmp_path)
    except ImportError as err:
        assert "pip install" in str(err) and name in str(err).lower()
        return
    (rep,) = reps
    assert isinstance(rep, Reporter)
    rep.log(1, {"loss/pg": 0.5})
    rep.close()
    rep.close()


def test_tensorboard_writes_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="the optional `tensorboard` package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rep = TensorBoardReporter(tmp_path / "tb")
    for step in range(3):
        rep.log(step, {"loss/pg": step / 2})
    rep.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss/pg")] == [(0, 0.0), (1, 0.5), (2, 1.0)]


def test_tensorboard_missing_package_error(tmp_path: Path) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed, so there is no missing-package error to check")
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardReporter(tmp_path / "tb")


# -------------------------------------------------------------------------------------------------------
# alarms

TOOL = "rollout/tool_calls_per_episode"
LOGPROB = "actor/logprob_mean"


def _fired_steps(
    monitor: AlarmMonitor, stream: list[dict[str, float]], start: int = 0
) -> dict[int, list[str]]:
    return {s: m for s, metrics in enumerate(stream, start) if (m := monitor.update(s, metrics))}


def test_tool_collapse_fires_once_then_rearms(caplog: pytest.LogCaptureFixture) -> None:
    # Baseline = mean of steps 0-3 = 2.0, so the limit is 0.2 x 2.0 = 0.4. Values below it: steps 7 (0.3), 8,
    # 9 ->
    # with patience 3 the alarm fires at step 9 only; steps 10-12 stay low but it already fired. Step 13 (1.0)
    # clears the condition and re-arms; steps 14-16 are low again -> it fires again at step 16.
    values = [2, 2, 2, 2, 1.5, 1.0, 0.5, 0.3, 0.2, 0.1, 0, 0, 0, 1.0, 0, 0, 0]
    monitor = AlarmMonitor(AlarmConfig(baseline_steps=4, patience=3, tool_collapse_threshold=0.2))
    with caplog.at_level(logging.WARNING, logger="vgym.trainers.monitors"):
        fired = _fired_steps(monitor, [{TOOL: float(v)} for v in values])
    assert list(fired) == [9, 16]
    assert all(len(m) == 1 and m[0].startswith("tool-collapse alarm at step") for m in fired.values())
    assert "= 0.1 has stayed below 0.2 x baseline 2 (= 0.4) for 3 steps" in fired[9][0]
    assert [r.getMessage() for r in caplog.records] == [fired[9][0], fired[16][0]]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_tool_collapse_ignores_missing_nan_and_zero_baseline() -> None:
    monitor = AlarmMonitor(AlarmConfig(baseline_steps=2, patience=2))
    # Steps without the key or with NaN neither count nor clear: the run of low values 2, (gap), 4 fires at 4.
    stream = [{TOOL: 1.0}, {TOOL: 1.0}, {TOOL: 0.0}, {}, {TOOL: float("nan")}, {TOOL: 0.0}]
    assert list(_fired_steps(monitor, stream)) == [5]
    never_used_tools = AlarmMonitor(AlarmConfig(baseline_steps=2, patience=1))
    assert not _fired_steps(never_used_tools, [{TOOL: 0.0}] * 20)


def test_lld_fires_after_n_falling_steps() -> None:
    # Log-likelihood falls 0.05 nats per step from step 0. With the default EMA weight 0.9 the smoothed value
    # falls 0.1 x 0.05 = 0.005 > tolerance 1e-3 at step 1 and more afterwards, so step N=10 is the 10th fall.
    cfg = AlarmConfig()
    assert cfg.lld_patience == 10
    falling = [{LOGPROB: -1.0 - 0.05 * t} for t in range(40)]
    fired = _fired_steps(AlarmMonitor(cfg), falling)
    assert list(fired) == [10] and fired[10][0].startswith("LLD alarm at step 10")
    # Raw values (no EMA) with patience 3: steps 1, 2, 3 are falls -> fires at 3.
    raw = AlarmConfig(lld_patience=3, lld_ema=0.0)
    assert list(_fired_steps(AlarmMonitor(raw), falling)) == [3]
    # Re-arm: 5 flat steps (no fall) and a new decline fire again 3 falls later, at step 40 + 5 + 2.
    flat = [{LOGPROB: -3.0}] * 5
    again = [{LOGPROB: -3.0 - 0.05 * t} for t in range(1, 10)]
    assert list(_fired_steps(AlarmMonitor(raw), falling + flat + again)) == [3, 47]
    # A fall smaller than the tolerance does not count: 1e-4 nats/step never fires with tolerance 1e-3 ...
    creeping = [{LOGPROB: -1.0 - 1e-4 * t} for t in range(100)]
    assert not _fired_steps(AlarmMonitor(raw), creeping)
    # ... and fires at step 3 once the tolerance is 0.
    exact = AlarmConfig(lld_patience=3, lld_ema=0.0, lld_tolerance=0.0)
    assert list(_fired_steps(AlarmMonitor(exact), creeping)) == [3]


def test_lld_noisy_flat_never_fires_but_noisy_decline_does() -> None:
    rng = np.random.default_rng(0)
    noise = 0.02 * rng.standard_normal(2000)  # step noise 20x the tolerance
    flat = [{LOGPROB: -1.0 + float(e)} for e in noise]
    assert not _fired_steps(AlarmMonitor(), flat)
    # The same noise on a 0.01 nats/step decline: raw values fall only ~60 % of steps, the EMA falls steadily.
    decline = [{LOGPROB: -1.0 - 0.01 * t + float(e)} for t, e in enumerate(noise)]
    fired = _fired_steps(AlarmMonitor(), decline)
    assert fired and min(fired) < 100
    raw = _fired_steps(AlarmMonitor(AlarmConfig(lld_ema=0.0)), decline)
    assert not raw or min(raw) > 1000  # without smoothing, 10 falls in a row take very long to come up


def test_entropy_alarm_is_off_by_default_and_works_when_set() -> None:
    stream = [{"actor/entropy": 2.0}] * 3 + [{"actor/entropy": 0.1}] * 5
    assert not _fired_steps(AlarmMonitor(), stream)
    cfg = AlarmConfig(entropy_collapse_threshold=0.5, baseline_steps=3, patience=2, lld_patience=None)
    fired = _fired_steps(AlarmMonitor(cfg), stream)
    assert list(fired) == [4] and fired[4][0].startswith("entropy-collapse alarm at step 4")


def _mixed_stream() -> list[dict[str, float]]:
    rng = np.random.default_rng(1)
    return [{TOOL: max(0.0, 2.0 - 0.1 * t) + 0.1 * float(rng.random()), LOGPROB: -1.0 - 0.03 * (t % 15),
             "actor/entropy": 1.5 if t < 20 else 0.2} for t in range(40)]


# Split inside the baseline window (and an LLD run), at the start of a low-tool run, and after all three
# fired.
@pytest.mark.parametrize("split", [2, 17, 26])
def test_state_dict_round_trip_continues_identically(split: int) -> None:
    cfg = AlarmConfig(baseline_steps=5, patience=3, lld_patience=4, entropy_collapse_threshold=0.3)
    stream = _mixed_stream()
    straight = AlarmMonitor(cfg)
    expected = _fired_steps(straight, stream)
    assert len(expected) >= 3  # the stream exercises the alarms, so equality below means something
    first = AlarmMonitor(cfg)
    before = _fired_steps(first, stream[:split])
    resumed = AlarmMonitor(cfg)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # what a checkpoint stores
    after = _fired_steps(resumed, stream[split:], start=split)
    assert before | after == expected
    assert resumed.state_dict() == straight.state_dict()
    with pytest.raises(ValueError, match="not an AlarmMonitor state"):
        resumed.load_state_dict({"lld": {}})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"tool_collapse_threshold": 1.5}, "tool_collapse_threshold"), ({"patience": 0}, ">= 1"),
     ({"lld_ema": 1.0}, "lld_ema"), ({"lld_tolerance": -1.0}, "lld_tolerance")],
)
def test_alarm_config_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(InvalidConfigError, match=match):
        AlarmConfig(**kwargs)  # type: ignore[arg-type]


def test_csv_reporter_names_its_file_when_the_disk_is_full(tmp_path: Path) -> None:
    """A full disk (the write boundary raises ENOSPC) is an OSError naming the CSV; the rows before stay
    intact."""
    import errno

    path = tmp_path / "m.csv"
    rep = CSVReporter(path)
    rep.log(1, {"loss": 0.5})
    before = path.read_bytes()

    class FullDisk:
        def write(self, _: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    rep._fh = FullDisk()
    with pytest.raises(OSError, match=r"step 2 .*m\.csv.*No space left") as info:
        rep.log(2, {"loss": 0.25})
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
