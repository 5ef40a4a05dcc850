"""Tests of vgym/policies/vllm.py without vLLM (it needs a CUDA GPU and is not installed here): prompt
building from a real first turn, log-prob extraction, the weight-sync plumbing, and the missing-vLLM error.

The boundary: vLLM's own objects are replaced by plain stand-ins shaped as its documented API describes them
-- ``CompletionOutput`` (``token_ids``, ``logprobs``: one ``{token_id: Logprob}`` dict per position,
``Logprob`` with a ``logprob`` attribute) and the two ``LLM`` methods weight sync calls (``apply_model(func)``
runs ``func`` on the model in each worker, ``reset_prefix_cache()``). Whether the real engine behaves so is
untested here; generation itself (``VLLMPolicy.act``) needs vLLM and is not run.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError, VgymError
from vgym.policies.base import PolicyInput
from vgym.policies.vllm import (
    VLLMPolicy,
    VLLMPolicyConfig,
    build_vllm_prompt,
    chosen_logprobs,
    completion_to_output,
)
from vgym.rollout.chat import ChatEncoder


class FakeModel:
    """Stands in for the engine's ``nn.Module``: records what its ``load_weights`` received."""

    def __init__(self) -> None:
        self.loaded: list[tuple[str, torch.Tensor]] = []

    def load_weights(self, weights: Any) -> set[str]:
        self.loaded.extend(weights)
        return {name for name, _ in self.loaded}


class FakeEngine:
    """Stands in for ``vllm.LLM`` with two workers; records the order of calls. With ``pickled`` the function
    crosses a pickle round trip first, as it does to reach workers in other processes."""

    def __init__(self, tokenizer: Any, *, pickled: bool = False) -> None:
        self.tokenizer = tokenizer
        self.pickled = pickled
        self.workers = [FakeModel(), FakeModel()]
        self.calls: list[str] = []

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def apply_model(self, func: Any) -> list[Any]:
        self.calls.append("apply_model")
        if self.pickled:
            func = pickle.loads(pickle.dumps(func))
        return [func(model) for model in self.workers]

    def reset_prefix_cache(self) -> bool:
        self.calls.append("reset_prefix_cache")
        return True


def _logprob(value: float) -> SimpleNamespace:
    return SimpleNamespace(logprob=value, rank=1, decoded_token=None)


def _first_turn(processor: Any) -> PolicyInput:
    env = VisualToolEnv("visual_search")
    obs, info = env.reset(seed=0, options={"split": "train", "index": 0})
    enc = ChatEncoder(processor).encode_prompt(info["messages"], obs["images"])
    return PolicyInput(enc.input_ids, enc.pixel_values, enc.image_grid_thw, info["messages"], 0,
                       env.tools_enabled, list(obs["images"]))


def test_prompt_keeps_the_ids_and_converts_the_images(tiny) -> None:
    """The rollout's ids go unchanged (image placeholders already expanded, as vLLM detects); the shown images
    become RGB PIL images with the same pixels, in order."""
    _, processor = tiny
    item = _first_turn(processor)
    prompt = build_vllm_prompt(item)
    assert set(prompt) == {"prompt_token_ids", "multi_modal_data"}
    ids = prompt["prompt_token_ids"]
    assert ids == item.input_ids.tolist() and all(type(t) is int for t in ids)
    grid = item.image_grid_thw
    # 2x2 merge
    assert grid is not None and ids.count(processor.image_token_id) == int(grid.prod(-1).sum()) // 4
    images = prompt["multi_modal_data"]["image"]
    assert len(images) == len(item.images) == 1
    for pil, shown in zip(images, item.images):
        assert isinstance(pil, Image.Image) and pil.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(pil), shown)
    text_only = PolicyInput(torch.tensor([5, 6, 7]), None, None, [], 0, False)
    assert build_vllm_prompt(text_only) == {"prompt_token_ids": [5, 6, 7]}


