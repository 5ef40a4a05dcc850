"""Tests for vgym.engine.tiny: the offline-built tiny Qwen2-VL loads and behaves like a real checkpoint."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoTokenizer,
    Qwen2Tokenizer,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)

from vgym.engine.tiny import (
    QWEN2_VL_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TOOL_TOKENS,
    TinyQwen2VLProcessor,
    TinyVLMConfig,
    build_tiny_vlm,
    default_corpus,
    load_vlm,
)

TOOL_CALL = '<tool_call>{"name": "crop", "arguments": {"box": [224, 448, 448, 672]}}</tool_call>'
CROP_SCHEMA = {
    "type": "function",
    "function": {
        "name": "crop",
        "description": "Crop a region of the image and return it as a new image.",
        "parameters": {
            "type": "object",
            "properties": {
                "box": {
                    "type": "array",
                    "items": {"type": "integer"},
                    "description": "Bounding box [x1, y1, x2, y2] in pixels.",
                }
            },
            "required": ["box"],
        },
    },
}
SYSTEM = (
    "You are a helpful assistant that answers questions about images.\n\n# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + json.dumps(CROP_SCHEMA)
    + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML '
    'tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>\n\nGive the final answer within <answer></answer> tags."
)
QUESTION = "What colour is the marker inside the region [224, 448, 448, 672]?"


def _image(size: int = 224, seed: int = 0) -> Image.Image:
    """Return a random RGB test image."""
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8))


def _messages() -> list[dict]:
    """Return a tool-use system prompt plus an image question, as chat messages."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
    ]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the tiny model once for the module."""
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "vlm")


@pytest.fixture(scope="module")
def loaded(tiny_dir: Path):
    """Load it once (read-only tests share it)."""
    return load_vlm(tiny_dir)


def test_load_gives_real_classes(loaded) -> None:
    """load_vlm returns the stock transformers classes and a tiny model."""
    model, processor = loaded
    assert type(model) is Qwen2VLForConditionalGeneration
    assert isinstance(processor, TinyQwen2VLProcessor)
    assert type(processor.tokenizer) is Qwen2Tokenizer
    assert type(processor.image_processor) is Qwen2VLImageProcessorPil
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 < n_params < 2_000_000
    assert not model.training


def test_config_ids_match_tokenizer(loaded) -> None:
    """Model config token ids, eos/pad and mrope agree with the trained tokenizer."""
    model, processor = loaded
    tok, cfg = processor.tokenizer, model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>") == processor.image_token_id
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.eos_token_id == im_end and tok.pad_token_id == eot
    assert model.generation_config.eos_token_id == [im_end, eot]
    assert model.generation_config.pad_token_id == eot
    assert cfg.text_config.vocab_size == len(tok) <= TinyVLMConfig().vocab_size
    head_dim = cfg.text_config.hidden_size // cfg.text_config.num_attention_heads
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == head_dim // 2


def test_chat_template_is_verbatim_qwen2_vl(tiny_dir: Path, loaded) -> None:
    """Tokenizer and processor both carry the exact Qwen2-VL-Instruct template."""
    _, processor = loaded
    digest = hashlib.sha256(QWEN2_VL_CHAT_TEMPLATE.encode()).hexdigest()
    assert digest == "a0bc6f6fc7a29a80017a433e8f03a1cc1236e838a944a2d034295a60c4f2fddb"
    assert processor.chat_template == QWEN2_VL_CHAT_TEMPLATE
    assert processor.tokenizer.chat_template == QWEN2_VL_CHAT_TEMPLATE
    assert AutoTokenizer.from_pretrained(tiny_dir).chat_template == QWEN2_VL_CHAT_TEMPLATE
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tokenizer_round_trip(loaded) -> None:
    """Lossless decode; special and tool markers are single tokens; tool markers are not special."""
    tok = loaded[1].tokenizer
    text = (
        TOOL_CALL
        + '\n<tool_response>{"image_index": 1, "size": [224, 224]}</tool_response><answer>red</answer>'
    )
    assert tok.decode(tok.encode(text)) == text
    for t in SPECIAL_TOKENS + TOOL_TOKENS:
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == t, t
    assert len(set(tok.convert_tokens_to_ids(list(SPECIAL_TOKENS + TOOL_TOKENS)))) == 20
    kept = tok.decode(tok.encode(TOOL_CALL + "<|im_end|>"), skip_special_tokens=True)
    assert kept == TOOL_CALL  # <tool_call> is not special, <|im_end|> is


def test_processor_expands_image_tokens(loaded) -> None:
    """<|image_pad|> expands to grid_thw.prod() // 4 tokens; pixel_values has one row per patch."""
    _, processor = loaded
    text = processor.apply_chat_template(_messages(), tokenize=False, add_generation_prompt=True)
    out = processor(text=[text], images=[_image()], return_tensors="pt")
    assert {"input_ids", "attention_mask", "pixel_values", "image_grid_thw"} <= set(out)
    grid = out["image_grid_thw"]
    assert grid.tolist() == [[1, 16, 16]]
    assert int((out["input_ids"] == processor.image_token_id).sum()) == int(grid.prod()) // 4
    assert tuple(out["pixel_values"].shape) == (int(grid.prod()), 3 * 2 * 14 * 14)
    # numpy input and a non-square image go through the same path
    out = processor(text=[text], images=[np.zeros((100, 150, 3), np.uint8)], return_tensors="pt")
    assert int((out["input_ids"] == processor.image_token_id).sum()) == int(out["image_grid_thw"].prod()) // 4


