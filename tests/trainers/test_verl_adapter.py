"""Tests of trainers/verl_adapter.py. The reward function, the rows and the episode logic
(:func:`play_episode`, driven by the real tiny model or by the scripted oracle as the "server") run without
verl; the ``AgentLoopBase`` subclass and verl's own ``AgentLoopWorker`` running it need verl
(``pytest.importorskip``), which ``make test`` does not install: ``.ci/run`` runs this file again in a second
venv with ``pip install '.[verl]'`` (verl 0.9.1 and transformers 5.10 from the registry)."""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest
import torch
from oracle_play import oracle_input
from PIL import Image

from vgym.env import VisualToolEnv
from vgym.policies.base import PolicyInput
from vgym.policies.hf import GenerationConfig, HFPolicy
from vgym.policies.oracle import OraclePolicy
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout
from vgym.trainers.verl_adapter import agent_loop_config, compute_score, play_episode, verl_row

TASK = "visual_search"


def test_compute_score_uses_the_task_scorer() -> None:
    row = verl_row(TASK, "train", 2, 0)
    gold, info = row["reward_model"]["ground_truth"], row["extra_info"]
    wrong = next(a for a in ("horizontal", "vertical", "checkered") if a != gold)
    assert compute_score("vgym/visual_search", f"<answer>{gold}</answer>", gold, info) == 1.0
    assert compute_score("vgym/visual_search", f"<answer>{wrong}</answer>", gold, info) == 0.0
    assert compute_score("vgym/visual_search", "I think it is striped", gold, info) == 0.0
    # A multi-turn response: the env takes the first answer, after the tool call and its result.
    multi = (
        f'<tool_call>{{"name": "crop", "arguments": {{"box": [0, 0, 9, 9]}}}}</tool_call>\nuser\n'
        f"<tool_response>crop</tool_response>\nassistant\n<answer>{gold}</answer> <answer>{wrong}</answer>"
    )
    assert compute_score("vgym/visual_search", multi, gold, info) == 1.0
    with pytest.raises(ValueError, match="sample_id"):
        compute_score("vgym/visual_search", "<answer>x</answer>", gold, {})
    with pytest.raises(ValueError, match="does not match the sample's task"):
        compute_score("openai/gsm8k", "<answer>x</answer>", gold, info)
    # Data seed 5's sample 2 is another scene with another answer: a row scored against the wrong seed is
    # caught.
    assert VisualToolEnv(TASK).task.sample("train", 2, 5).answer != gold
    with pytest.raises(ValueError, match="ground truth"):
        compute_score(
            "vgym/visual_search", "<answer>x</answer>", gold, {**info, "sample_id": f"{TASK}/train/5/2"}
        )


def test_verl_row_layout() -> None:
    row = verl_row(TASK, "val", 4, 3, tools=None, agent_name="vgym_agent")
    assert row["data_source"] == "vgym/visual_search" and row["agent_name"] == "vgym_agent"
    assert row["extra_info"]["sample_id"] == f"{TASK}/val/3/4"
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert sum(m["content"].count("<image>") for m in row["prompt"]) == len(row["images"]) == 1
    assert "crop" in row["prompt"][0]["content"] and row["ability"] == "visual_tool_use"
    width, height = row["images"][0].size
    assert width * height <= 224 * 224
    env = VisualToolEnv(TASK, split="val", data_seed=3)
    assert row["reward_model"]["ground_truth"] == env.task.sample("val", 4, 3).answer
    assert "agent_name" not in verl_row(TASK, "train", 0, 0)


def test_agent_loop_config_entry() -> None:
    (entry,) = agent_loop_config(
        "vgym_crop", max_new_tokens=64, env_config={"tools": ["crop"], "max_turns": 3}
    )
    assert entry == {"name": "vgym_crop", "_target_": "vgym.trainers.verl_adapter.VgymAgentLoop",
                     "max_new_tokens": 64, "env_config": {"tools": ["crop"], "max_turns": 3}}


def _oracle_server(env: VisualToolEnv, encoder: ChatEncoder):  # type: ignore[no-untyped-def]
    """A ``generate`` whose model is the scripted oracle: it reads the episode's sample from ``env`` and
    returns the ids of its turn text, as a server returns the ids of what it sampled."""
    oracle = OraclePolicy()
    turn = [0]

    async def generate(ids: list[int], images: list[Image.Image], max_tokens: int) -> tuple[list[int], None]:
        item = oracle_input(env, turn[0])
        turn[0] += 1
        return encoder.encode_policy_text(oracle.act([item])[0].text), None

    return generate


