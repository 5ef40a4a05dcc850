"""Supervised fine-tuning on trajectories: behaviour cloning with the loss on policy tokens only.

Contents: :class:`SFTConfig`, :func:`collate`, :class:`SFTTrainer`.

The trainer never re-tokenises text: it trains on the ``input_ids``/``loss_mask`` the rollout built, with the
image tensors the processor produced — made again per batch from the trajectories' uint8 images, bit for
bit, so that RAM does not grow with the training set (:class:`vgym.trainers.sft_data.SFTDataset`).
Checkpoints are complete model folders (model and processor, so ``hf:<checkpoint>`` evaluates them; see
:mod:`vgym.trainers.checkpoints`) holding also the optimizer, scheduler, step (the data position: step ``s``
reads :meth:`SFTTrainer.batch_indices` ``(s)``), a fingerprint of the data and the torch RNG state, so
:meth:`SFTTrainer.load` continues exactly.

Across processes (``torchrun``; :mod:`vgym.trainers.distributed`) every rank holds the same data, reads its
contiguous share of each step's batch, and the loss is the token mean over the whole batch (every rank's
policy tokens summed), so one step equals the single process's step on the same batch. Rank 0 writes the
checkpoints; a checkpoint resumes at any world size that divides ``batch_size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vgym.engine.modeling import model_inputs
from vgym.errors import InvalidConfigError
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.trajectory import Trajectory
from vgym.trainers.checkpoints import restore_weights, write_checkpoint
from vgym.trainers.config_checks import check_range
from vgym.trainers.distributed import DataParallel, shard
from vgym.trainers.sft_data import SFTDataset, pad_tokens
from vgym.trainers.tokens import sft_loss, token_logprobs

__all__ = ["SFTConfig", "SFTTrainer", "adamw", "collate"]


def adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter, arXiv:1711.05101) with torch's fused kernel where every parameter allows it
    (floating point, on the CPU or a CUDA device: one kernel for all tensors instead of a loop over them — 3.6
    → 0.9 ms a step for the tiny model; transformers' Trainer defaults to it too), the per-tensor loop
    otherwise."""
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


@dataclass
class SFTConfig:
    """Settings of an SFT run."""

    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 16
    """Trajectories per step."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate (Loshchilov & Hutter, arXiv:1711.05101); 1e-3 suits a tiny model trained from
    scratch, real checkpoints want ~1e-5."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    warmup_steps: int = 20
    """Linear warm-up steps, then cosine decay to 10 % of the peak."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 disables it."""
    seed: int = 0
    """Seeds the data order."""

    def __post_init__(self) -> None:
        """Check every field's range.

        Raises:
            InvalidConfigError: naming the first field out of range (the message starts with its name).
        """
        check_range("steps", self.steps, low=1)
        check_range("batch_size", self.batch_size, low=1)
        check_range("learning_rate", self.learning_rate, low=0, low_open=True)
        check_range("weight_decay", self.weight_decay, low=0)
        check_range("warmup_steps", self.warmup_steps, low=0)
        check_range("max_grad_norm", self.max_grad_norm, low=0)
        check_range("seed", self.seed, low=0)


