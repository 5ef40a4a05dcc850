"""Data-parallel training (trainers/distributed.py) on the CPU with the gloo backend and real ``torchrun``, 2
processes on the tiny VLM: one optimizer step on a global batch gives the single process's weights (GRPO
with several loss types, advantage estimators and minibatches; SFT; DDP and FSDP2), each rank rolls out whole
groups of the single process's samples, a killed rank fails the job with torchrun's error instead of a
hang, and ``vgym train --resume`` continues the run at the checkpoint it left."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from vgym.app.pipeline import collect
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError
from vgym.policies.oracle import OraclePolicy
from vgym.rollout.chat import ChatEncoder
from vgym.trainers.checkpoints import list_checkpoints
from vgym.trainers.distributed import DataParallel, DistributedConfig, assign_groups, shard
from vgym.trainers.grpo import GRPOTrainer, hf_policy
from vgym.trainers.grpo_config import GRPOConfig
from vgym.trainers.sft import SFTConfig, SFTTrainer

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("distributed_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
search_env = functools.partial(VisualToolEnv, "visual_search")
# 4 groups of 2 short episodes (real runs: 8 x 8 or more, 256+ tokens); the random model never answers, so the
# episodes are truncated: kept in the loss, with rewards set by hand so that groups differ.
# No gradient clipping, so the gradients compared are the raw averages (AdamW's first step is nearly
# lr * sign(g): it cannot tell a gradient from twice it, so the weights alone would not catch a wrong scale).
GRPO = {"num_generations": 2, "prompts_per_step": 4, "max_new_tokens": 8, "learning_rate": 1e-3,
        "mask_truncated_completions": False, "seed": 3, "max_grad_norm": 0.0}
DR_GRPO = {"loss_type": "dr_grpo", "gradient_accumulation_steps": 2, "turn_credit": "steps"}
# case -> (the ranks' config, the single process's): per-micro-batch means (bnpo) equal a single process with
# twice the micro-batches; whole-batch normalisers (dapo, grpo, dr_grpo) equal it as is.
CASES = {
    "dapo": ({"loss_type": "dapo"}, {"loss_type": "dapo"}),
    "bnpo_reinforce_pp": ({"loss_type": "bnpo", "advantage": "reinforce_pp"},
                          {"loss_type": "bnpo", "advantage": "reinforce_pp",
                           "gradient_accumulation_steps": 2}),
    "grpo_minibatches_entropy": ({"loss_type": "grpo", "mini_batch_size": 4, "entropy_coef": 0.01},
                                 {"loss_type": "grpo", "mini_batch_size": 4, "entropy_coef": 0.01}),
    "dr_grpo_accumulation": (DR_GRPO, DR_GRPO),
}
SFT = {"steps": 1, "batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 0, "max_grad_norm": 0.0}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _grads(model: Any) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.fixture(scope="module")
def batches(tiny_dir: Path) -> dict[str, Any]:
    """A GRPO step's 8 episodes (played by the tiny model, rewards set by hand) and 4 oracle SFT episodes."""
    from vgym.engine.tiny import load_vlm

    model, processor = load_vlm(tiny_dir)
    cfg = GRPOConfig(**GRPO)
    trajs, _ = GRPOTrainer(model, processor, hf_policy(model, processor, cfg), search_env, cfg).collect()
    trajs = [dataclasses.replace(t, reward=float((3 * i) % 5) / 4) for i, t in enumerate(trajs)]
    sft = collect(search_env, OraclePolicy(), ChatEncoder(processor), "train", 4, batch_size=4,
                  progress=lambda *a: None, stage="")
    return {"grpo": trajs, "sft": sft}