@pytest.mark.parametrize("index", [0, 3])
def test_play_episode_matches_vgym_rollout(tiny, index: int) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    encoder = ChatEncoder(processor)
    env_fn = functools.partial(VisualToolEnv, TASK, tools=("crop",))
    env = env_fn()
    ep = asyncio.run(play_episode(env, encoder, _oracle_server(env, encoder), split="train", index=index,
                                  response_length=4096, max_new_tokens=256))
    (traj,) = rollout(
        env_fn,
        OraclePolicy(),
        encoder,
        [EpisodeSpec("train", index, seed=index)],
        RolloutConfig(batch_size=1),
    )
    assert ep.prompt_ids + ep.response_ids == traj.input_ids.tolist()
    assert ep.response_mask == traj.loss_mask.tolist()[len(ep.prompt_ids) :]
    assert ep.reward == traj.reward == 1.0 and ep.num_turns == 2 and ep.env_messages == 1 and not ep.truncated
    assert len(ep.images) == len(traj.images) == 2
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(ep.images, traj.images))
    assert ep.response_logprobs is None  # the oracle "server" returns no log-probs


def test_play_episode_with_the_tiny_model_respects_budgets(tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    encoder = ChatEncoder(processor)
    policy = HFPolicy(model, processor, GenerationConfig(max_new_tokens=64, temperature=1.0), seed=0)
    image_processor = processor.image_processor
    budgets: list[int] = []

    async def generate(
        ids: list[int], images: list[Image.Image], max_tokens: int
    ) -> tuple[list[int], list[float]]:
        pixels = image_processor(images=images, return_tensors="pt")  # what a server does with the images
        policy.config.max_new_tokens = max_tokens
        budgets.append(max_tokens)
        (out,) = policy.act(
            [PolicyInput(torch.tensor(ids), pixels["pixel_values"], pixels["image_grid_thw"], [], 0, True)]
        )
        return out.token_ids, out.logprobs  # type: ignore[return-value]

    env = VisualToolEnv(TASK, tools=("crop",), max_turns=4)
    ep = asyncio.run(play_episode(env, encoder, generate, split="train", index=1, response_length=40,
                                  max_new_tokens=16))
    # The random model never answers: 16-token turns separated by error messages until 40 tokens are used.
    assert ep.truncated and ep.reward == 0.0 and ep.num_turns >= 1
    assert budgets[0] == 16 and all(b <= 16 for b in budgets)
    assert len(ep.response_ids) == len(ep.response_mask) == len(ep.response_logprobs)  # type: ignore[arg-type]
    assert len(ep.response_ids) <= 40  # verl pads responses to response_length: never longer
    assert sum(ep.response_mask) >= 1 and ep.response_mask[0] == 1
    assert all(lp == 0.0 for lp, m in zip(ep.response_logprobs, ep.response_mask) if m == 0)  # type: ignore[arg-type]
    assert all(lp < 0.0 for lp, m in zip(ep.response_logprobs, ep.response_mask) if m == 1)  # type: ignore[arg-type]
    ids = torch.tensor(ep.prompt_ids + ep.response_ids)
    grids = image_processor(images=ep.images, return_tensors="pt")["image_grid_thw"]
    encoder.check_image_tokens([ids], [grids])  # placeholders match the images the loop reports


def _verl_processor(processor, model_dir):  # type: ignore[no-untyped-def]
    """The tiny processor as verl's ``hf_processor`` prepares a Qwen2-VL one: the model config attached and
    ``Qwen2VLModel``'s position methods bound to it. (verl picks the model by the processor's class name;
    the tiny model's processor is a ``Qwen2VLProcessor`` subclass without the video processor, which needs
    torchvision — not installable with the CPU torch here — so verl's lookup by name does not know it.)"""
    import types

    from transformers import AutoConfig
    from transformers.models.qwen2_vl import Qwen2VLModel

    processor.config = AutoConfig.from_pretrained(model_dir)
    processor.get_rope_index = types.MethodType(Qwen2VLModel.get_rope_index, processor)
    if hasattr(Qwen2VLModel, "get_vision_position_ids"):
        processor.get_vision_position_ids = types.MethodType(Qwen2VLModel.get_vision_position_ids, processor)
    return processor


def test_verl_agent_loop_worker_plays_vgym_episodes(  # type: ignore[no-untyped-def]
    tiny_dir, tmp_path
) -> None:
    """verl's own ``AgentLoopWorker`` (verl from the registry; CI installs it in a separate venv) reads the
    YAML of :func:`agent_loop_config`, instantiates ``VgymAgentLoop`` with hydra, runs a batch of rows from
    :func:`verl_row` and pads, scores and stacks the outputs as it does for training. Only the inference
    server is ours: verl's is a vLLM/SGLang actor; here the scripted oracle answers through verl's
    ``TokenOutput``. The padded sequences are exactly vgym's own rollouts of the same samples."""
    pytest.importorskip("verl", reason="verl is not installed (CI installs it in a separate venv)")
    import yaml
    from hydra import compose, initialize_config_module
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.protocol import DataProto
    from verl.workers.rollout.replica import TokenOutput

    from vgym.engine.tiny import load_vlm

    _, processor = load_vlm(tiny_dir)
    encoder = ChatEncoder(processor)
    env_config = {"tools": ["crop"], "max_turns": 4}
    loops = tmp_path / "agent_loops.yaml"
    entries = agent_loop_config("vgym_crop", max_new_tokens=256, env_config=env_config)
    loops.write_text(yaml.safe_dump(entries))
    with initialize_config_module("verl.trainer.config", version_base=None):
        config = compose("ppo_trainer", overrides=[
            f"actor_rollout_ref.model.path={tiny_dir}",
            "actor_rollout_ref.rollout.name=vllm",  # mandatory; the server below stands in for it
            f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops}",
            "actor_rollout_ref.rollout.prompt_length=2048",
            "actor_rollout_ref.rollout.response_length=512",
        ])
    indices = [0, 3]
    keys = {}  # first prompt -> an env holding that episode's sample (the oracle's answer key)
    for index in indices:
        key_env = VisualToolEnv(TASK, **env_config)
        obs, info = key_env.reset(seed=index, options={"split": "train", "index": index})
        keys[tuple(encoder.encode_prompt(info["messages"], obs["images"]).input_ids.tolist())] = key_env
    oracle, turns, episodes = OraclePolicy(), {}, {}

    class OracleServer:
        """verl's ``LLMServerClient.generate`` contract, answered by the scripted oracle."""

        async def generate(  # type: ignore[no-untyped-def]
            self, request_id, *, prompt_ids, sampling_params, image_data=None, **kwargs
        ):
            key_env = episodes.setdefault(request_id, keys.get(tuple(prompt_ids)))
            turn = turns[request_id] = turns.get(request_id, -1) + 1
            assert key_env is not None and sampling_params["max_tokens"] <= 256
            text = oracle.act([oracle_input(key_env, turn)])[0].text
            return TokenOutput(token_ids=encoder.encode_policy_text(text))

    worker = AgentLoopWorker(config, OracleServer())
    worker.processor = _verl_processor(processor, tiny_dir)
    rows = [verl_row(TASK, "train", i, 0, tools=tuple(env_config["tools"]), agent_name="vgym_crop")
            for i in indices]

    def column(values: list) -> np.ndarray:  # type: ignore[type-arg]
        """A 1-D object array, as verl's dataset gives each non-tensor field (lists stay whole)."""
        array = np.empty(len(values), dtype=object)
        array[:] = [None] * len(values)
        for i, value in enumerate(values):
            array[i] = value
        return array

    batch = DataProto.from_dict(
        non_tensors={"agent_name": column([r["agent_name"] for r in rows]),
                     "raw_prompt": column([r["prompt"] for r in rows]),
                     "extra_info": column([r["extra_info"] for r in rows]), "index": np.array(indices)},
        meta_info={"validate": False},
    )
    result = asyncio.run(worker.generate_sequences(batch))
    out, extra = result.batch, result.non_tensor_batch

    trajs = rollout(functools.partial(VisualToolEnv, TASK, **env_config), OraclePolicy(), encoder,
                    [EpisodeSpec("train", i, seed=i) for i in indices], RolloutConfig(batch_size=2))
    width = out["prompts"].shape[1]  # prompts are left-padded to it, responses right-padded after it
    for row, traj in enumerate(trajs):
        real = out["attention_mask"][row].bool()
        assert out["input_ids"][row][real].tolist() == traj.input_ids.tolist()
        prompt, response = int(real[:width].sum()), int(real[width:].sum())
        assert out["response_mask"][row][:response].tolist() == traj.loss_mask.tolist()[prompt:]
        assert not out["response_mask"][row][response:].any()
        assert out["rm_scores"][row][response - 1] == traj.reward == 1.0  # on the last response token
        assert out["rm_scores"][row].count_nonzero() == 1
        # verl re-processes the images the loop reports: the question's image and the crop, as vgym's
        assert extra["multi_modal_inputs"][row]["image_grid_thw"].tolist() == traj.image_grid_thw.tolist()
        assert out["position_ids"][row].shape == (4, real.numel())  # text + 3 M-RoPE rows
    assert extra["__num_turns__"].tolist() == [4, 4]  # user, assistant, tool, assistant


def test_verl_agent_loop_class_builds_on_verl() -> None:
    pytest.importorskip("verl", reason="verl is not installed; VgymAgentLoop subclasses its AgentLoopBase")
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase

    from vgym.trainers import verl_adapter

    assert issubclass(verl_adapter.VgymAgentLoop, AgentLoopBase)
    assert verl_adapter.VgymAgentLoop.__module__ == "vgym.trainers.verl_adapter"


def test_module_imports_without_verl() -> None:
    from vgym.trainers import verl_adapter

    with pytest.raises(AttributeError, match="no attribute"):
        verl_adapter.NotThere  # noqa: B018
    assert isinstance(verl_adapter.agent_loop_config(), list)
