"""Tests of vgym/policies/vllm.py and vllm_worker.py without vLLM (it needs a CUDA GPU and is not installed
here): prompt building from a real first turn, log-prob extraction, the weight-sync plumbing, the weight-name
mapping, and the missing-vLLM error. (The prompt contract against the real processors of three families:
``test_vllm_prompt.py``.)

The boundary: vLLM's own objects are replaced by plain stand-ins shaped as its source (0.11.0, 0.34.0) has
them -- ``CompletionOutput`` (``token_ids``, ``logprobs``: one ``{token_id: Logprob}`` dict per position,
``Logprob`` with a ``logprob`` attribute), and for weight sync ``LLM.collective_rpc(method, timeout, args,
kwargs)``, which with the engine in process (``UniProcExecutor``) runs ``run_method(worker, method, args,
kwargs)`` -- ``getattr(worker, method)(*args, **kwargs)`` -- on a worker whose class vLLM extended with
``worker_extension_cls`` (``worker_class.__bases__ += (extension,)``), and returns ``[result]``; then
``reset_prefix_cache()``. Whether the real engine behaves so is untested here; generation itself
(``VLLMPolicy.act``) needs vLLM and is not run.
"""

from __future__ import annotations

import importlib
import importlib.util
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
from vgym.policies.vllm_worker import LOAD_METHOD, WORKER_EXTENSION, WeightSyncExtension
from vgym.rollout.chat import ChatEncoder


class FakeModel:
    """Stands in for the engine's ``nn.Module``: records what its ``load_weights`` received."""

    def __init__(self) -> None:
        self.loaded: list[tuple[str, torch.Tensor]] = []

    def load_weights(self, weights: Any) -> set[str]:
        self.loaded.extend(weights)
        return {name for name, _ in self.loaded}


class FakeModelRunner:
    def __init__(self) -> None:
        self.model = FakeModel()

    def get_model(self) -> FakeModel:
        return self.model


class FakeWorker:
    """Stands in for vLLM's GPU worker: the part the extension touches is ``model_runner.get_model()``."""

    def __init__(self) -> None:
        self.model_runner = FakeModelRunner()


def _extended_worker(extension_name: str) -> Any:
    """A worker whose class is extended as vLLM's ``WorkerWrapperBase.init_worker`` does it: the extension,
    imported by its qualified name, appended to the worker class's bases."""
    module, _, name = extension_name.rpartition(".")
    extension = getattr(importlib.import_module(module), name)
    worker_class = type("Worker", (FakeWorker,), {})
    assert not any(hasattr(worker_class, a) for a in vars(extension) if not a.startswith("__"))  # no clash
    worker_class.__bases__ = worker_class.__bases__ + (extension,)
    return worker_class()


