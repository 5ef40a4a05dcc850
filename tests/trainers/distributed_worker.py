"""One rank of the data-parallel parity check in ``test_distributed.py``, run by real ``torchrun``.

``torchrun --standalone --nproc_per_node 2 tests/trainers/distributed_worker.py JOB``: ``JOB`` is a
``torch.save``-d dict the test wrote — ``model`` (the tiny VLM's folder), ``strategy`` (ddp | fsdp2),
``grpo`` (case name → (GRPOConfig fields, the step's trajectories)), ``sft`` ((SFTConfig fields, the SFT
trajectories) or None), ``collect`` (GRPOConfig fields of a rollout whose dealing is checked, or None) and
``out``. Each rank trains its share with the real trainers on a fresh copy of the model; rank 0 writes
``out``: the whole weights after each case, the metrics and the gradients of the last optimizer step,
for the test to compare with one process.
"""

from __future__ import annotations

import datetime
import functools
import sys
from typing import Any

import torch

from vgym.engine.tiny import load_vlm
from vgym.env import VisualToolEnv
from vgym.trainers.distributed import DataParallel, assign_groups
from vgym.trainers.grpo import GRPOTrainer, hf_policy
from vgym.trainers.grpo_config import GRPOConfig
from vgym.trainers.sft import SFTConfig, SFTTrainer


def _weights(par: DataParallel, model: Any, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The whole weights on rank 0 (gathered under FSDP2; every rank must call)."""
    full, _ = par.full_state(model, optimizer)
    if full is None:
        full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return full


def _grads(model: Any) -> dict[str, torch.Tensor]:
    """The gradients the last optimizer step used, whole (every rank must call: FSDP2 gathers them)."""
    out = {}
    for name, param in model.named_parameters():
        grad = param.grad
        out[name] = grad.full_tensor() if hasattr(grad, "full_tensor") else grad.clone()
    return out


def _grpo(par: DataParallel, folder: str, fields: dict[str, Any],
          trajs: list[Any]) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    cfg = GRPOConfig(**fields)
    model, processor = load_vlm(folder)
    env_fn = functools.partial(VisualToolEnv, "visual_search")
    trainer = GRPOTrainer(model, processor, hf_policy(model, processor, cfg, seed=par.rank_seed(cfg.seed)),
                          env_fn, cfg, parallel=par)
    groups = sorted({t.group_id for t in trajs})
    per_minibatch = len(groups) if cfg.mini_batch_size is None else cfg.mini_batch_size // cfg.num_generations
    ranks = dict(zip(groups, assign_groups(len(groups), per_minibatch, par.world_size), strict=True))
    mine = [t for t in trajs if ranks[t.group_id] == par.rank]
    metrics = trainer.learn(mine)
    return _weights(par, model, trainer.optimizer), metrics, _grads(model)


def main(job_path: str) -> None:
    job = torch.load(job_path, weights_only=False)
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    par = DataParallel(torch.distributed.get_rank(), torch.distributed.get_world_size(), job["strategy"])
    out: dict[str, Any] = {"grpo": {}, "world_size": par.world_size}
    for name, (fields, trajs) in job["grpo"].items():
        out["grpo"][name] = _grpo(par, job["model"], fields, trajs)
    if job["sft"] is not None:
        fields, data = job["sft"]
        model, processor = load_vlm(job["model"])
        trainer = SFTTrainer(model, data, SFTConfig(**fields), processor=processor, parallel=par)
        metrics = trainer.step()
        out["sft"] = (_weights(par, model, trainer.optimizer), metrics, _grads(model))
    if job["collect"] is not None:
        cfg = GRPOConfig(**job["collect"])
        model, processor = load_vlm(job["model"])
        env_fn = functools.partial(VisualToolEnv, "visual_search")
        policy = hf_policy(model, processor, cfg, seed=par.rank_seed(cfg.seed))
        trainer = GRPOTrainer(model, processor, policy, env_fn, cfg, parallel=par)
        trajs, metrics = trainer.collect()
        out["collect"] = (par.gather([t.group_id for t in trajs]), metrics, trainer.data_position)
    if par.is_main:
        torch.save(out, job["out"])
    par.close()


if __name__ == "__main__":
    main(sys.argv[1])
