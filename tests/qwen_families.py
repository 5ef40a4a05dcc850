"""Random tiny models of the three Qwen-VL families and a left-padded batch with images, shared by the
decoding tests (``test_decoding.py``, ``test_decode_step.py``)."""

from __future__ import annotations

import torch

from vgym.policies.hf import collate_left

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
VISION_START, VISION_END, IMAGE = 7, 8, 5


def family_model(family: str):  # type: ignore[no-untyped-def]
    """A random tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL (vocab 300, image token 5, 14- or 16-pixel patches)."""
    import transformers as tf

    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
    text = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters=rope,
    )
    ids = dict(image_token_id=IMAGE, video_token_id=6, vision_start_token_id=VISION_START,
               vision_end_token_id=VISION_END)
    if family == "qwen2_vl":
        config = tf.Qwen2VLConfig(text_config=text, vision_config=dict(
            depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14, spatial_merge_size=2), **ids)
        cls = tf.Qwen2VLForConditionalGeneration
    elif family == "qwen2_5_vl":
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
            spatial_merge_size=2, window_size=56, fullatt_block_indexes=[1]), **ids)
        cls = tf.Qwen2_5_VLForConditionalGeneration
    else:
        text.update(head_dim=16, rope_parameters={**rope, "mrope_interleaved": True})
        config = tf.Qwen3VLConfig(text_config=text, vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
            spatial_merge_size=2, deepstack_visual_indexes=[0], num_position_embeddings=64), **ids)
        cls = tf.Qwen3VLForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls(config).eval()
    return model, config.vision_config.patch_size


def image_row(grids: list[tuple[int, int]], text: list[int], gen: torch.Generator) -> list[int]:
    """Ids: text, then per image (h, w patches) start + h*w/4 placeholders + end + two text ids."""
    ids = list(text)
    for h, w in grids:
        tail = torch.randint(20, 300, (2,), generator=gen).tolist()
        ids += [VISION_START] + [IMAGE] * (h * w // 4) + [VISION_END] + tail
    return ids


def family_batch(patch: int):  # type: ignore[no-untyped-def]
    """Five left-padded rows: a group of three equal rows (one image), a row with two images of other shapes,
    and a text-only row."""
    gen = torch.Generator().manual_seed(1)
    shared = torch.randn(16, 3 * 2 * patch * patch, generator=gen)
    layout = [[(4, 4)], [(4, 4)], [(4, 4)], [(2, 4), (6, 4)], []]
    rows, pixels, grids = [], [], []
    for r, row_grids in enumerate(layout):
        text = [1, 30, 31] if r < 3 else torch.randint(20, 300, (5 + r,), generator=gen).tolist()
        rows.append(torch.tensor(image_row(row_grids, text, gen)))
        for h, w in row_grids:
            pixels.append(shared if r < 3 else torch.randn(h * w, shared.shape[1], generator=gen))
            grids.append([1, h, w])
    ids, mask = collate_left(rows, pad_id=0)
    return ids, mask, torch.cat(pixels), torch.tensor(grids)