def collate(trajectories: Sequence[Trajectory], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad trajectories into a model batch (:func:`~vgym.trainers.sft_data.pad_tokens`), with the
    patches they carry.

    Returns:
        ``input_ids`` (B, T), ``attention_mask`` (B, T), ``loss_mask`` (B, T) and, when any trajectory has
        images, ``pixel_values`` (P, D) and ``image_grid_thw`` (N, 3) concatenated in batch order.
    """
    out = pad_tokens([t.input_ids for t in trajectories], [t.loss_mask for t in trajectories], pad_id)
    pixels = [t.pixel_values for t in trajectories if t.pixel_values is not None]
    if pixels:
        out["pixel_values"] = torch.cat(pixels)
        out["image_grid_thw"] = torch.cat([t.image_grid_thw for t in trajectories
                                           if t.image_grid_thw is not None])
    return out


class SFTTrainer:
    """Behaviour cloning of trajectories (e.g. the scripted oracle's)."""

    def __init__(self, model: Any, trajectories: Sequence[Trajectory] | SFTDataset, config: SFTConfig, *,
                 processor: Any = None, pad_id: int | None = None,
                 parallel: DataParallel | None = None) -> None:
        """Args:
        model: a transformers VLM (or a peft model around one); trained in place.
        trajectories: the training set: an :class:`~vgym.trainers.sft_data.SFTDataset` (built as the
            episodes come, so they never all sit in memory: what ``vgym train`` and the quickstart do), or
            trajectories, which the trainer copies into one (patched per batch with ``processor``'s encoder;
            without a processor it keeps their own patches) and does not keep.
        config: run settings.
        processor: the model's processor, saved in every checkpoint so that the checkpoint is a model folder
            ``hf:<checkpoint>`` loads; None saves weights and trainer state only.
        pad_id: id used for padding (masked out of attention and loss); None takes the processor's
            tokenizer's pad id (0 if it has none).
        parallel: this process's place in a data-parallel job; None: one process. Every rank passes the
            same ``trajectories``.

        Raises:
            InvalidConfigError: if there are no trajectories or none has a policy token, neither
                ``processor`` nor ``pad_id`` is given, or ``batch_size`` does not split over the ranks.
        """
        self.parallel = parallel or DataParallel()
        if config.batch_size % self.parallel.world_size:
            raise InvalidConfigError(f"sft.batch_size ({config.batch_size}) must be a multiple of the number "
                                     f"of processes ({self.parallel.world_size}): each rank reads an equal "
                                     "share")
        if pad_id is None and processor is None:
            raise InvalidConfigError("SFTTrainer needs the processor (or a pad_id) to pad batches")
        if not isinstance(trajectories, SFTDataset):
            dataset = SFTDataset(ChatEncoder(processor) if processor is not None else None)
            dataset.extend(trajectories)
            trajectories = dataset
        if not trajectories.policy_tokens:
            raise InvalidConfigError("SFT needs at least one trajectory with policy tokens (loss_mask == 1)")
        if pad_id is None:
            pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
        self.model = model
        self.processor = processor
        self.data = trajectories
        self.config = config
        self.pad_id = pad_id
        self.step_count = 0
        self._forward = self.parallel.wrap(model)  # DDP / FSDP2 before the optimizer sees the parameters
        self.optimizer = adamw([p for p in model.parameters() if p.requires_grad], config.learning_rate,
                               config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

    def _lr_factor(self, step: int) -> float:
        cfg = self.config
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def batch_indices(self, step: int) -> list[int]:
        """Indices of the trajectories used at ``step``: epochs of seeded permutations, read in order."""
        n, size = len(self.data), self.config.batch_size
        out = []
        for pos in range(step * size, (step + 1) * size):
            epoch, offset = divmod(pos, n)
            order = np.random.default_rng(np.random.SeedSequence([self.config.seed, epoch])).permutation(n)
            out.append(int(order[offset]))
        return out

    def loss_on(self, trajectories: Sequence[Trajectory]) -> tuple[torch.Tensor, dict[str, float]]:
        """The SFT loss of the model on ``trajectories`` (with gradients when enabled)."""
        return self.loss_of_batch(collate(trajectories, self.pad_id))

    def loss_of_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The SFT loss of the model on a batch of :func:`collate` or :meth:`SFTDataset.batch
        <vgym.trainers.sft_data.SFTDataset.batch>` (with gradients when enabled); ``batch`` loses its
        ``loss_mask``."""
        loss_mask = batch.pop("loss_mask").to(next(self.model.parameters()).device)
        inputs = model_inputs(self.model, **batch)
        logits = self.model(**inputs).logits  # (B, T, V)
        return sft_loss(token_logprobs(logits, inputs["input_ids"]), loss_mask)

    def step(self) -> dict[str, float]:
        """One optimizer step on the next batch.

        Returns:
            Metrics: ``loss/sft``, ``sft/mean_token_prob``, ``sft/tokens``, ``optim/grad_norm``, ``optim/lr``.
        """
        self.model.train()
        par = self.parallel
        indices = shard(self.batch_indices(self.step_count), par.rank, par.world_size)  # this rank's share
        batch = self.data.batch(indices, self.pad_id)
        self.optimizer.zero_grad(set_to_none=True)
        if par.enabled:
            loss, metrics = self._shard_loss(batch)
        else:
            loss, metrics = self.loss_of_batch(batch)
        loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        limit = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        metrics["optim/grad_norm"] = par.grad_norm(torch.nn.utils.clip_grad_norm_(params, limit))
        metrics["optim/lr"] = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step_count += 1
        return metrics

    def _shard_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """This rank's part of the whole batch's SFT loss: its summed token NLL over every rank's policy
        tokens, times the world size (torch averages the ranks' gradients, the loss is their sum); metrics
        as :meth:`loss_on`'s, of the whole batch. ``batch``: this rank's rows, as :meth:`loss_of_batch`'s."""
        par = self.parallel
        loss_mask = batch.pop("loss_mask").to(next(self.model.parameters()).device)
        inputs = model_inputs(self.model, **batch)
        logprobs = token_logprobs(self._forward(**inputs).logits, inputs["input_ids"])  # (B, T)
        mask = loss_mask.to(logprobs.dtype)
        nll = -(logprobs * mask).sum()
        with torch.no_grad():
            local = [float(mask.sum()), float(nll), float((logprobs.exp() * mask).sum())]
        tokens, nll_sum, prob_sum = par.sum(local)
        loss = nll * par.world_size / max(tokens, 1.0)  # max: an empty batch gives 0, not NaN
        return loss, {"loss/sft": nll_sum / max(tokens, 1.0), "sft/tokens": tokens,
                      "sft/mean_token_prob": prob_sum / max(tokens, 1.0)}

    def train(
        self, callback: Callable[[int, dict[str, float]], None] | None = None
    ) -> list[dict[str, float]]:
        """Run until ``config.steps``; ``callback(step, metrics)`` after each step. Returns the metric
        history."""
        history = []
        while self.step_count < self.config.steps:
            metrics = self.step()
            history.append(metrics)
            if callback is not None:
                callback(self.step_count, metrics)
        return history

    def data_fingerprint(self) -> str:
        """Identify the training set, which a resumed run must share to continue exactly.

        Returns:
            The hex SHA-256 of every trajectory's token ids, loss mask and image grid, in order
            (:attr:`SFTDataset.fingerprint <vgym.trainers.sft_data.SFTDataset.fingerprint>`).
        """
        return self.data.fingerprint

    def save(self, folder: str | Path) -> Path:
        """Save a checkpoint: a complete model folder (weights, config and, given the processor, tokenizer,
        image processor and chat template; for LoRA the adapters and their base's folder — see
        :func:`vgym.trainers.checkpoints.write_checkpoint`) and ``trainer_state.pt``: optimizer, scheduler,
        step, config, the data's fingerprint and the torch RNG state (CPU and CUDA; dropout draws from it).

        The folder is written whole to a hidden temporary sibling, then renamed into place (replacing an older
        save of the same name), so a kill or a full disk mid-save never leaves a partial ``folder``.

        Args:
            folder: the checkpoint folder, e.g. ``runs/x/sft/checkpoint-100``.

        Returns:
            ``folder`` as a ``Path``.

        In a data-parallel job every rank must call it; rank 0 writes (its torch RNG state).

        Raises:
            OSError: if the checkpoint cannot be written (e.g. a full disk), naming ``folder``; it is
                unchanged.
        """
        par = self.parallel
        weights, optimizer = par.full_state(self.model, self.optimizer)  # FSDP2: gathered to rank 0
        state: dict[str, Any] = {
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "step": self.step_count,
            "config": asdict(self.config),
            "data": {"trajectories": len(self.data), "sha256": self.data_fingerprint()},
            "rng": {"cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []},
        }
        if par.is_main:
            write_checkpoint(folder, self.model, self.processor, state, "trainer_state.pt", weights=weights)
        par.barrier()  # the checkpoint exists for every rank once save returns
        return Path(folder)

    def load(self, folder: str | Path) -> None:
        """Restore a :meth:`save`: the weights into ``self.model`` in place (the adapters only, for LoRA),
        optimizer, scheduler and step, and the torch RNG state it saved (CPU, and CUDA where it was saved and
        is available).

        Args:
            folder: a folder :meth:`save` wrote.

        Raises:
            InvalidConfigError: if the checkpoint was made with a different config, or on other training data
                (a different number of trajectories or fingerprint).
        """
        folder = Path(folder)
        state = torch.load(folder / "trainer_state.pt", weights_only=True)
        if state["config"] != asdict(self.config):
            raise InvalidConfigError(f"checkpoint config {state['config']} differs from "
                                     f"{asdict(self.config)}")
        data = state.get("data")  # absent from checkpoints written before vgym kept it
        if data is not None and data != {"trajectories": len(self.data), "sha256": self.data_fingerprint()}:
            raise InvalidConfigError(f"checkpoint {folder} was trained on other data ({data['trajectories']} "
                                     f"trajectories, fingerprint {data['sha256'][:12]}) than this run's "
                                     f"({len(self.data)}, {self.data_fingerprint()[:12]}); resume with the "
                                     "data settings it was saved with")
        weights = None
        if self.parallel.sharded:  # whole weights from the folder, each rank keeping its shard
            weights = type(self.model).from_pretrained(folder, local_files_only=True).state_dict()
        else:
            restore_weights(self.model, folder, state.get("adapters"))
        self.parallel.load_full_state(self.model, self.optimizer, weights, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = int(state["step"])
        rng = state.get("rng")
        if rng is not None:
            torch.set_rng_state(rng["cpu"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