def test_forward_generate_backward(tiny_dir: Path) -> None:
    """Forward, greedy generate and a backward pass with images all work."""
    model, processor = load_vlm(tiny_dir)  # own copy: this test trains
    text = processor.apply_chat_template(_messages(), tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text, text], images=[_image(seed=1), _image(seed=2)], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, model.config.text_config.vocab_size)
    gen = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert gen.shape[0] == 2 and batch["input_ids"].shape[1] < gen.shape[1] <= batch["input_ids"].shape[1] + 8
    assert len(processor.batch_decode(gen[:, batch["input_ids"].shape[1] :])) == 2
    model.train()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    # gradient reaches the vision tower
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0


def test_determinism_and_no_global_rng_leak(tmp_path: Path, tiny_dir: Path) -> None:
    """Same seed: identical weights and vocab; other seed: other weights; global RNG untouched."""
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    again = build_tiny_vlm(tmp_path / "again")
    assert torch.equal(state, torch.random.get_rng_state())
    other = build_tiny_vlm(tmp_path / "other", config=TinyVLMConfig(seed=1))
    ref = load_vlm(tiny_dir)[0].state_dict()
    same, diff = load_vlm(again)[0].state_dict(), load_vlm(other)[0].state_dict()
    assert ref.keys() == same.keys() and all(torch.equal(ref[k], same[k]) for k in ref)
    assert any(not torch.equal(ref[k], diff[k]) for k in ref)
    assert (tiny_dir / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()
    assert (tiny_dir / "tokenizer.json").read_text() == (other / "tokenizer.json").read_text()
    assert default_corpus() == default_corpus()


def test_extra_corpus_is_used(tmp_path: Path) -> None:
    """Text passed as `corpus` shapes the vocabulary."""
    word = "zyxwvutsrqponm"
    tok = load_vlm(build_tiny_vlm(tmp_path / "c", corpus=[f"the {word} tool"] * 50))[1].tokenizer
    assert tok.tokenize(" " + word) == ["Ġ" + word]


def test_prompt_is_compact(loaded) -> None:
    """A realistic tool prompt costs well under chars/3 tokens."""
    tok = loaded[1].tokenizer
    text = loaded[1].apply_chat_template(_messages(), tokenize=False, add_generation_prompt=True)
    n_tokens = len(tok(text)["input_ids"])
    logging.getLogger(__name__).info("sample prompt: %d chars -> %d tokens", len(text), n_tokens)
    assert n_tokens < len(text) / 3.5, (len(text), n_tokens)


def test_load_vlm_errors_and_real_checkpoint_fallback(tmp_path: Path, tiny_dir: Path) -> None:
    """Missing dirs raise; a real-checkpoint layout loads through the image-only fallback processor."""
    with pytest.raises(FileNotFoundError):
        load_vlm(tmp_path / "missing")
    # Lay the dir out like a real Qwen2-VL-Instruct checkpoint: the stock Qwen2VLProcessor needs a video
    # processor
    # (torchvision) -- load_vlm falls back to the image-only processor with the same files.
    real = tmp_path / "real"
    shutil.copytree(tiny_dir, real)
    (real / "processor_config.json").unlink()
    (real / "chat_template.jinja").rename(real / "chat_template.jinja.bak")
    (real / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_CHAT_TEMPLATE}))
    pre = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
           "merge_size": 2, "image_processor_type": "Qwen2VLImageProcessor",
           "processor_class": "Qwen2VLProcessor"}  # fmt: skip
    (real / "preprocessor_config.json").write_text(json.dumps(pre))
    tok_cfg = json.loads((real / "tokenizer_config.json").read_text())
    (real / "tokenizer_config.json").write_text(
        json.dumps({**tok_cfg, "processor_class": "Qwen2VLProcessor"})
    )
    model, processor = load_vlm(real, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert processor.chat_template == QWEN2_VL_CHAT_TEMPLATE
    assert processor.image_processor.size["longest_edge"] == 12845056
    out = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[_image()], return_tensors="pt"
    )
    assert int((out["input_ids"] == processor.image_token_id).sum()) == int(out["image_grid_thw"].prod()) // 4
