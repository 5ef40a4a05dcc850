"""The prompt contract of VLLMPolicy with vLLM, checked against the real transformers processors of Qwen2-VL,
Qwen2.5-VL and Qwen3-VL on multi-turn episodes with several images and images returned by tools.

vLLM (0.11.0 to 0.34.0, read in its source) expands a token prompt itself: for each image item in order, its
Qwen-VL prompt update replaces the first ``<|image_pad|>`` at or after the end of the previous item's match by
``grid_t * grid_h * grid_w // merge_size**2`` pads (``PromptReplacement(target=[pad], replacement=[pad] * n)``
in ``qwen2_vl.py`` / ``qwen2_5_vl.py`` / ``qwen3_vl.py``, applied by ``_apply_matches`` /
``_plan_prompt_updates`` of ``vllm/multimodal/processing``), with the grid its processor computes from the
images it is sent. :func:`expand_like_vllm` is that step, written from vLLM's code; these tests check that the
ids VLLMPolicy sends, so expanded, are exactly the ids the transformers processor gives for the same chat and
images -- and that the ids the old VLLMPolicy sent (already expanded) are not.

The Qwen2.5-VL and Qwen3-VL processors are the real classes built without their video processor (which needs
torchvision, absent here), with the tiny model's tokenizer, the Qwen2-VL chat template (the image
placeholders are the same) and an image processor of the family's patch size (14, 14, 16; merge 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch
from PIL import Image

from vgym.env import VisualToolEnv
from vgym.policies.base import PolicyInput, PolicyOutput
from vgym.policies.oracle import OraclePolicy
from vgym.policies.vllm import build_vllm_prompt
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def expand_like_vllm(prompt_ids: Sequence[int], pad: int, counts: Sequence[int]) -> list[int]:
    """vLLM's prompt update of a token prompt: item i replaces the first ``pad`` at or after the end of item
    i-1's match (in the prompt as sent) by ``counts[i]`` pads; an item without a match is an error there."""
    out: list[int] = []
    prev_end = 0
    for count in counts:
        # a ValueError here is vLLM's "Failed to apply prompt replacement"
        start = list(prompt_ids).index(pad, prev_end)
        out += list(prompt_ids[prev_end:start]) + [pad] * count
        prev_end = start + 1
    return out + list(prompt_ids[prev_end:])


def _images_only(cls: type) -> type:
    """``cls`` (a transformers Qwen-VL processor) without its video processor: the real ``__init__`` and
    ``__call__``; transformers takes a processor's parts from its ``__init__`` signature."""

    class ImagesOnly(cls):  # type: ignore[misc, valid-type]
        def __init__(self, image_processor: Any = None, tokenizer: Any = None,
                     chat_template: str | None = None, **kwargs: Any) -> None:
            cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template)

    return ImagesOnly


@pytest.fixture(scope="module")
def processors(tiny_dir: Any) -> dict[str, Any]:
    from transformers import Qwen2_5_VLProcessor, Qwen3VLProcessor
    from transformers.models import qwen2_vl

    from vgym.engine.tiny import TinyVLMConfig, load_vlm

    _, tiny = load_vlm(tiny_dir)
    sizes = TinyVLMConfig()
    out = {"qwen2_vl": tiny}
    for family, cls, patch in (("qwen2_5_vl", Qwen2_5_VLProcessor, 14), ("qwen3_vl", Qwen3VLProcessor, 16)):
        image_processor = qwen2_vl.Qwen2VLImageProcessorPil(min_pixels=sizes.min_pixels,
                                                            max_pixels=sizes.max_pixels, patch_size=patch,
                                                            merge_size=2, temporal_patch_size=2)
        out[family] = _images_only(cls)(image_processor, tiny.tokenizer, chat_template=tiny.chat_template)
    return out


class RecordingOracle:
    """The scripted oracle, keeping every turn's input (the ids a model policy would be given)."""

    reads_ground_truth = True

    def __init__(self) -> None:
        self.oracle = OraclePolicy()
        self.seen: list[PolicyInput] = []

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        self.seen += list(batch)
        return self.oracle.act(batch)


def _turns(processor: Any, task: str) -> list[PolicyInput]:
    policy = RecordingOracle()
    specs = [EpisodeSpec("train", i, group_id=i, seed=i) for i in range(2)]
    rollout(lambda: VisualToolEnv(task), policy, ChatEncoder(processor), specs, RolloutConfig(batch_size=2))
    return policy.seen


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ["multi_tool", "video_qa"])
def test_sent_ids_expanded_as_vllm_does_are_the_processors_ids(processors: dict[str, Any], family: str,
                                                                task: str) -> None:
    """Every turn of two episodes (first turns with 1-4 images; later turns after tool replies that return
    images, up to 5): the sent ids, expanded by the grids vLLM's processor computes from the sent images,
    equal the processor's ids for the chat so far; the already expanded ids would be expanded again."""
    processor = processors[family]
    pad, merge = processor.image_token_id, processor.image_processor.merge_size
    turns = _turns(processor, task)
    assert max(len(t.images) for t in turns) >= 5 and any(t.turn >= 1 for t in turns)
    for item in turns:
        sent = build_vllm_prompt(item, image_token_id=pad, video_token_id=processor.video_token_id)
        images = sent["multi_modal_data"]["image"]
        assert len(images) == len(item.images) and sent["prompt_token_ids"].count(pad) == len(images)
        grids = processor.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
        counts = (grids.prod(-1) // merge**2).tolist()
        text = processor.apply_chat_template(item.messages, tokenize=False, add_generation_prompt=True)
        expected = processor(text=[text], images=[Image.fromarray(im) for im in item.images],
                             return_tensors="pt")["input_ids"][0].tolist()
        assert expand_like_vllm(sent["prompt_token_ids"], pad, counts) == expected
        assert torch.equal(item.input_ids, torch.tensor(expected))  # the rollout's own sequence
        # what VLLMPolicy sent before (the expanded sequence) comes out of vLLM with extra pads
        doubled = expand_like_vllm(item.input_ids.tolist(), pad, counts)
        assert doubled.count(pad) == expected.count(pad) + sum(counts) - len(counts)


def test_expand_like_vllm_follows_vllms_matching_order() -> None:
    # two images (pad = 9): the first sent pad gets 3 pads, the second 2; text in between is kept
    assert expand_like_vllm([1, 7, 9, 8, 2, 7, 9, 8], 9, [3, 2]) == [1, 7, 9, 9, 9, 8, 2, 7, 9, 9, 8]
    # an already expanded prompt: item 1 lands on item 0's second pad, and the second run stays as it was
    assert expand_like_vllm([7, 9, 9, 8, 7, 9, 9, 8], 9, [2, 2]) == [7, 9, 9, 9, 9, 8, 7, 9, 9, 8]
    with pytest.raises(ValueError):
        expand_like_vllm([7, 9, 8], 9, [2, 2])  # more images than placeholders
