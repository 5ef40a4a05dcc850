"""GRPO and its variants over multi-turn, multimodal tool-use rollouts: a thin loop around pure losses.

Contents: :func:`otc_tool_factor`, :func:`turn_ids_from_mask`, :func:`step_rewards`, :class:`GRPOTrainer` (its
settings: :class:`vgym.trainers.grpo_config.GRPOConfig`), :func:`hf_policy` (the transformers rollout policy
matching a config).

One step: roll out ``prompts_per_step`` samples × ``num_generations`` episodes with the current model (one
group per sample; episodes of a group share the sample and the env seed) → rewards (the env's composite
reward, optionally shaped by OTC tool efficiency) → dynamic sampling (drop groups whose rewards are all equal
and roll out new ones) → advantages (a registered estimator) → per-token credit (outcome broadcast, or outcome
plus per-turn tool-step rewards) → ``num_iterations`` passes of minibatch updates with the registered policy
loss, KL to a frozen reference, LLDS and entropy terms
(:func:`vgym.trainers.objective.compute_policy_objective`) → metrics and alarms. Env and prompt tokens are
never trained on (the rollout's ``loss_mask``); truncated episodes can be masked whole. Old log-probs come
from the rollout (the behaviour policy); the step's first minibatch, scored before the step's first optimizer
step, gives the importance ratio of the trainer's log-probs over the rollout's
(:class:`vgym.trainers.importance.ImportanceStats`, ``rollout/is_ratio_*``): ~1 for the HF policy, the
training-inference mismatch for an engine such as vLLM.

The rollout policy is any :class:`vgym.policies.base.Policy` playing the model being trained: an
:class:`~vgym.policies.hf.HFPolicy` on the same model object (:func:`hf_policy`), or an engine holding its own
copy of the weights (e.g. vLLM), which the trainer's ``sync_weights`` hook refreshes whenever the weights
change.

Across processes (``torchrun``; :mod:`vgym.trainers.distributed`): every rank plays whole groups of each
step — the single process's samples, split so that each rank holds an equal run of every minibatch
(:func:`~vgym.trainers.distributed.assign_groups`) — the advantages are computed from every rank's rewards
(so batch-level estimators such as REINFORCE++ see the whole batch), token counts that normalise the loss
(``dapo``'s tokens of the optimizer step, the rows of a sequence or ``dr_grpo`` mean) are summed over the
ranks, each rank's loss is scaled so that torch's gradient average equals the single-process gradient of the
same global batch, and the metrics are reduced over the ranks. Aggregations that are means over one
micro-batch (``bnpo``, and the ``llds_coef`` term) stay means over each rank's micro-batch: a job of W ranks
then equals a single process with W times the ``gradient_accumulation_steps``. With dynamic sampling (or a
sample that fails to load) the kept groups are re-dealt across the ranks, dropping the last few so that every
rank gets as many (``rollout/kept_episodes`` counts what was trained on).

Checkpoints are complete model folders (model and processor, so ``hf:<checkpoint>`` evaluates them; see
:mod:`vgym.trainers.checkpoints`) holding also the optimizer, scheduler, step, data position, the policy's
sampling state (for a :class:`~vgym.policies.base.StatefulPolicy`) and the alarm state, so a resumed run
reproduces the next step exactly (tested on CPU).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vgym.engine.fast_paths import fast_paths
from vgym.engine.modeling import (
    forward_accepts,
    model_inputs,
    shared_image_features,
    vision_placeholder_ids,
)
from vgym.engine.shared_prefix import shared_prefix_logits
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError, VgymError
from vgym.policies.base import Policy, StatefulPolicy
from vgym.policies.hf import GenerationConfig, HFPolicy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout
from vgym.rollout.trajectory import Trajectory
from vgym.trainers.advantages import broadcast_advantages, compute_advantages, turn_advantages
from vgym.trainers.aggregation import LOSS_TYPES
from vgym.trainers.checkpoints import restore_weights, write_checkpoint
from vgym.trainers.distributed import DataParallel, assign_groups
from vgym.trainers.grpo_config import GRPOConfig
from vgym.trainers.importance import ImportanceStats
from vgym.trainers.monitors import AlarmMonitor, rollout_metrics
from vgym.trainers.objective import compute_policy_objective
from vgym.trainers.sft import adamw, collate
from vgym.trainers.tokens import entropy_from_logits, token_logprobs

__all__ = ["otc_tool_factor", "turn_ids_from_mask", "step_rewards", "GRPOTrainer", "hf_policy"]

logger = logging.getLogger(__name__)


def otc_tool_factor(calls: int, c: float) -> float:
    """OTC-PPO's tool term ``cos(m*pi / (2m + c))`` for ``m = calls`` (arXiv:2504.14870): 1 for no call,
    falling toward 0 as calls grow; ``c`` sets the rate."""
    return math.cos(calls * math.pi / (2 * calls + c))


def turn_ids_from_mask(loss_mask: torch.Tensor) -> torch.Tensor:
    """Number the policy's turns: (B, T) 0/1 → (B, T) long, k >= 1 on the tokens of the k-th run of ones, else
    0."""
    # (B, T): the first token of each run of ones
    starts = (loss_mask == 1) & (torch.nn.functional.pad(loss_mask, (1, 0))[:, :-1] == 0)
    return torch.cumsum(starts.long(), dim=1) * (loss_mask == 1).long()


def step_rewards(trajectories: Sequence[Trajectory], max_turns: int) -> torch.Tensor:
    """(B, max_turns) per-turn tool-step rewards: +1 if the turn's tool calls all succeeded, -1 if one failed,
    0 for a turn without a call (or no such turn)."""
    out = torch.zeros(len(trajectories), max(1, max_turns))
    for b, traj in enumerate(trajectories):
        for k, turn in enumerate(traj.turns[:max_turns]):
            calls = turn["tool_calls"]
            if calls:
                out[b, k] = 1.0 if all(c["ok"] for c in calls) else -1.0
    return out


def hf_policy(model: Any, processor: Any, config: GRPOConfig, *, seed: int | None = None,
              decoder: str | None = None) -> HFPolicy:
    """The :class:`~vgym.policies.hf.HFPolicy` that samples what a :class:`GRPOTrainer` with ``config`` trains
    on.

    It plays ``model`` itself (no weight copy, so the trainer's ``sync_weights`` has nothing to do), with the
    config's ``max_new_tokens``, ``temperature`` and ``top_p``, seeded by ``config.seed``.

    Args:
        model: the ``*ForConditionalGeneration`` VLM being trained.
        processor: its processor.
        config: the run's settings.
        seed: the sampling seed instead of ``config.seed`` (each rank of a job its own:
            :meth:`~vgym.trainers.distributed.DataParallel.rank_seed`).
        decoder: ``GenerationConfig.decoder`` (``"generate"`` for FSDP2-sharded weights); None keeps the
            default.

    Returns:
        The policy to pass to :class:`GRPOTrainer`.
    """
    generation = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                  top_p=config.top_p)
    if decoder is not None:
        generation = dataclasses.replace(generation, decoder=decoder)
    return HFPolicy(model, processor, generation, seed=config.seed if seed is None else seed)


class GRPOTrainer:
    """Online GRPO-family training of a transformers VLM on a vgym env (see the module docstring).

    The rollout policy must sample from the distribution the loss scores: ``model``'s, at
    ``config.temperature`` and ``config.top_p``, never emitting a vision placeholder token
    (:func:`vgym.engine.modeling.vision_placeholder_ids`, which the loss masks out of the logits). Its
    per-token log-probs are the old log-probs of the ratio, so on the first pass the ratio is 1.
    """

    def __init__(self, model: Any, processor: Any, policy: Policy, env_fn: Callable[[], VisualToolEnv],
                 config: GRPOConfig, *, ref_model: Any = None,
                 sync_weights: Callable[[Any], None] | None = None,
                 parallel: DataParallel | None = None, rollout_settings: RolloutConfig | None = None) -> None:
        """Args:
        model: a ``*ForConditionalGeneration`` VLM, trained in place.
        processor: its processor (chat template, image processor, tokenizer).
        policy: plays the rollouts with ``model``'s current weights (see the class docstring); e.g.
            :func:`hf_policy`. A :class:`~vgym.policies.base.StatefulPolicy` has its sampling state saved with
            each checkpoint.
        env_fn: builds the training env (called once per rollout slot).
        config: run settings.
        ref_model: the frozen KL reference; None means, when ``beta > 0``, the base model with its adapters
            off for a peft (LoRA) model, else a frozen copy of ``model``.
        sync_weights: called as ``sync_weights(model)`` whenever ``model``'s weights change (after each
            optimizer step and after :meth:`load`), to copy them into a policy that keeps its own (e.g.
            ``lambda m: vllm_policy.load_weights(m.named_parameters())``); None for a policy that plays
            ``model`` itself.
        parallel: this process's place in a data-parallel job (:func:`vgym.trainers.distributed.
            init_data_parallel`); None: one process. Every rank builds its trainer the same way; ``policy``
            samples with a seed of its own per rank.
        rollout_settings: where env work runs (``parallel="ray"``, ``num_workers``, ``address`` to put it in
            Ray env workers on a cluster; ``threads``; token caps); its ``batch_size`` and ``mode`` are
            replaced by the config's. None: this process, inline. In a job each rank has its own workers.

        Raises:
            InvalidConfigError: a step's groups (or a minibatch's) do not split evenly over the ranks.
        """
        self.parallel = parallel or DataParallel()
        _check_world(config, self.parallel.world_size)
        self.model, self.processor, self.env_fn, self.config = model, processor, env_fn, config
        self.policy, self.sync_weights = policy, sync_weights
        self.rollout_settings = rollout_settings or RolloutConfig()
        self.encoder = ChatEncoder(processor)
        self.pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
        self.suppressed_ids = vision_placeholder_ids(processor.tokenizer)  # never sampled, so never scored
        self.ref_model = ref_model
        self.ref_is_base = config.beta > 0 and ref_model is None and hasattr(model, "disable_adapter")
        if config.beta > 0 and ref_model is None and not self.ref_is_base:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        self.alarm_log: list[str] = []
        # the training forward, data-parallel (DDP around the scoring module, so vgym's own forward paths
        # still run inside it; FSDP2 shards the model in place), before the optimizer sees the parameters
        self._scorer = None if not self.parallel.enabled or self.parallel.sharded else (
            self.parallel.wrap(_Scorer(model, self._logits)))
        if self.parallel.sharded:
            self.parallel.wrap(model)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = adamw(params, config.learning_rate, config.weight_decay)
        warmup = config.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.alarms = AlarmMonitor(config.alarms)
        self.step_count = 0
        self.data_position = config.data_offset
        probe = env_fn()
        self.max_turns = probe.config.max_turns
        probe.close()
        # dr_grpo's constant normaliser: the most policy tokens a trajectory can hold
        self.loss_settings = config.loss_settings(max_tokens=config.max_new_tokens * self.max_turns)

    # ---------------------------------------------------------------- rollout

    def _specs(self, prompts: int) -> list[EpisodeSpec]:
        cfg = self.config
        specs = []
        for _ in range(prompts):
            index = self.data_position
            self.data_position += 1
            specs += [EpisodeSpec(cfg.split, index, group_id=index, seed=index)
                      for _ in range(cfg.num_generations)]
        return specs

    def _groups_per_minibatch(self, groups: int) -> int:
        """Groups per optimizer step of a step batch of ``groups`` groups."""
        size = self.config.mini_batch_size
        return groups if size is None else max(1, size // self.config.num_generations)

    def _play(self, specs: list[EpisodeSpec], ranks: list[int] | None = None) -> list[Trajectory]:
        """Roll out this rank's groups of ``specs`` (whole groups; ``ranks[q]`` the rank of group q, default
        round robin); all of them in one process."""
        par, size = self.parallel, self.config.num_generations
        if par.enabled:
            groups = [specs[i : i + size] for i in range(0, len(specs), size)]
            ranks = ranks or [q % par.world_size for q in range(len(groups))]
            specs = [s for group, r in zip(groups, ranks, strict=True) if r == par.rank for s in group]
        if not specs:
            return []
        settings = dataclasses.replace(self.rollout_settings, batch_size=self.config.batch_size,
                                       mode=self.config.rollout_mode)
        return rollout(self.env_fn, self.policy, self.encoder, specs, settings)

    def _deal(self, trajs: list[Trajectory], planned: list[int]) -> list[Trajectory]:
        """This rank's share of the kept groups of a step (see the module docstring).

        ``planned`` are the group ids dealt at the start of the step; when every rank kept all of its groups
        nothing moves. Otherwise the kept groups, in the single process's order (ascending id), are cut to
        ``batch_size`` as the single process does, then to a multiple of the world size, and dealt again
        (:func:`~vgym.trainers.distributed.assign_groups`): their trajectories go through ``gather``.
        """
        par, cfg = self.parallel, self.config
        if not par.enabled:
            return trajs[: cfg.batch_size] if cfg.dynamic_sampling else trajs
        kept = sorted({g for ids in par.gather(sorted({t.group_id for t in trajs})) for g in ids})
        if kept == planned:
            return trajs
        kept = kept[: cfg.batch_size // cfg.num_generations]
        kept = kept[: len(kept) - len(kept) % par.world_size]
        chosen = set(kept)
        pool: dict[int, list[Trajectory]] = {}
        for part in par.gather([t for t in trajs if t.group_id in chosen]):
            for t in part:
                pool.setdefault(t.group_id, []).append(t)
        if not kept:
            return []
        ranks = assign_groups(len(kept), self._groups_per_minibatch(len(kept)), par.world_size)
        return [t for gid, r in zip(kept, ranks, strict=True) if r == par.rank for t in pool[gid]]

    def collect(self) -> tuple[list[Trajectory], dict[str, float]]:
        """Roll out one step's groups (dynamic sampling refills groups without signal).

        Returns:
            The trajectories (whole groups) and rollout metrics of everything generated.
        """
        cfg, par = self.config, self.parallel
        self.model.eval()
        specs = self._specs(cfg.prompts_per_step)
        planned = sorted({s.group_id for s in specs})
        with par.gathered(self.model):  # FSDP2: whole weights on every rank while it plays its own groups
            ranks = assign_groups(len(planned), self._groups_per_minibatch(len(planned)), par.world_size)
            trajs = self._play(specs, ranks)
            generated = list(trajs)
            trajs = _loaded(trajs)
            rounds = 0
            if cfg.dynamic_sampling:
                trajs = self._informative(trajs)
                kept = int(par.sum([len(trajs)])[0])
                while kept < cfg.batch_size and rounds < cfg.max_resample_rounds:
                    rounds += 1
                    missing = (cfg.batch_size - kept) // cfg.num_generations
                    more = self._play(self._specs(missing))
                    generated += more
                    trajs += self._informative(_loaded(more))
                    kept = int(par.sum([len(trajs)])[0])
        trajs = self._deal(trajs, planned)
        if par.enabled:  # the metrics of every rank's episodes, without their pixels
            light = [dataclasses.replace(t, images=[], pixel_values=None) for t in generated]
            generated = [t for part in par.gather(light) for t in part]
        failed = len(generated) - len(_loaded(generated))
        if generated and failed == len(generated):
            raise VgymError(f"GRPO step {self.step_count + 1}: no sample of the step could be loaded "
                            f"({generated[0].truncated_reason})")
        metrics = rollout_metrics(generated)
        metrics["rollout/sample_errors"] = float(failed)
        metrics["rollout/resample_rounds"] = float(rounds)
        metrics["rollout/kept_episodes"] = par.sum([len(trajs)])[0]
        return trajs, metrics

    def _informative(self, trajs: list[Trajectory]) -> list[Trajectory]:
        """The trajectories of groups whose shaped rewards are not all equal."""
        rewards = self.rewards(trajs)
        keep = []
        for gid in dict.fromkeys(t.group_id for t in trajs):
            members = [i for i, t in enumerate(trajs) if t.group_id == gid]
            if len({float(rewards[i]) for i in members}) > 1:
                keep += [trajs[i] for i in members]
        return keep

    def rewards(self, trajs: Sequence[Trajectory]) -> torch.Tensor:
        """(B,) the episodes' rewards, shaped by OTC tool efficiency when ``otc_weight > 0``."""
        cfg = self.config
        values = []
        for t in trajs:
            factor = 1.0 - cfg.otc_weight + cfg.otc_weight * otc_tool_factor(t.num_tool_calls, cfg.otc_c)
            values.append(t.reward * factor)
        return torch.tensor(values, dtype=torch.float32)

    # ---------------------------------------------------------------- update

    def _advantages(self, trajs: Sequence[Trajectory],
                    loss_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        group_ids = torch.tensor([t.group_id for t in trajs], dtype=torch.long)
        rewards = self.rewards(trajs)
        if self.parallel.enabled:  # every rank's rewards: batch-level statistics see the whole batch
            parts = self.parallel.gather((rewards.tolist(), group_ids.tolist()))
            start = sum(len(r) for r, _ in parts[: self.parallel.rank])
            every, ids = [x for r, _ in parts for x in r], [g for _, gs in parts for g in gs]
            adv, metrics = compute_advantages(cfg.advantage, torch.tensor(every, dtype=torch.float32),
                                              torch.tensor(ids, dtype=torch.long),
                                              scale_rewards=cfg.scale_rewards)
            adv = adv[start : start + len(trajs)]
        else:
            adv, metrics = compute_advantages(cfg.advantage, rewards, group_ids,
                                              scale_rewards=cfg.scale_rewards)
        if cfg.turn_credit == "steps":
            token_adv = turn_advantages(adv, turn_ids_from_mask(loss_mask),
                                        step_rewards(trajs, self.max_turns), group_ids,
                                        step_weight=cfg.step_weight)
        else:
            token_adv = broadcast_advantages(adv, loss_mask)
        return token_adv, metrics

    def _logits(self, model: Any, batch: dict[str, torch.Tensor],
                first: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at the sampling temperature from position ``first - 1`` on, (B, T - first + 1, V), and
        (B, T) token log-probs (0 before ``first``).

        Only the positions that predict a trained token need the vocabulary projection: ``first`` is the first
        column of the batch with a trained token, and the model projects only the last ``T - first + 1``
        hidden states (``logits_to_keep``), which spares most of the (B, T, V) logits a long multimodal prompt
        would cost (at Qwen's 151,936-token vocabulary, the largest activation of the loss forward).

        Where :func:`vgym.engine.fast_paths.fast_paths` allows the shared-prompt forward, each group's prompt
        is run once (:func:`vgym.engine.shared_prefix.shared_prefix_logits`); elsewhere, and where sharing
        does not apply, the plain forward runs.
        """
        inputs = model_inputs(model, **batch)
        width = inputs["input_ids"].shape[1]
        keep = width - max(1, min(first, width - 1)) + 1
        extra = {"logits_to_keep": keep} if keep < width and forward_accepts(model, "logits_to_keep") else {}
        with shared_image_features(model):  # a group's episodes share their first image: encode it once
            logits = None
            # and their prompt: run it once (not on FSDP2 shards: it calls submodules outside the forward)
            if fast_paths(model).shared_prompt and not self.parallel.sharded:
                logits = shared_prefix_logits(model, inputs, width - keep + 1)
            if logits is None:
                logits = model(**inputs, **extra).logits
        logits = logits / self.config.temperature
        if self.suppressed_ids:  # the rollout never samples image placeholders: score the same distribution
            logits[..., self.suppressed_ids] = -1e9  # finite, so entropy's p * log p stays 0, not NaN
        logprobs = token_logprobs(logits, inputs["input_ids"][:, width - logits.shape[1] :])
        return logits, torch.nn.functional.pad(logprobs, (width - logits.shape[1], 0))

    def loss_on(self, trajs: Sequence[Trajectory], advantages: torch.Tensor, loss_mask: torch.Tensor,
                old: torch.Tensor, num_items: int, *,
                importance: ImportanceStats | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The objective on ``trajs`` (rows of the step batch already sliced to them); ``importance``, when
        given, also counts the ratio of these log-probs over the rollout's (``old``)."""
        cfg = self.config
        batch = collate(trajs, self.pad_id)
        batch.pop("loss_mask")
        width = batch["input_ids"].shape[1]
        loss_mask, advantages, old = loss_mask[:, :width], advantages[:, :width], old[:, :width]
        trained = loss_mask.any(0).nonzero()
        first = int(trained[0]) if len(trained) else width - 1
        if self._scorer is not None:  # DDP: through the wrapper, whose backward averages the gradients
            logits, logprobs = self._scorer(batch, first)
        else:
            logits, logprobs = self._logits(self.model, batch, first)
        device = logprobs.device
        loss_mask, advantages, old = loss_mask.to(device), advantages.to(device), old.to(device)
        if importance is not None:
            importance.update(logprobs, old, loss_mask)
        ref = None
        if cfg.beta > 0:
            with torch.no_grad():
                if self.ref_is_base:
                    with self.model.disable_adapter():  # LoRA: the base weights are the reference
                        ref = self._logits(self.model, batch, first)[1]
                else:
                    ref = self._logits(self.ref_model, batch, first)[1]
        entropy = None
        if cfg.entropy_coef > 0:
            entropy = torch.nn.functional.pad(entropy_from_logits(logits), (width - logits.shape[1], 0))
        with torch.no_grad():
            chosen = (logprobs * loss_mask).sum() / loss_mask.sum().clamp(min=1)
        loss, metrics = compute_policy_objective(
            logprobs, old, advantages, loss_mask, self.loss_settings, num_items_in_batch=num_items,
            ref_logprobs=ref, turn_ids=turn_ids_from_mask(loss_mask), entropy=entropy)
        metrics["actor/logprob_mean"] = float(chosen)
        return loss, metrics

    def step(self) -> dict[str, float]:
        """One rollout + update step. Returns its metrics (``rollout/*`` -- with ``rollout/is_ratio_mean``,
        ``_min``, ``_max`` and ``rollout/logprob_abs_diff`` of the first minibatch --, ``adv/*``, ``loss/*``,
        ``actor/*``, ``optim/*``, ``perf/*``) and logs any alarm."""
        start = time.perf_counter()
        trajs, metrics = self.collect()
        rollout_s = time.perf_counter() - start
        if not trajs:  # dynamic sampling found no group with a signal: nothing to learn from this step
            self.step_count += 1
            metrics["perf/step_s"] = time.perf_counter() - start
            fired = self.alarms.update(self.step_count, metrics)
            self.alarm_log += fired
            metrics["alarms"] = float(len(fired))
            return metrics
        metrics.update(self.learn(trajs))
        self.step_count += 1
        elapsed = time.perf_counter() - start
        tokens = self.parallel.sum([sum(len(t.input_ids) for t in trajs)])[0]  # all ranks' tokens
        metrics.update({"perf/step_s": elapsed, "perf/rollout_s": rollout_s,
                        "perf/tokens_per_s": tokens / elapsed})
        fired = self.alarms.update(self.step_count, metrics)
        self.alarm_log += fired
        metrics["alarms"] = float(len(fired))
        return metrics

    def learn(self, trajs: Sequence[Trajectory]) -> dict[str, float]:
        """The update half of a step, on episodes already rolled out: advantages, ``num_iterations`` passes of
        minibatch updates, then the learning-rate schedule's step (the step counter is :meth:`step`'s).

        Args:
            trajs: whole groups, in the single process's order; in a data-parallel job this rank's share,
                as :meth:`collect` deals it (:func:`~vgym.trainers.distributed.assign_groups`).

        Returns:
            The ``adv/*``, ``loss/*``, ``actor/*``, ``optim/*`` and ``rollout/is_ratio_*`` metrics, over every
            rank.
        """
        cfg = self.config
        metrics: dict[str, float] = {}
        full = collate(trajs, self.pad_id)
        loss_mask = full["loss_mask"].float()
        if cfg.mask_truncated_completions:
            keep = torch.tensor([0.0 if t.truncated else 1.0 for t in trajs])
            loss_mask = loss_mask * keep[:, None]
        advantages, adv_metrics = self._advantages(trajs, loss_mask)
        metrics.update(adv_metrics)
        old = torch.zeros_like(loss_mask)
        for row, t in enumerate(trajs):
            old[row, : len(t.logprobs)] = t.logprobs
        self.model.train()
        # each rank's share of a minibatch (assign_groups): a 1/W run of the global minibatch's rows
        size = (cfg.mini_batch_size or int(self.parallel.sum([len(trajs)])[0])) // self.parallel.world_size
        updates: list[dict[str, float]] = []
        importance = ImportanceStats()  # filled by the first minibatch, scored before any weight changes
        for _ in range(cfg.num_iterations):
            for lo in range(0, len(trajs), size):
                rows = list(range(lo, min(lo + size, len(trajs))))
                first_update = not updates
                updates.append(self._update(trajs, rows, advantages, loss_mask, old,
                                            importance=importance if first_update else None))
        done = [u for u in updates if u]
        trained: dict[str, float] = {}
        for key in done[-1] if done else ():
            trained[key] = float(np.mean([u[key] for u in done if key in u]))
        metrics.update(self.parallel.mean_metrics(trained))
        metrics.update(importance.merged(self.parallel.gather(importance)).metrics())
        metrics["optim/skipped_minibatches"] = float(len(updates) - len(done))
        metrics["optim/lr"] = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        return metrics

    def _update(self, trajs: Sequence[Trajectory], rows: list[int], advantages: torch.Tensor,
                loss_mask: torch.Tensor, old: torch.Tensor, *,
                importance: ImportanceStats | None = None) -> dict[str, float]:
        """One optimizer step on ``rows``, in ``gradient_accumulation_steps`` micro-batches (each also counted
        into ``importance`` when given); none (and no metrics) when ``rows`` hold no trained token."""
        cfg, par = self.config, self.parallel
        # the minibatch's policy tokens and episodes over every rank (their own rows in one process)
        items, episodes = par.sum([float(loss_mask[rows].sum()), len(rows)])
        num_items, global_rows = int(items), int(episodes)
        if num_items == 0:  # every token masked (e.g. all episodes truncated and masked): nothing to learn
            return {}
        self.optimizer.zero_grad(set_to_none=True)
        micro = max(1, math.ceil(len(rows) / cfg.gradient_accumulation_steps))
        whole_step = LOSS_TYPES.get(cfg.loss_type).whole_step
        wrapped = self._scorer if self._scorer is not None else self.model
        parts: list[dict[str, float]] = []
        for lo in range(0, len(rows), micro):
            sub = rows[lo : lo + micro]
            with par.gradient_sync(wrapped, enabled=lo + micro >= len(rows)):  # all-reduce on the last one
                loss, m = self.loss_on([trajs[i] for i in sub], advantages[sub], loss_mask[sub], old[sub],
                                       num_items, importance=importance)
                # a whole-step aggregation (dapo) already divides by the minibatch's token count (of every
                # rank); the others are per-micro-batch means, weighted by their share of the minibatch's
                # episodes. Times W: torch averages the ranks' gradients, and the objective is their sum.
                share = par.world_size if whole_step else None
                scaled = loss * share if share else loss * len(sub) * par.world_size / global_rows
                scaled.backward()
            parts.append(m)
        params = [p for p in self.model.parameters() if p.requires_grad]
        limit = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        out = {k: float(np.mean([p[k] for p in parts if k in p])) for k in parts[0]}
        out["optim/grad_norm"] = par.grad_norm(torch.nn.utils.clip_grad_norm_(params, limit))
        self.optimizer.step()
        if self.sync_weights is not None:  # a policy with its own copy of the weights plays the new ones
            self.sync_weights(self.model)
        return out

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

    # ---------------------------------------------------------------- checkpoints

    def save(self, folder: str | Path) -> Path:
        """Save a checkpoint: a complete model folder (weights, config, processor, chat template; for LoRA the
        adapters and their base's folder — :func:`vgym.trainers.checkpoints.write_checkpoint`) that
        ``hf:<folder>`` loads, and ``grpo_state.pt`` with the trainer state needed for an exact resume.

        The folder is written whole to a hidden temporary sibling, then renamed into place (replacing an older
        save of the same name), so a kill or a full disk mid-save never leaves a partial ``folder``.

        In a data-parallel job every rank must call it; rank 0 writes, with every rank's sampling state.

        Raises:
            OSError: if the checkpoint cannot be written (e.g. a full disk), naming ``folder``; it is
                unchanged.
        """
        par = self.parallel
        weights, optimizer = par.full_state(self.model, self.optimizer)  # FSDP2: gathered to rank 0
        state = {"optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
                 "step": self.step_count, "data_position": self.data_position,
                 "alarms": self.alarms.state_dict(), "config": _plain(asdict(self.config)),
                 "alarm_log": self.alarm_log}
        if isinstance(self.policy, StatefulPolicy):  # e.g. the generator the sampling seeds come from
            states = par.gather(self.policy.state_dict())
            state["policy"] = states[0]
            if par.enabled:  # every rank's stream, for an exact resume at the same world size
                state["policy_ranks"] = states
        if par.is_main:
            write_checkpoint(folder, self.model, self.processor, state, "grpo_state.pt", weights=weights)
        par.barrier()  # the checkpoint exists for every rank once save returns
        return Path(folder)

    def load(self, folder: str | Path) -> None:
        """Restore a :meth:`save` into this trainer (weights in place, then ``sync_weights``), and the
        policy's sampling state when the policy is a :class:`~vgym.policies.base.StatefulPolicy`.

        In a data-parallel job every rank loads. Weights, optimizer, step, data position and alarms do not
        depend on the world size, so a checkpoint resumes at any world size the config allows; each rank's
        sampling stream is restored only at the world size it was saved with (an exact continuation), and at
        another one every rank keeps its fresh stream (logged).

        Raises:
            InvalidConfigError: if the checkpoint was made with a different config (``steps`` may differ: a
                run can be extended), or holds no sampling state for this trainer's stateful policy.
        """
        folder = Path(folder)
        state = torch.load(folder / "grpo_state.pt", weights_only=True)
        saved, now = dict(state["config"]), _plain(asdict(self.config))
        saved.pop("steps", None)
        now.pop("steps", None)
        if saved != now:
            changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise InvalidConfigError(f"checkpoint config differs from this run's in {changed}: {saved} vs "
                                     f"{now}")
        if "policy" not in state and "policy_rng" in state:  # checkpoints of vgym <= the sixth session
            state["policy"] = {"rng": state["policy_rng"]}  # held HFPolicy's generator state under this key
        if isinstance(self.policy, StatefulPolicy) and "policy" not in state:
            raise InvalidConfigError(f"checkpoint {folder} holds no sampling state for the policy "
                                     f"({type(self.policy).__name__}), so a resumed run would not sample as "
                                     "the saved one would have; resume with the kind of policy it was saved "
                                     "with.")
        par = self.parallel
        weights = None
        if par.sharded:  # whole weights from the folder, each rank keeping its shard
            weights = type(self.model).from_pretrained(folder, local_files_only=True).state_dict()
        else:
            restore_weights(self.model, folder, state.get("adapters"))  # LoRA: the adapters; the base stays
        par.load_full_state(self.model, self.optimizer, weights, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count, self.data_position = int(state["step"]), int(state["data_position"])
        if isinstance(self.policy, StatefulPolicy):
            streams = state.get("policy_ranks", [state["policy"]])
            if len(streams) == par.world_size:
                self.policy.load_state_dict(streams[par.rank])
            elif par.is_main:
                logger.warning("checkpoint %s was saved by %d ranks, this job has %d: weights, optimizer and "
                               "data position continue, sampling restarts from each rank's seed", folder,
                               len(streams), par.world_size)
        if self.sync_weights is not None:
            self.sync_weights(self.model)
        self.alarms.load_state_dict(state["alarms"])
        self.alarm_log = list(state.get("alarm_log", []))


class _Scorer(torch.nn.Module):
    """The training forward as one module, so that DDP can wrap it: ``forward(batch, first)`` is
    ``score(model, batch, first)`` (the trainer's ``_logits``), with ``model`` registered as a submodule."""

    def __init__(self, model: Any, score: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.model = model
        self.score = score

    def forward(self, batch: dict[str, torch.Tensor], first: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score(self.model, batch, first)


def _check_world(config: GRPOConfig, world_size: int) -> None:
    """Raise unless a step's groups, and each minibatch's, split evenly over ``world_size`` ranks."""
    if world_size == 1:
        return
    if config.prompts_per_step % world_size:
        raise InvalidConfigError(f"grpo.prompts_per_step ({config.prompts_per_step}) must be a multiple of "
                                 f"the number of processes ({world_size}): each rank plays whole groups")
    step = config.num_generations * world_size
    if config.mini_batch_size is not None and config.mini_batch_size % step:
        raise InvalidConfigError(f"grpo.mini_batch_size ({config.mini_batch_size}) must be a multiple of "
                                 f"num_generations x processes ({step}): each rank trains whole groups of "
                                 "every minibatch")


def _loaded(trajs: Sequence[Trajectory]) -> list[Trajectory]:
    """Drop episodes whose sample's media could not be loaded (``truncated_reason`` ``sample_error: ...``; no
    tokens). A sample's episodes form one group, so whole groups go."""
    return [t for t in trajs if not t.sample_failed]


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists (a config compared after a round trip through ``torch.save``)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
