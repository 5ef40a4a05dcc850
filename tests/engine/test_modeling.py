"""vgym/engine/modeling.py: ``unique_images`` finds exact duplicates only, ``shared_image_features`` encodes
each distinct image once while the model's outputs and gradients stay those of the unshared call, and
``vision_placeholder_ids`` finds the placeholder tokens a vocabulary holds."""

from __future__ import annotations

import copy
from typing import Any

import torch

from vgym.engine.modeling import (
    VISION_PLACEHOLDER_TOKENS,
    model_inputs,
    shared_image_features,
    unique_images,
    vision_placeholder_ids,
)
from vgym.env import VisualToolEnv
from vgym.rollout.chat import ChatEncoder


def test_unique_images_groups_exact_duplicates_only() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(16, 24, generator=gen), torch.rand(4, 24, generator=gen)
    near = a.clone()
    near[7, 3] += 1e-6  # one value differs: a different image
    pixels = torch.cat([a, b, a, near, b, a])
    grid = torch.tensor([[1, 4, 4], [1, 2, 2], [1, 4, 4], [1, 4, 4], [1, 2, 2], [1, 4, 4]])
    assert unique_images(pixels, grid) == ([0, 1, 3], [0, 1, 0, 2, 1, 0])
    same_rows = torch.cat([a, a])  # same patches, other grid: not the same image
    assert unique_images(same_rows, torch.tensor([[1, 4, 4], [1, 2, 8]])) == ([0, 1], [0, 1])


def _group_batch(processor, left: bool = False):  # type: ignore[no-untyped-def]
    """Four sequences: three show sample 0's image, one sample 1's (a group of 3 plus another sample); padded
    on the right (training) or on the left (generation)."""
    encoder, rows = ChatEncoder(processor), []
    for index in (0, 0, 1, 0):
        env = VisualToolEnv("visual_search", tools=(), max_turns=1, max_pixels=112 * 112)
        obs, info = env.reset(seed=index, options={"split": "train", "index": index})
        rows.append(encoder.encode_prompt(info["messages"], obs["images"]))
    width = max(len(r.input_ids) for r in rows)
    pads = [(width - len(r.input_ids), 0) if left else (0, width - len(r.input_ids)) for r in rows]
    ids = torch.stack([torch.nn.functional.pad(r.input_ids, pad) for r, pad in zip(rows, pads)])
    mask = torch.stack([torch.nn.functional.pad(torch.ones(len(r.input_ids)), pad)
                        for r, pad in zip(rows, pads)])
    pixels, grids = torch.cat([r.pixel_values for r in rows]), torch.cat([r.image_grid_thw for r in rows])
    return ids, mask.long(), pixels, grids


def test_shared_features_give_the_same_logits_and_gradients(tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    model = copy.deepcopy(model).train()
    seen: list[int] = []
    model.model.visual.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    inputs = model_inputs(model, *_group_batch(processor))
    results = []
    for shared in (False, True):
        model.zero_grad()
        seen.clear()
        if shared:
            with shared_image_features(model):
                logits = model(**inputs).logits
        else:
            logits = model(**inputs).logits
        (logits.float().log_softmax(-1)[..., :50] * inputs["attention_mask"][..., None]).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads, list(seen)))
    (plain, plain_grads, plain_seen), (shared_logits, shared_grads, shared_seen) = results
    patches = inputs["image_grid_thw"].prod(-1).tolist()
    assert plain_seen == [sum(patches)] and shared_seen == [patches[0] + patches[2]]  # 2 distinct of 4 images
    torch.testing.assert_close(shared_logits, plain, atol=1e-5, rtol=1e-4)
    assert plain_grads.keys() == shared_grads.keys() and any("visual" in n for n in shared_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-6, rtol=1e-3, msg=name)
    assert "get_image_features" not in vars(model.model)  # the patch is gone after the block


def test_shared_features_in_generation(tiny) -> None:  # type: ignore[no-untyped-def]
    """Greedy generation from a left-padded group batch: the same tokens with and without sharing."""
    model, processor = tiny
    inputs = model_inputs(model, *_group_batch(processor, left=True))
    plain = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    with shared_image_features(model):
        shared = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(plain, shared)


def test_shared_features_keep_qwen3_vl_deepstack_features_in_order() -> None:
    """Qwen3-VL also injects per-layer "deepstack" image features: reordered with the pooled ones, the logits
    of a batch (image A, image B, image A) equal the unshared call's, with the vision tower run on two
    images."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_parameters=rope),
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           deepstack_visual_indexes=[0, 1], num_position_embeddings=64),
        image_token_id=5, video_token_id=6, vision_start_token_id=7, vision_end_token_id=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen3VLForConditionalGeneration(config).eval()
    seen: list[int] = []
    model.model.visual.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    gen = torch.Generator().manual_seed(0)
    # 4 x 4 patches each
    image_a, image_b = (torch.randn(16, 3 * 2 * 16 * 16, generator=gen) for _ in range(2))
    ids = torch.tensor([[1, 7, 5, 5, 5, 5, 8, 20, 21, 22]] * 3)  # 4 image tokens after the 2 x 2 merge
    inputs = model_inputs(model, ids, torch.ones_like(ids), torch.cat([image_a, image_b, image_a]),
                          torch.tensor([[1, 4, 4]] * 3))
    with torch.no_grad():
        plain = model(**inputs).logits
        with shared_image_features(model):
            shared = model(**inputs).logits
    assert seen == [48, 32]
    torch.testing.assert_close(shared, plain)
    assert not torch.allclose(plain[0], plain[1])  # the two images do differ in the output


def test_vision_placeholder_ids_of_a_qwen_vl_tokenizer_and_of_one_without_them(tiny: Any) -> None:
    _, processor = tiny
    tokenizer = processor.tokenizer
    ids = vision_placeholder_ids(tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") in ids
    assert tokenizer.convert_tokens_to_ids("<|vision_start|>") in ids and len(ids) == len(set(ids))
    assert all(tokenizer.convert_ids_to_tokens(i) in VISION_PLACEHOLDER_TOKENS for i in ids)

    class TextOnly:  # a tokenizer of a family without vision placeholders
        def get_vocab(self) -> dict[str, int]:
            return {"hello": 0, "<|im_end|>": 1}

    assert vision_placeholder_ids(TextOnly()) == []