def _single(tiny_dir: Path, batches: dict[str, Any]) -> dict[str, Any]:
    """Each case's weights after one step of one process on the whole batch, and the initial weights."""
    from vgym.engine.tiny import load_vlm

    out: dict[str, Any] = {}
    for name, (_, fields) in CASES.items():
        model, processor = load_vlm(tiny_dir)
        out.setdefault("init", _weights(model))
        cfg = GRPOConfig(**GRPO, **fields)
        trainer = GRPOTrainer(model, processor, hf_policy(model, processor, cfg), search_env, cfg)
        trainer.learn(batches["grpo"])
        out[name] = (_weights(model), _grads(model))
    model, processor = load_vlm(tiny_dir)
    out["sft_metrics"] = SFTTrainer(model, batches["sft"], SFTConfig(**SFT), processor=processor).step()
    out["sft"] = (_weights(model), _grads(model))
    return out


def _assert_same(got: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
                 want: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]], init: dict[str, torch.Tensor],
                 case: str) -> None:
    """Gradients equal within float tolerance, every weight too, and the step moved the weights (the check
    can fail)."""
    (weights, grads), (want_weights, want_grads) = got, want
    assert set(grads) == set(want_grads)
    for name, grad in want_grads.items():
        scale = float(grad.abs().max())
        assert scale > 0, f"{case}: no gradient reached {name}"
        error = float((grads[name] - grad).abs().max())
        assert error <= 1e-4 * scale, f"{case}: {name}'s gradient differs by {error} (largest {scale})"
    moved = max(float((want_weights[k].float() - init[k].float()).abs().max()) for k in want_weights)
    worst = max(float((weights[k].float() - want_weights[k].float()).abs().max()) for k in want_weights)
    assert moved > 1e-4, f"{case}: the step did not move the weights"
    # AdamW's first step divides by |g| + 1e-8: a gradient near 1e-8 amplifies rounding, hence 5 %
    assert worst <= 0.05 * moved, f"{case}: weights differ by {worst} (moved {moved})"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_equal_one_process(strategy: str, tiny_dir: Path, batches: dict[str, Any],
                                     tmp_path: Path) -> None:
    cases = CASES if strategy == "ddp" else {"dapo": CASES["dapo"]}  # FSDP2: one case keeps the run short
    job = {"model": str(tiny_dir), "strategy": strategy, "out": str(tmp_path / "out.pt"),
           "grpo": {name: ({**GRPO, **ranks}, batches["grpo"]) for name, (ranks, _) in cases.items()},
           "sft": (SFT, batches["sft"]), "collect": {**GRPO} if strategy == "ddp" else None}
    torch.save(job, tmp_path / "job.pt")
    run = subprocess.run([*TORCHRUN, str(WORKER), str(tmp_path / "job.pt")], env=_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt", weights_only=False)
    want = _single(tiny_dir, batches)
    for name in cases:
        _assert_same(got["grpo"][name][::2], want[name], want["init"], f"{strategy} {name}")
    _assert_same(got["sft"][::2], want["sft"], want["init"], f"{strategy} sft")
    # the step's metrics are the whole batch's, not rank 0's half
    assert got["sft"][1]["sft/tokens"] == want["sft_metrics"]["sft/tokens"]
    assert got["sft"][1]["loss/sft"] == pytest.approx(want["sft_metrics"]["loss/sft"], rel=1e-5)
    if strategy == "ddp":  # each rank rolled out whole groups of the single process's 4 samples, 2 each
        groups, metrics, position = got["collect"]
        assert [sorted(set(g)) for g in groups] == [[0, 1], [2, 3]]
        assert all(len(g) == 4 for g in groups) and position == 4
        assert metrics["rollout/episodes"] == 8 and metrics["rollout/kept_episodes"] == 8


def _children(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *_children(kid)]
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


@pytest.mark.slow
def test_killed_rank_fails_the_job_and_resume_continues(tiny_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(
        f"out: {run_dir}\nmodel: {tiny_dir}\ntask: visual_search\neval_episodes: 0\nsave_every: 1\n"
        "report_to: [csv]\ndistributed: {timeout_s: 60}\n"
        "grpo: {num_generations: 2, prompts_per_step: 2, max_new_tokens: 8, steps: 200,"
        " learning_rate: 1.0e-4, mask_truncated_completions: false}\n")
    command = [*TORCHRUN, "-m", "vgym.app.cli", "train", "--config", str(recipe)]
    job = subprocess.Popen(command, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoint-2").exists():
            assert job.poll() is None and time.monotonic() < deadline, "the job ended or stalled early"
            time.sleep(0.2)
        victim = next(p for p in _children(job.pid) if _rank_of(p) == 1)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = job.communicate(timeout=120)
        waited = time.monotonic() - killed
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode != 0
    assert "Signal 9 (SIGKILL)" in stderr and "rank      : 1" in stderr, stderr[-3000:]
    assert waited < 60  # torchrun stops the survivors; nobody waits for the collective timeout
    last = int(list_checkpoints(run_dir)[-1].name.split("-")[1])
    resumed = subprocess.run([*command, "--resume", "--set", f"grpo.steps={last + 1}"], env=_env(),
                             cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = torch.load(run_dir / f"checkpoint-{last + 1}" / "grpo_state.pt", weights_only=True)
    assert state["step"] == last + 1 and state["data_position"] == 2 * (last + 1)  # continued, not restarted
    assert len(state["policy_ranks"]) == 2
    steps = [int(line.split(",")[0]) for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, last + 2))  # rank 0 alone logs each step once
    assert resumed.stdout.count("2 processes") == 1  # rank 0 alone prints


def test_groups_are_dealt_whole_and_evenly() -> None:
    # 2 minibatches of 4 groups on 2 ranks: each rank gets 2 consecutive groups of each minibatch
    assert assign_groups(8, 4, 2) == [0, 0, 1, 1, 0, 0, 1, 1]
    assert assign_groups(3, 3, 1) == [0, 0, 0]
    with pytest.raises(ValueError, match="3 groups does not split evenly over 2 ranks"):
        assign_groups(3, 3, 2)
    assert shard(list(range(8)), 1, 2) == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="5 items do not split evenly over 2 ranks"):
        shard(list(range(5)), 0, 2)


def test_one_process_is_inert() -> None:
    par = DataParallel()
    assert not par.enabled and par.is_main and par.rank_seed(7) == 7
    assert par.gather({"a": 1}) == [{"a": 1}] and par.sum([2, 3.5]) == [2.0, 3.5]
    module = torch.nn.Linear(2, 2)
    assert par.wrap(module) is module
    # ranks of a job sample different streams, reproducibly
    seeds = [DataParallel(rank, 2).rank_seed(7) for rank in (0, 1, 0)]
    assert seeds[0] == seeds[2] != seeds[1]


def test_world_size_must_split_the_batch(tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    three = DataParallel(0, 3)  # checked before any collective, so no process group is needed
    cfg = GRPOConfig(**GRPO)
    with pytest.raises(InvalidConfigError, match=r"prompts_per_step \(4\) must be a multiple of the number "
                                                 r"of processes \(3\)"):
        GRPOTrainer(model, processor, hf_policy(model, processor, cfg), search_env, cfg, parallel=three)
    cfg = GRPOConfig(**{**GRPO, "mini_batch_size": 2})
    with pytest.raises(InvalidConfigError, match=r"mini_batch_size \(2\) must be a multiple of "
                                                 r"num_generations x processes \(4\)"):
        GRPOTrainer(model, processor, hf_policy(model, processor, cfg), search_env, cfg,
                    parallel=DataParallel(0, 2))
    with pytest.raises(InvalidConfigError, match=r"sft.batch_size \(4\) must be a multiple"):
        SFTTrainer(model, [], SFTConfig(**SFT), processor=processor, parallel=three)


def test_distributed_config_is_checked() -> None:
    with pytest.raises(InvalidConfigError, match="strategy must be one of"):
        DistributedConfig(strategy="fsdp")
    with pytest.raises(InvalidConfigError, match="timeout_s must be > 0"):
        DistributedConfig(timeout_s=0)