def test_chosen_logprobs_pick_the_sampled_token_at_each_position() -> None:
    # position 0 sampled token 11 (rank 2: a better token 12 is listed too), position 1 sampled 13 alone
    positions = [{12: _logprob(-0.1), 11: _logprob(-2.5)}, {13: _logprob(-0.7)}]
    assert chosen_logprobs([11, 13], positions) == [-2.5, -0.7]
    assert chosen_logprobs([11, 13], None) is None
    with pytest.raises(VgymError, match="no log-prob for the sampled token 13 at position 1"):
        chosen_logprobs([11, 13], [positions[0], {14: _logprob(-0.2)}])
    with pytest.raises(VgymError, match="2 positions but 3 tokens"):
        chosen_logprobs([11, 13, 15], positions)


def test_completion_to_output_keeps_the_eos_id_but_not_its_text(tiny) -> None:
    _, processor = tiny
    tok = processor.tokenizer
    body = tok("<answer>7</answer>", add_special_tokens=False)["input_ids"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    lps = [-0.5 - i for i in range(len(body) + 1)]
    ids = [*body, im_end]
    stopped = SimpleNamespace(token_ids=tuple(ids), logprobs=[{t: _logprob(v)} for t, v in zip(ids, lps)])
    out = completion_to_output(stopped, tok, {im_end})
    assert out.text == "<answer>7</answer>"
    assert out.token_ids == ids and out.logprobs == lps
    # hit max_new_tokens: no eos, text is every token
    cut = SimpleNamespace(token_ids=list(body), logprobs=None)
    out = completion_to_output(cut, tok, {im_end})
    assert out.text == "<answer>7</answer>" and out.token_ids == body and out.logprobs is None


@pytest.mark.parametrize("pickled", [False, True], ids=["in_process", "pickled"])
def test_load_weights_passes_names_and_tensors_in_order_then_resets_the_prefix_cache(
        tiny, tiny_dir: Path, pickled: bool) -> None:
    """Every worker's model gets the trainer's parameters in ``named_parameters`` order -- in process as the
    same storage (detached, not copied), across a pickle boundary as equal values; the prefix cache is reset
    after."""
    model, processor = tiny
    engine = FakeEngine(processor.tokenizer, pickled=pickled)
    policy = VLLMPolicy(VLLMPolicyConfig(str(tiny_dir)), engine=engine)
    named = list(model.named_parameters())
    assert policy.load_weights(iter(named)) == len(named) > 10
    assert engine.calls == ["apply_model", "reset_prefix_cache"]
    for worker in engine.workers:
        assert [n for n, _ in worker.loaded] == [n for n, _ in named]
        for (_, sent), (_, param) in zip(worker.loaded, named):
            assert not sent.requires_grad and torch.equal(sent, param)
            assert (sent.data_ptr() == param.data_ptr()) != pickled


def test_policy_setup_with_an_injected_engine(tiny, tiny_dir: Path) -> None:
    """End-of-turn ids come from the tokenizer and the checkpoint's generation config; the vision placeholders
    get a -100 logit bias unless turned off."""
    _, processor = tiny
    tok = processor.tokenizer
    policy = VLLMPolicy(VLLMPolicyConfig(str(tiny_dir)), engine=FakeEngine(tok))
    assert policy.eos_ids == {
        tok.convert_tokens_to_ids("<|im_end|>"),
        tok.convert_tokens_to_ids("<|endoftext|>"),
    }
    placeholders = {
        tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    assert placeholders <= set(policy.logit_bias) and all(b == -100.0 for b in policy.logit_bias.values())
    off = VLLMPolicy(VLLMPolicyConfig(str(tiny_dir), suppress_placeholders=False), engine=FakeEngine(tok))
    assert off.logit_bias == {}


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_missing_vllm_says_how_to_install_it() -> None:
    with pytest.raises(ImportError, match=r"pip install 'vgym\[vllm\]' on a CUDA machine"):
        VLLMPolicy(VLLMPolicyConfig("Qwen/Qwen2-VL-2B-Instruct"))


def test_config_rejects_bad_values() -> None:
    with pytest.raises(InvalidConfigError, match="max_new_tokens >= 1"):
        VLLMPolicyConfig("m", max_new_tokens=0)
    with pytest.raises(InvalidConfigError, match="gpu_memory_utilization"):
        VLLMPolicyConfig("m", gpu_memory_utilization=1.5)
    with pytest.raises(InvalidConfigError, match=r"engine_kwargs may not set \['seed'\]"):
        VLLMPolicyConfig("m", engine_kwargs={"seed": 1})
