"""Adapters for users who keep verl: a custom reward function, dataset rows and an agent loop that plays vgym
envs.

Contents: :func:`compute_score`, :func:`verl_row`, :class:`VerlEpisode`, :func:`play_episode`,
:func:`agent_loop_config`, ``VgymAgentLoop`` (built on first access; needs verl).

Written against verl's agent-loop API (``verl/experimental/agent_loop/agent_loop.py``; tested with verl
0.9.1 from the registry, whose own ``AgentLoopWorker`` runs it in ``tests/trainers/test_verl_adapter.py``):
``AgentLoopBase.__init__(trainer_config, server_manager, tokenizer, processor, dataset_cls, data_config,
**kw)``, ``async run(sampling_params, **row) -> AgentLoopOutput(prompt_ids, response_ids, response_mask,
response_logprobs, multi_modal_data, reward_score, num_turns, metrics)``, and
``server_manager.generate(request_id, *, prompt_ids, sampling_params, image_data) -> TokenOutput(token_ids,
log_probs)``. verl is imported only when ``VgymAgentLoop`` is first accessed.

Two ways in:

* Single turn with verl's own agent loop (or its legacy rollout): rows from :func:`verl_row` with ``tools=()``
  and ``custom_reward_function.path=<this file>``, ``name=compute_score``. The score is the task's scorer on
  the first ``<answer>`` of the response (as the env reads it).
* Multi-turn tool use: ``actor_rollout_ref.rollout.agent.agent_loop_config_path`` pointing at a YAML list made
  by :func:`agent_loop_config`, rows from :func:`verl_row` (``agent_name`` set). ``VgymAgentLoop`` runs a
  :class:`~vgym.env.VisualToolEnv` episode per row: the env builds the prompt, parses every turn with its own
  protocol, runs its tools and scores the episode; the loop sends ids and images to verl's inference server
  and returns the append-only sequence (env tokens masked out) with the env's reward as ``reward_score`` (verl
  then skips its reward function for that row). The token logic is :func:`play_episode`, which needs no verl.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from PIL import Image

from vgym.env import VisualToolEnv
from vgym.protocol import HermesProtocol
from vgym.rollout.chat import ChatEncoder
from vgym.task import TASKS
from vgym.trainers.trl_adapter import parse_sample_id  # imports neither TRL nor datasets

__all__ = ["compute_score", "verl_row", "VerlEpisode", "play_episode", "agent_loop_config"]
# ``VgymAgentLoop`` is left out of ``__all__``: ``import *`` would then need verl.

Generate = Callable[[list[int], list[Image.Image], int], Awaitable[tuple[list[int], list[float] | None]]]
"""``generate(ids, images, max_tokens) -> (new ids, their log-probs or None)``: one model turn."""


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """verl's custom reward function: the task's score of the response's answer.

    Args:
        data_source: ``"vgym/<task>"`` (as :func:`verl_row` writes it).
        solution_str: the decoded response (every turn, tool results included for multi-turn rows).
        ground_truth: the gold answer; used only to check that the rebuilt sample is the row's.
        extra_info: must hold ``sample_id`` and may hold ``task_config`` (the row's; see :func:`verl_row`).
        **kwargs: what verl adds by name (reward router address, ...), unused.

    Returns:
        ``task.score(sample, answer)`` for the first ``<answer>…</answer>`` (the one the env would take), 0.0
        without one.

    Raises:
        ValueError: without ``extra_info["sample_id"]``, for a ``data_source`` that is not ``vgym/<task>`` of
            the sample's task, or when the rebuilt sample's answer differs from ``ground_truth`` (another data
            seed or task config than the rows were made with).
    """
    if not extra_info or "sample_id" not in extra_info:
        raise ValueError("vgym rows carry extra_info['sample_id'] (see verl_row); this row has none")
    task_name, split, seed, index = parse_sample_id(extra_info["sample_id"])
    if data_source != f"vgym/{task_name}":
        raise ValueError(f"data_source {data_source!r} does not match the sample's task {task_name!r}")
    answer = HermesProtocol().parse(solution_str).answer
    if answer is None:
        return 0.0
    task = TASKS.get(task_name)(extra_info.get("task_config"))
    sample = task.sample(split, index, seed)
    if sample.answer != ground_truth:
        raise ValueError(
            f"sample {extra_info['sample_id']} rebuilt with answer {sample.answer!r}, but the row's "
            f"ground truth is {ground_truth!r}: pass the rows' task_config in extra_info"
        )
    return float(task.score(sample, answer))


def verl_row(task: str, split: str, index: int, seed: int, *, tools: tuple[str, ...] | None = (),
             task_config: dict[str, Any] | None = None, max_pixels: int = 224 * 224,
             agent_name: str | None = None) -> dict[str, Any]:
    """One row of a verl RL dataset (write a list of them with
    ``datasets.Dataset.from_list(...).to_parquet``).

    Args:
        task / split / index / seed: the sample (``seed`` is the env's ``data_seed``).
        tools: the env's tools (None: the task's defaults; ``()``: tools off, a single-turn row).
        task_config: the task's config fields; stored in ``extra_info``.
        max_pixels: image budget; images are stored fitted to it, as the env shows them.
        agent_name: verl's ``agent_name`` column (e.g. the name given to :func:`agent_loop_config`); None
            omits it.

    Returns:
        ``data_source`` (``"vgym/<task>"``), ``prompt`` (the env's messages as strings, images as verl's
        ``<image>`` placeholders), ``images`` (PIL), ``ability``, ``reward_model`` (rule, gold answer) and
        ``extra_info`` (``sample_id``, ``split``, ``index``, ``task_config``), plus ``agent_name`` when given.
    """
    env = VisualToolEnv(
        task, task_config=task_config, tools=tools, split=split, data_seed=seed, max_pixels=max_pixels
    )
    obs, info = env.reset(seed=index, options={"split": split, "index": index})
    prompt = [{"role": m["role"], "content": "".join("<image>" if p["type"] == "image" else p["text"]
                                                    for p in m["content"])} for m in info["messages"]]
    row: dict[str, Any] = {
        "data_source": f"vgym/{task}",
        "prompt": prompt,
        "images": [Image.fromarray(im) for im in obs["images"]],
        "ability": "visual_tool_use" if env.tools_enabled else "visual",
        "reward_model": {"style": "rule", "ground_truth": env.sample.answer},  # type: ignore[union-attr]
        "extra_info": {"sample_id": info["sample_id"], "split": split, "index": index,
                       "task_config": copy.deepcopy(task_config)},
    }
    if agent_name is not None:
        row["agent_name"] = agent_name
    env.close()
    return row


@dataclass
class VerlEpisode:
    """One played episode in verl's terms (the fields of ``AgentLoopOutput``)."""

    prompt_ids: list[int]
    """The templated first message (system + user, images expanded to placeholders)."""
    response_ids: list[int] = field(default_factory=list)
    """Model turns and env messages after the prompt, append-only."""
    response_mask: list[int] = field(default_factory=list)
    """1 on tokens the model generated, 0 on env tokens and on an end-of-turn token added after a cut turn."""
    response_logprobs: list[float] | None = field(default_factory=list)
    """Behaviour log-probs aligned with ``response_ids`` (0 on env tokens); None if the server returned
    none."""
    images: list[Image.Image] = field(default_factory=list)
    """Every image shown, in placeholder order (the prompt's, then tool results')."""
    reward: float = 0.0
    """The env's composite reward; 0 when the token budget ran out first."""
    num_turns: int = 0
    """Model turns played."""
    env_messages: int = 0
    """Env messages appended after model turns (tool results, errors)."""
    truncated: bool = False
    """True when the env's turn/image budget or ``response_length`` ended the episode."""


async def play_episode(
    env: VisualToolEnv,
    encoder: ChatEncoder,
    generate: Generate,
    *,
    split: str,
    index: int,
    response_length: int,
    max_new_tokens: int,
) -> VerlEpisode:
    """Play sample ``index`` of ``split`` in ``env``, one :data:`Generate` call per model turn.

    Args:
        env: the env (reset here, seeded with ``index`` as vgym's GRPO trainer seeds a group).
        encoder: templates with the policy's processor (append-only deltas).
        generate: one model turn (verl's server in ``VgymAgentLoop``).
        split / index: the sample.
        response_length: most response tokens (model + env), never exceeded: turns get at most what is left,
            and an env message that does not fit ends the episode (truncated, reward 0).
        max_new_tokens: most tokens per model turn.

    Returns:
        The episode; ``prompt_ids + response_ids`` is exactly the sequence vgym's own rollout builds.
    """
    # env work (sample generation, tools) runs off the event loop, as verl's tools do
    loop = asyncio.get_running_loop()
    options = {"split": split, "index": index}
    obs, info = await loop.run_in_executor(None, lambda: env.reset(seed=index, options=options))
    chunk = encoder.encode_prompt(info["messages"], obs["images"])
    ep = VerlEpisode(
        prompt_ids=chunk.input_ids.tolist(), images=[Image.fromarray(im) for im in obs["images"]]
    )
    logprobs: list[float] = []
    got_logprobs = True
    end = encoder.turn_end_id
    while True:
        # 1 left for a closing end token
        budget = min(max_new_tokens, response_length - len(ep.response_ids) - 1)
        if budget < 1:
            ep.truncated = True
            break
        ids, lps = await generate(ep.prompt_ids + ep.response_ids, ep.images, budget)
        ids = list(ids)
        if end in ids:
            ids = ids[: ids.index(end) + 1]
        got_logprobs = got_logprobs and lps is not None
        lps = list(lps[: len(ids)]) if lps is not None else [0.0] * len(ids)
        trained = [1] * len(ids)
        # cut at the token budget: close the turn, untrained, as vgym's rollout does
        if not ids or ids[-1] != end:
            ids, trained, lps = ids + [end], trained + [0], lps + [0.0]
        ep.response_ids += ids
        ep.response_mask += trained
        logprobs += lps
        ep.num_turns += 1
        text = encoder.tokenizer.decode(ids[:-1], skip_special_tokens=False)
        obs, reward, terminated, truncated, info = await loop.run_in_executor(None, env.step, text)
        if terminated or truncated:
            ep.reward, ep.truncated = float(reward), bool(truncated)
            break
        delta = encoder.encode_delta(info["messages"], obs["images"]).input_ids.tolist()
        if len(ep.response_ids) + len(delta) >= response_length:
            ep.truncated = True  # the env's message does not fit: truncated, reward 0 (vgym's budget rule)
            break
        ep.response_ids += delta
        ep.response_mask += [0] * len(delta)
        ep.env_messages += 1
        logprobs += [0.0] * len(delta)
        ep.images += [Image.fromarray(im) for im in obs["images"]]
    ep.response_logprobs = logprobs if got_logprobs else None
    return ep


def agent_loop_config(name: str = "vgym_agent", *, max_new_tokens: int = 512,
                      env_config: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The entries of verl's ``agent_loop_config_path`` YAML for ``VgymAgentLoop``.

    Args:
        name: the ``agent_name`` rows select it with.
        max_new_tokens: most tokens per model turn.
        env_config: :class:`~vgym.env.EnvConfig` fields other than the task (tools, max_turns, max_pixels,
            task_config, ...); the task, split, index and data seed come from each row's sample id.

    Returns:
        ``[{"name": ..., "_target_": "vgym.trainers.verl_adapter.VgymAgentLoop", ...}]`` (dump it with
        ``yaml.safe_dump``); verl's worker instantiates the loop with hydra, passing the extra keys.
    """
    return [{"name": name, "_target_": f"{__name__}.VgymAgentLoop", "max_new_tokens": max_new_tokens,
             "env_config": dict(env_config or {})}]


def _build_agent_loop() -> type:
    """Define ``VgymAgentLoop`` on verl's ``AgentLoopBase`` (imports verl)."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput

    class VgymAgentLoop(AgentLoopBase):  # type: ignore[misc, valid-type]
        """verl agent loop that plays one vgym episode per row (see the module docstring)."""

        def __init__(self, *args: Any, max_new_tokens: int = 512, env_config: dict[str, Any] | None = None,
                     **kwargs: Any) -> None:
            kwargs.pop("name", None)  # hydra passes the YAML entry's keys, its name among them
            super().__init__(*args, **kwargs)
            self.max_new_tokens = max_new_tokens
            self.env_config = dict(env_config or {})
            self.response_length = self.config.actor_rollout_ref.rollout.response_length
            self.encoder = ChatEncoder(self.processor)

        async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> Any:
            task, split, seed, index = parse_sample_id(kwargs["extra_info"]["sample_id"])
            env = VisualToolEnv(task, **{**self.env_config, "data_seed": seed})
            request_id = uuid4().hex

            async def generate(ids: list[int], images: list[Image.Image],
                               max_tokens: int) -> tuple[list[int], list[float] | None]:
                out = await self.server_manager.generate(
                    request_id, prompt_ids=ids, sampling_params={**sampling_params, "max_tokens": max_tokens},
                    image_data=images or None)
                return out.token_ids, out.log_probs

            try:
                ep = await play_episode(
                    env,
                    self.encoder,
                    generate,
                    split=split,
                    index=index,
                    response_length=self.response_length,
                    max_new_tokens=self.max_new_tokens,
                )
            finally:
                env.close()
            return AgentLoopOutput(
                prompt_ids=ep.prompt_ids,
                response_ids=ep.response_ids,
                response_mask=ep.response_mask,
                response_logprobs=ep.response_logprobs,
                multi_modal_data={"images": ep.images} if ep.images else {},
                reward_score=ep.reward,
                num_turns=1 + ep.num_turns + ep.env_messages,
                metrics=AgentLoopMetrics(),
                extra_fields={"vgym_truncated": ep.truncated, "vgym_turns": ep.num_turns},
            )

    VgymAgentLoop.__module__ = __name__
    return VgymAgentLoop


_BUILT: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    """``VgymAgentLoop`` is defined on first access, so importing this module does not need verl."""
    if name == "VgymAgentLoop":
        if name not in _BUILT:
            _BUILT[name] = _build_agent_loop()
        return _BUILT[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

