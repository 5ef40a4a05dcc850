"""Data parallelism across processes for the trainers: ``torch.distributed`` as ``torchrun`` launches it.

Contents: :class:`DistributedConfig` (the recipe's ``distributed:`` section), :class:`DataParallel` (one
process's place in the job and the collectives the trainers use), :func:`init_data_parallel` (join the job
``torchrun`` started), :func:`launch_rank` (this process's rank from the environment), :func:`assign_groups`
and :func:`shard` (which rank holds which rows).

A job of W processes (ranks) trains one model: every rank holds the weights (DDP) or a 1/W shard of them
(FSDP2), plays its share of each step's GRPO groups (a group never splits across ranks) or reads its share of
each SFT batch, and the gradients are averaged across ranks by torch (``DistributedDataParallel``'s
all-reduce, or ``fully_shard``'s reduce-scatter) — no gradient exchange of our own. The trainers scale each
rank's loss so that the average over ranks equals the single-process loss of the same global batch (see
:mod:`vgym.trainers.grpo`). With one process (no ``torchrun``, or ``--nproc_per_node 1``)
:class:`DataParallel` is inert: every collective returns its input and nothing is wrapped.

Checkpoints are written by rank 0 only, after the others handed it what it needs (FSDP2: the full weights and
optimizer state gathered from the shards); every rank waits for the write (a barrier) before going on.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from vgym.errors import InvalidConfigError
from vgym.trainers.config_checks import check_choice, check_range

__all__ = ["DistributedConfig", "DataParallel", "init_data_parallel", "launch_rank", "assign_groups", "shard"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

STRATEGIES = ("ddp", "fsdp2")
"""The ways ranks hold the model: a full replica each, or a shard each."""


@dataclass
class DistributedConfig:
    """How a job launched by ``torchrun`` trains across its processes (ignored by a single process)."""

    strategy: str = "ddp"
    """``ddp``: :class:`torch.nn.parallel.DistributedDataParallel` — every rank a full replica, gradients
    all-reduced; for models whose weights, gradients and AdamW state fit one device (the 2B/3B recipes).
    ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` on every decoder and vision block and on the model
    (Zhao et al., "PyTorch FSDP", arXiv:2304.11277) — parameters, gradients and optimizer state sharded
    across ranks, each block's weights gathered while it runs; for models that do not fit (7B on 8 GPUs).
    Under FSDP2 rollouts run ``generate`` on weights gathered for the rollout, and the loss takes the plain
    forward (vgym's lean decoder and shared-prompt forward call submodules directly, which sharded weights do
    not allow); it does not take LoRA."""
    timeout_s: float = 1800.0
    """Seconds a collective (all-reduce, barrier) waits for the other ranks before the job fails with
    torch's timeout error, > 0. A rank that dies is caught sooner by ``torchrun``, which stops the others;
    this bounds a rank that hangs. Rank 0 evaluates alone while the others wait at a barrier, so it must
    exceed the evaluation's time."""

    def __post_init__(self) -> None:
        """Check the fields.

        Raises:
            InvalidConfigError: naming the bad field (the message starts with its name).
        """
        check_choice("strategy", self.strategy, STRATEGIES)
        check_range("timeout_s", self.timeout_s, low=0, low_open=True)


def launch_rank() -> int:
    """This process's global rank as ``torchrun`` set it (``RANK``); 0 without ``torchrun``."""
    return int(os.environ.get("RANK", "0"))


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s contiguous share of ``items`` (``len(items)`` divisible by ``world_size``).

    >>> shard([0, 1, 2, 3, 4, 5], 1, 3)
    [2, 3]

    Raises:
        ValueError: ``len(items)`` is not a multiple of ``world_size``.
    """
    if len(items) % world_size:
        raise ValueError(f"{len(items)} items do not split evenly over {world_size} ranks")
    size = len(items) // world_size
    return list(items[rank * size : (rank + 1) * size])


def assign_groups(num_groups: int, groups_per_minibatch: int, world_size: int) -> list[int]:
    """The rank of each of a step's groups (in the single process's row order), so that every rank holds an
    equal share of every minibatch.

    A single process trains on minibatches of consecutive groups; for a job of W ranks to train on the same
    minibatches, each one is cut into W equal runs of whole groups, run r going to rank r. Rank r's rows,
    in order, are then its run of minibatch 0, its run of minibatch 1, ... — its local minibatch j is its run
    of minibatch j.

    >>> assign_groups(4, 4, 2)  # one minibatch: the first half of the groups on rank 0
    [0, 0, 1, 1]
    >>> assign_groups(4, 2, 2)  # two minibatches of 2 groups: one group of each per rank
    [0, 1, 0, 1]

    Args:
        num_groups: the step's groups, > 0.
        groups_per_minibatch: groups per optimizer step, > 0 (the last minibatch may hold fewer).
        world_size: ranks, > 0.

    Returns:
        ``ranks[q]`` the rank of group ``q``.

    Raises:
        ValueError: a minibatch whose number of groups is not a multiple of ``world_size``.
    """
    ranks: list[int] = []
    for lo in range(0, num_groups, groups_per_minibatch):
        count = min(groups_per_minibatch, num_groups - lo)
        if count % world_size:
            raise ValueError(f"a minibatch of {count} groups does not split evenly over {world_size} ranks")
        ranks += [i // (count // world_size) for i in range(count)]
    return ranks


class DataParallel:
    """One process's place in a data-parallel job, and the collectives the trainers call.

    With ``world_size == 1`` (the default) every method is a no-op that returns its input, so a trainer
    written against this class runs unchanged in one process.

    Attributes:
        rank: this process's global rank, 0 .. world_size - 1.
        world_size: the number of processes.
        strategy: ``"ddp"`` or ``"fsdp2"`` (see :class:`DistributedConfig`).
        device: the device this rank trains on (``cuda:<local rank>`` or ``cpu``).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, strategy: str = "ddp",
                 device: str | torch.device = "cpu") -> None:
        self.rank, self.world_size, self.strategy = rank, world_size, strategy
        self.device = torch.device(device)

    @property
    def enabled(self) -> bool:
        """Whether there are other ranks."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes logs, checkpoints and evaluations."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Whether the weights are sharded (FSDP2 across more than one rank)."""
        return self.enabled and self.strategy == "fsdp2"

    def rank_seed(self, seed: int) -> int:
        """The sampling seed of this rank: ``seed`` itself in one process, else one drawn from
        ``SeedSequence([seed, rank])`` (ranks sample independent streams; seeds are mixed, never added)."""
        if not self.enabled:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1, dtype=np.uint64)[0] >> 2)

    # ---------------------------------------------------------------- collectives

    def barrier(self) -> None:
        """Wait for every rank (bounded by the job's collective timeout)."""
        if self.enabled:
            torch.distributed.barrier()

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, value)
        return out

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums of ``values`` over the ranks (one all-reduce; float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        device = self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric averaged over the ranks that report it (every rank must call)."""
        if not self.enabled:
            return metrics
        every = self.gather(metrics)
        keys = dict.fromkeys(k for m in every for k in m)
        return {k: float(np.mean([m[k] for m in every if k in m])) for k in keys}

    # ---------------------------------------------------------------- the model

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """Make ``module``'s training forward data-parallel; call before building the optimizer.

        DDP: returns ``DistributedDataParallel(module)`` (rank 0's weights broadcast to all; unused
        parameters tolerated, since a batch without images skips the vision tower); call the returned module
        for every forward whose gradients must be averaged. FSDP2: shards, in place, every block named in the
        model's ``_no_split_modules`` (transformers' list of decoder and vision blocks) and then the module,
        and returns ``module`` itself. One process: ``module``.

        Raises:
            InvalidConfigError: FSDP2 on a model whose blocks cannot be found.
        """
        if not self.enabled:
            return module
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        names = set(_no_split_modules(module))
        blocks = [m for m in module.modules() if type(m).__name__ in names]
        if not blocks:
            raise InvalidConfigError(f"distributed.strategy fsdp2 found no block to shard in "
                                     f"{type(module).__name__} (looked for {sorted(names)}); use ddp")
        for block in blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module

    @contextlib.contextmanager
    def gradient_sync(self, wrapped: torch.nn.Module, enabled: bool) -> Iterator[None]:
        """Within the block, forwards and backwards of ``wrapped`` all-reduce gradients only when ``enabled``
        (off for all but the last micro-batch of an optimizer step: gradients accumulate locally and the last
        backward averages the sum)."""
        if not self.enabled or enabled:
            yield
        elif self.strategy == "ddp":
            with wrapped.no_sync():  # type: ignore[operator]
                yield
        else:
            wrapped.set_requires_gradient_sync(False)  # type: ignore[operator]
            try:
                yield
            finally:
                wrapped.set_requires_gradient_sync(True)  # type: ignore[operator]

    @contextlib.contextmanager
    def gathered(self, model: torch.nn.Module) -> Iterator[None]:
        """Within the block, FSDP2's sharded weights are whole on every rank (gathered once; not re-sharded
        after each forward), so ranks may run different numbers of forwards — each its own rollout — with no
        collective in between. Nothing to do for DDP or one process. Every rank must enter and leave."""
        if not self.sharded:
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        blocks = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for block in blocks:
            block.set_reshard_after_forward(False)
            block.unshard()
        try:
            yield
        finally:
            for block in blocks:
                block.reshard()
                block.set_reshard_after_forward(True)

    def grad_norm(self, norm: torch.Tensor) -> float:
        """``clip_grad_norm_``'s result as a float (under FSDP2 a sharded tensor, made whole)."""
        full = getattr(norm, "full_tensor", None)
        return float(full() if full is not None else norm)

    def full_state(self, model: torch.nn.Module,
                   optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
        """What a checkpoint holds of the weights and the optimizer, whole (every rank must call).

        Returns:
            ``(weights, optimizer_state)``: under FSDP2 the full state dicts gathered to rank 0 on the CPU
            (empty on the other ranks); otherwise ``(None, optimizer.state_dict())`` — the model saves its own
            weights.
        """
        if not self.sharded:
            return None, optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(model, options=options),
                get_optimizer_state_dict(model, optimizer, options=options))

    def load_full_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        weights: dict[str, torch.Tensor] | None, optimizer_state: dict[str, Any]) -> None:
        """Load a checkpoint's whole weights (None: already loaded in place) and optimizer state into this
        rank's model and optimizer (its shard of them under FSDP2)."""
        if not self.sharded:
            if weights is not None:
                model.load_state_dict(weights)
            optimizer.load_state_dict(optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        if weights is not None:
            set_model_state_dict(model, weights, options=options)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)

    def close(self) -> None:
        """Leave the job (destroy the default process group); harmless without one or twice."""
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _no_split_modules(module: torch.nn.Module) -> list[str]:
    """transformers' ``_no_split_modules`` of ``module`` and of its submodules (a VLM lists its decoder
    layer, its vision tower lists its block)."""
    names: list[str] = []
    for sub in module.modules():
        names += list(getattr(sub, "_no_split_modules", None) or [])
    return names


def init_data_parallel(config: DistributedConfig, device: str) -> DataParallel:
    """Join the job ``torchrun`` started (its ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` variables), or return a one-process :class:`DataParallel` without them.

    The backend is NCCL for ``device="cuda"`` (each rank on GPU ``LOCAL_RANK``) and gloo for the CPU; every
    collective times out after ``config.timeout_s``.

    Args:
        config: the recipe's ``distributed`` section.
        device: the recipe's device, ``cpu`` or ``cuda``.

    Returns:
        This process's :class:`DataParallel`; call :meth:`DataParallel.close` when the run ends.

    Raises:
        InvalidConfigError: ``device="cuda"`` with fewer GPUs than the ranks of this node ask for.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DataParallel(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if local >= torch.cuda.device_count():
            raise InvalidConfigError(f"rank {rank} wants GPU {local} but this node has "
                                     f"{torch.cuda.device_count()}; start at most that many processes per "
                                     "node")
        torch.cuda.set_device(local)
        where: str = f"cuda:{local}"
    else:
        where = "cpu"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo",
                                             timeout=datetime.timedelta(seconds=config.timeout_s))
    logger.info("rank %d of %d on %s (%s)", rank, world, where, config.strategy)
    return DataParallel(rank, world, config.strategy, where)
