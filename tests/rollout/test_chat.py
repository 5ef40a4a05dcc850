"""vgym/chat.py's direct encoding (image processor + tokenizer, without the processor's generic call) gives
the processor's exact output, and is used only where a probe at construction shows that it does; repeated
prompts and replies are encoded once."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vgym.env import VisualToolEnv
from vgym.rollout.chat import ChatEncoder, text_message


def _processor_output(processor, text: str, images: list[np.ndarray]):  # type: ignore[no-untyped-def]
    out = processor(text=[text], images=[Image.fromarray(im) for im in images] or None, return_tensors="pt")
    return out["input_ids"][0], out.get("pixel_values"), out.get("image_grid_thw")


def test_direct_encoding_equals_the_processor(tiny) -> None:  # type: ignore[no-untyped-def]
    """Env prompts (one image), a two-image message and a text-only message: ids, patches and grids
    identical."""
    _, processor = tiny
    encoder = ChatEncoder(processor)
    assert encoder._direct
    rng = np.random.default_rng(0)
    cases = []
    for index, budget in ((0, 112 * 112), (1, 224 * 224), (2, 168 * 112)):
        env = VisualToolEnv("visual_search", max_pixels=budget)
        obs, info = env.reset(seed=index, options={"split": "train", "index": index})
        cases.append((info["messages"], obs["images"]))
    two = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in ((60, 90), (140, 70))]
    cases.append(([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"},
                                                {"type": "image"}]}], two))
    cases.append(([text_message("user", "no image here")], []))
    for messages, images in cases:
        text = encoder._template(messages, generation_prompt=True)
        got = encoder._encode(text, images)
        ids, pixels, grids = _processor_output(processor, text, images)
        assert torch.equal(got.input_ids, ids)
        if images:
            assert torch.equal(got.pixel_values, pixels) and torch.equal(got.image_grid_thw, grids)
        else:
            assert got.pixel_values is None and got.image_grid_thw is None


def test_a_mismatch_on_the_probe_keeps_the_processor_call(tiny, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    original = ChatEncoder._encode_direct

    def off_by_one(self, text, pil):  # type: ignore[no-untyped-def]
        out = original(self, text, pil)
        out.input_ids = torch.cat([out.input_ids, out.input_ids[-1:]])
        return out

    monkeypatch.setattr(ChatEncoder, "_encode_direct", off_by_one)
    encoder = ChatEncoder(processor)
    assert not encoder._direct
    env = VisualToolEnv("visual_search", max_pixels=112 * 112)
    obs, info = env.reset(seed=0, options={"split": "train", "index": 0})
    got = encoder.encode_prompt(info["messages"], obs["images"])
    ids, _, _ = _processor_output(processor, encoder._template(info["messages"], generation_prompt=True),
                                  obs["images"])
    assert torch.equal(got.input_ids, ids)


def test_repeated_replies_are_encoded_once(tiny, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A group's episodes often get the same tool reply: an equal delta (text and image bytes) is encoded once
    and its tensors shared; other pixels of the same shape, or another text, are encoded anew — all equal to a
    fresh encoder's output."""
    _, processor = tiny
    encoder, fresh = ChatEncoder(processor), ChatEncoder(processor)
    calls: list[str] = []
    original = ChatEncoder._encode

    def counted(self, text, images):  # type: ignore[no-untyped-def]
        calls.append(text)
        return original(self, text, images)

    monkeypatch.setattr(ChatEncoder, "_encode", counted)
    rng = np.random.default_rng(0)
    crop = (rng.random((56, 84, 3)) * 255).astype(np.uint8)
    other = crop.copy()
    other[0, 0] ^= 1  # one value differs
    reply = [{"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "crop"}]}]
    renamed = [{"role": "tool", "content": [{"type": "image"}, {"type": "text", "text": "zoom"}]}]
    first, again = encoder.encode_delta(reply, [crop]), encoder.encode_delta(reply, [crop.copy()])
    assert len(calls) == 1 and again.pixel_values is first.pixel_values
    for messages, image in ((reply, other), (renamed, crop)):
        got, want = encoder.encode_delta(messages, [image]), fresh.encode_delta(messages, [image])
        assert got.pixel_values is not first.pixel_values
        assert torch.equal(got.input_ids, want.input_ids) and torch.equal(got.pixel_values, want.pixel_values)
    assert not torch.equal(encoder.encode_delta(reply, [other]).pixel_values, first.pixel_values)
    assert len(calls) == 5  # 1 + (2 new deltas) + their 2 fresh-encoder encodings