class FakeEngine:
    """Stands in for ``vllm.LLM`` with its engine in process and one worker; records the order of calls."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.worker = _extended_worker(WORKER_EXTENSION)
        self.calls: list[str] = []

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = (),
                       kwargs: dict[str, Any] | None = None) -> list[Any]:
        self.calls.append(f"collective_rpc:{method}")
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

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


def test_prompt_has_one_placeholder_per_image_and_converts_the_images(tiny) -> None:
    """The rollout's ids go with each image's placeholder run collapsed to one pad (vLLM expands it); the
    shown images become RGB PIL images with the same pixels, in order."""
    _, processor = tiny
    item = _first_turn(processor)
    pad, video = processor.image_token_id, processor.video_token_id
    prompt = build_vllm_prompt(item, image_token_id=pad, video_token_id=video)
    assert set(prompt) == {"prompt_token_ids", "multi_modal_data"}
    ids = prompt["prompt_token_ids"]
    assert all(type(t) is int for t in ids) and ids.count(pad) == len(item.images) == 1
    full = item.input_ids.tolist()
    grid = item.image_grid_thw
    assert grid is not None and full.count(pad) == int(grid.prod(-1).sum()) // 4 > 1  # 2x2 merge
    first = full.index(pad)
    assert ids == full[: first + 1] + full[first + full.count(pad):]  # the run, shortened to one pad
    images = prompt["multi_modal_data"]["image"]
    assert len(images) == len(item.images) == 1
    for pil, shown in zip(images, item.images):
        assert isinstance(pil, Image.Image) and pil.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(pil), shown)
    text_only = PolicyInput(torch.tensor([5, 6, 7]), None, None, [], 0, False)
    sent = build_vllm_prompt(text_only, image_token_id=pad, video_token_id=video)
    assert sent == {"prompt_token_ids": [5, 6, 7]}


def test_prompt_refuses_videos_and_placeholder_image_mismatches(tiny) -> None:
    _, processor = tiny
    item = _first_turn(processor)
    pad, video = processor.image_token_id, processor.video_token_id
    two = PolicyInput(item.input_ids, None, None, [], 0, True, item.images * 2)
    with pytest.raises(VgymError, match="1 image placeholder runs but 2 images"):
        build_vllm_prompt(two, image_token_id=pad, video_token_id=video)
    clip = PolicyInput(torch.tensor([5, video, video, 6]), None, None, [], 0, False)
    with pytest.raises(VgymError, match="video placeholders"):
        build_vllm_prompt(clip, image_token_id=pad, video_token_id=video)


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


def test_load_weights_hands_names_and_tensors_to_the_worker_then_resets_the_prefix_cache(
        tiny, tiny_dir: Path) -> None:
    """The worker's model gets the trainer's parameters in ``named_parameters`` order, by reference (detached,
    not copied), through one ``collective_rpc`` of the extension's method by name; the prefix cache is reset
    after."""
    model, processor = tiny
    engine = FakeEngine(processor.tokenizer)
    policy = VLLMPolicy(VLLMPolicyConfig(str(tiny_dir), weight_sync=True), engine=engine)
    named = list(model.named_parameters())
    assert policy.load_weights(iter(named)) == len(named) > 10
    assert engine.calls == [f"collective_rpc:{LOAD_METHOD}", "reset_prefix_cache"]
    loaded = engine.worker.model_runner.model.loaded
    assert [n for n, _ in loaded] == [n for n, _ in named]
    for (_, sent), (_, param) in zip(loaded, named):
        assert not sent.requires_grad and sent.data_ptr() == param.data_ptr()


def test_load_weights_needs_weight_sync_and_an_in_process_engine(tiny, tiny_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    model, processor = tiny
    policy = VLLMPolicy(VLLMPolicyConfig(str(tiny_dir)), engine=FakeEngine(processor.tokenizer))
    with pytest.raises(VgymError, match="without weight_sync=True"):
        policy.load_weights(model.named_parameters())
    # building the engine for weight sync without the in-process setting fails before vLLM is imported
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    with pytest.raises(InvalidConfigError, match="VLLM_ENABLE_V1_MULTIPROCESSING=0"):
        VLLMPolicy(VLLMPolicyConfig(str(tiny_dir), weight_sync=True))
    # a worker in another process gets what vLLM's msgpack decodes an untyped tensor to: [dtype, shape, data]
    worker = _extended_worker(WORKER_EXTENSION)
    with pytest.raises(TypeError, match="another process"):
        getattr(worker, LOAD_METHOD)([["w", ["float32", [2], 0]]])
    assert worker.model_runner.model.loaded == []


def test_worker_extension_is_importable_by_its_name_without_vllm() -> None:
    module, _, name = WORKER_EXTENSION.rpartition(".")
    assert getattr(importlib.import_module(module), name) is WeightSyncExtension
    assert callable(getattr(WeightSyncExtension, LOAD_METHOD))


# vLLM's Qwen-VL ``hf_to_vllm_mapper`` prefixes (orig_to_new_prefix, identical in qwen2_vl.py, qwen2_5_vl.py
# and qwen3_vl.py of vLLM 0.11.0 and 0.34.0; Qwen2(.5)-VL also map a bare "model." of pre-4.52 checkpoints).
VLLM_PREFIXES = {"model.language_model.": "language_model.model.", "model.visual.": "visual.",
                 "lm_head.": "language_model.lm_head."}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_every_transformers_parameter_name_maps_to_a_vllm_module(family: str) -> None:
    """``load_weights`` is sent ``named_parameters()`` unchanged: each name of this transformers version must
    start with a prefix vLLM's mapper rewrites into its language model or vision tower."""
    from qwen_families import family_model

    model, _ = family_model(family)
    names = [n for n, _ in model.named_parameters()]
    unmapped = [n for n in names if not any(n.startswith(p) for p in VLLM_PREFIXES)]
    assert names and unmapped == []
    assert {p for p in VLLM_PREFIXES if any(n.startswith(p) for n in names)} >= {"model.language_model.",
                                                                                "model.visual."}


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
