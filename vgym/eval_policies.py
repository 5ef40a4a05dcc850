"""The policies ``vgym eval`` plays, and the player for text-only ones.

Contents: :class:`RandomAnswerPolicy`, :class:`PolicyMaker`, :func:`make_policy`, :func:`play_text`.

:func:`make_policy` turns an :attr:`~vgym.evaluate.EvalConfig.policy` spec (``oracle``, ``random``, ``hf:DIR``,
``vllm:DIR``, ``openai:URL[#model]``) into a :class:`PolicyMaker`, which builds the policy of each attempt from a
seed (model weights loaded once, shared by every attempt). Policies with a processor are played token by token
through :func:`vgym.rollout.rollout`; text-only ones (the oracle, the random baseline, OpenAI-compatible servers)
through :func:`play_text`, which keeps the chat and shown images as ``rollout`` does, tokens aside. Both report a
sample that cannot be loaded as a scored failure (``truncated_reason = "sample_error: ..."``), never an exception.

:mod:`vgym.evaluate` re-exports :class:`RandomAnswerPolicy`, :class:`PolicyMaker` and :func:`make_policy`.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vgym.chat import text_message
from vgym.dataset_io import MediaError
from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError
from vgym.policies.base import Policy, PolicyInput, PolicyOutput
from vgym.policies.oracle import OraclePolicy
from vgym.protocol import HermesProtocol
from vgym.registry import Registry
from vgym.rollout import EpisodeSpec
from vgym.task import TASKS, Task
from vgym.trajectory import Trajectory

if TYPE_CHECKING:
    from vgym.evaluate import EvalConfig

__all__ = ["RandomAnswerPolicy", "PolicyMaker", "make_policy", "play_text"]

logger = logging.getLogger(__name__)


class RandomAnswerPolicy:
    """Answers a uniformly random element of the task's :meth:`~vgym.task.Task.answer_choices` at once, without
    tools (``"unknown"`` for tasks without a finite answer set): the answer-prior baseline.

    The choice is drawn from ``SeedSequence([seed, crc32(sample id)])``, so it depends on the sample and the
    policy's seed only (not on batching or on which episodes ran before): a resumed run draws the same answers.
    """

    def __init__(self, seed: int = 0, *, tasks: Registry[type[Task]] = TASKS) -> None:
        self.seed, self.protocol, self._tasks = seed, HermesProtocol(), tasks
        self._instances: dict[str, Task] = {}

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        outputs = []
        for item in batch:
            task = item.task or self._instances.setdefault(item.sample.task, self._tasks.get(item.sample.task)())
            choices = task.answer_choices() or ("unknown",)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, zlib.crc32(item.sample.id.encode())]))
            outputs.append(PolicyOutput(self.protocol.format_answer(str(choices[int(rng.integers(len(choices)))]))))
        return outputs


@dataclass
class PolicyMaker:
    """A loaded policy backend: ``make(seed)`` builds the policy of one attempt (model weights are shared)."""

    make: Callable[[int], Policy]
    """Seed -> policy."""
    processor: Any = None
    """The model's processor for token-level rollouts (``hf:``/``vllm:``); None for text-only policies, which are
    played directly on the env (no token counts)."""


def make_policy(spec: str, config: EvalConfig | None = None) -> PolicyMaker:
    """Load the policy named by ``spec`` (see :attr:`vgym.evaluate.EvalConfig.policy`); ``config`` (default: its
    defaults) gives the device, sampling temperature, token limit and seed of model policies.

    Raises:
        InvalidConfigError: for an unknown spec form.
        FileNotFoundError: for a missing ``hf:``/``vllm:`` checkpoint directory.
    """
    if config is None:
        from vgym.evaluate import EvalConfig  # here, not at the top: vgym.evaluate imports this module

        config = EvalConfig(policy=spec)
    kind, _, rest = spec.partition(":")
    if spec == "oracle":
        return PolicyMaker(lambda seed: OraclePolicy(seed=seed))
    if spec == "random":
        return PolicyMaker(lambda seed: RandomAnswerPolicy(seed))
    if kind == "hf" and rest:
        from vgym.policies.hf import GenerationConfig, HFPolicy
        from vgym.tiny import load_vlm

        device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        model, processor = load_vlm(rest, device=device)
        gen = GenerationConfig(max_new_tokens=config.max_new_tokens, temperature=config.sampling_temperature)
        return PolicyMaker(lambda seed: HFPolicy(model, processor, gen, seed=seed), processor)
    if kind == "vllm" and rest:
        from transformers import AutoProcessor

        from vgym.policies.vllm import VLLMPolicy, VLLMPolicyConfig

        vcfg = VLLMPolicyConfig(model=rest, max_new_tokens=config.max_new_tokens,
                                temperature=config.sampling_temperature, seed=config.seed)
        first = VLLMPolicy(vcfg)  # builds the engine once; later attempts share it
        return PolicyMaker(lambda seed: VLLMPolicy(dataclasses.replace(vcfg, seed=seed), engine=first.engine),
                           AutoProcessor.from_pretrained(rest, local_files_only=True))
    if kind == "openai" and rest:
        from vgym.policies.openai import OpenAIPolicy, OpenAIPolicyConfig

        url, _, model = rest.partition("#")
        return PolicyMaker(lambda seed: OpenAIPolicy(OpenAIPolicyConfig(
            base_url=url, model=model or "default", temperature=config.sampling_temperature,
            max_tokens=config.max_new_tokens, seed=seed)))
    raise InvalidConfigError(f"unknown policy {spec!r}; expected oracle, random, hf:DIR, vllm:DIR or "
                             "openai:URL[#model]")


def play_text(env: VisualToolEnv, policy: Policy, specs: Sequence[EpisodeSpec], batch_size: int,
              on_episode: Callable[[Trajectory], None]) -> None:
    """Play ``specs`` on one env per slot in lockstep batches, for policies without a processor: the chat and the
    shown images are kept as :func:`~vgym.rollout.rollout` keeps them; trajectories carry no tokens.

    Args:
        env: the first slot's env; the other ``min(batch_size, len(specs)) - 1`` slots get copies of its config,
            closed on return (``env`` itself stays open: the caller closes it).
        policy: the text-only policy (its ``act`` gets empty token tensors).
        specs: the episodes, played in order, ``batch_size`` at a time.
        batch_size: episodes in flight.
        on_episode: called with each finished trajectory; a sample that cannot be loaded
            (:class:`~vgym.dataset_io.MediaError`) is logged and reported as a trajectory with reward 0 and
            ``truncated_reason = "sample_error: <error>"``, and the other episodes go on.
    """
    envs = [env] + [VisualToolEnv(env.config.task, **{f.name: getattr(env.config, f.name)
                                                     for f in dataclasses.fields(env.config) if f.name != "task"})
                    for _ in range(min(batch_size, len(specs)) - 1)]
    empty = torch.zeros(0, dtype=torch.long)
    try:
        for start in range(0, len(specs), batch_size):
            live = []
            for slot, spec in zip(envs, specs[start:start + batch_size]):
                try:
                    obs, info = slot.reset(seed=spec.seed, options={"split": spec.split, "index": spec.index})
                except MediaError as error:  # as in rollout(): this episode fails, the others go on
                    logger.warning("episode (split %r, index %d) scores 0: its sample could not be loaded: %s",
                                   spec.split, spec.index, error)
                    on_episode(Trajectory.failed(error.sample_id or f"{slot.task.name}/{spec.split}/{spec.index}",
                                                 spec.group_id, slot.task.name, error))
                    continue
                live.append({"env": slot, "spec": spec, "messages": list(info["messages"]),
                             "images": list(obs["images"]), "turns": []})
            while live:
                inputs = [PolicyInput(empty, None, None, list(e["messages"]), e["env"].sample, len(e["turns"]),
                                      e["env"].tools_enabled, e["env"].task, list(e["images"])) for e in live]
                for e, out in zip(live, policy.act(inputs)):
                    obs, reward, terminated, truncated, info = e["env"].step(out.text)
                    e["turns"].append({"text": out.text, "observation": obs["text"], "tool_calls": info["tool_calls"]})
                    e["messages"] += [text_message("assistant", out.text), *info["messages"]]
                    e["images"] += list(obs["images"])
                    if terminated or truncated:
                        e["done"] = True
                        on_episode(Trajectory(
                            e["env"].sample.id, e["spec"].group_id, e["env"].sample.task, empty, empty,
                            torch.zeros(0), e["images"], None, None, e["turns"], float(reward),
                            info["reward_parts"], info["answer"], terminated, truncated,
                            "turns_or_images" if truncated else None))
                live = [e for e in live if not e.get("done")]
    finally:
        for extra in envs[1:]:
            extra.close()
