"""A tiny, randomly initialised but *real* Qwen2-VL, built offline and saved with ``save_pretrained``.

Every downstream code path is the one a real checkpoint takes (``from_pretrained(local_dir)``): the real model
class, a real ``Qwen2Tokenizer`` (byte-level BPE trained here on tool-use text), ``Qwen2VLImageProcessorPil``
and the verbatim Qwen2-VL-Instruct chat template.

Contents: :class:`TinyVLMConfig`, :class:`TinyQwen2VLProcessor` (``Qwen2VLProcessor`` minus the
torchvision-only video processor), :func:`default_corpus`, :func:`build_tiny_vlm`, :func:`load_vlm`,
``QWEN2_VL_CHAT_TEMPLATE``, ``SPECIAL_TOKENS``, ``TOOL_TOKENS``.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    AddedToken,
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationConfig,
    ProcessorMixin,
)
from transformers.modeling_utils import PreTrainedModel
from transformers.models import qwen2_vl
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from vgym.engine.model_folder import check_model_folder
from vgym.errors import ModelFolderError

__all__ = ["QWEN2_VL_CHAT_TEMPLATE", "SPECIAL_TOKENS", "TOOL_TOKENS", "TinyQwen2VLProcessor", "TinyVLMConfig",
           "build_tiny_vlm", "default_corpus", "load_vlm"]

logger = logging.getLogger(__name__)

# Verbatim chat template of Qwen/Qwen2-VL-{2B,7B}-Instruct (their chat_template.json). Copied character-exact
# from
# huggingface/optimum-intel optimum/exporters/openvino/utils.py (COMPLEX_CHAT_TEMPLATES, key commented
# "qwen2-vl-instruct", commit e1de5beecfd0c3ae6047ea22cea4a4cad4307aff), which matches templates by exact
# string, and
# cross-checked against several independent copies (VLMEvalKit-style evaluation scripts).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2-VL's special tokens in Qwen's order (ids 0..13 here), then single-token markers that are NOT special
# (``decode(skip_special_tokens=True)`` keeps them).
SPECIAL_TOKENS: tuple[str, ...] = tuple(
    f"<|{t}|>"
    for t in (
        "endoftext im_start im_end object_ref_start object_ref_end box_start box_end quad_start quad_end "
        "vision_start "
        "vision_end vision_pad image_pad video_pad"
    ).split()
)
TOOL_TOKENS: tuple[str, ...] = tuple(
    f"<{c}{t}>" for t in ("tool_call", "tool_response", "answer") for c in ("", "/")
)
_MARKERS = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS + TOOL_TOKENS))


@dataclass
class TinyVLMConfig:
    """Sizes and seed of the tiny Qwen2-VL."""

    vocab_size: int = 2048
    """BPE vocab size cap (special + tool tokens included); the default corpus alone saturates near 750."""
    hidden_size: int = 128
    """Text hidden size; also the vision merger's output width."""
    num_hidden_layers: int = 2
    """Number of text decoder layers."""
    num_attention_heads: int = 4
    """Text attention heads (head_dim = hidden_size // num_attention_heads)."""
    num_key_value_heads: int = 2
    """Text key/value heads (grouped-query attention)."""
    intermediate_size: int = 256
    """Text MLP width."""
    vision_depth: int = 2
    """Number of vision transformer blocks."""
    vision_embed_dim: int = 64
    """Vision transformer width."""
    vision_num_heads: int = 4
    """Vision attention heads."""
    max_pixels: int = 224 * 224
    """Image processor max_pixels (saved as size["longest_edge"])."""
    min_pixels: int = 28 * 28
    """Image processor min_pixels (saved as size["shortest_edge"])."""
    seed: int = 0
    """Weight-init seed, applied inside ``torch.random.fork_rng`` only (the global RNG is left untouched)."""


class TinyQwen2VLProcessor(qwen2_vl.Qwen2VLProcessor):
    """``Qwen2VLProcessor`` with only an image processor and a tokenizer.

    The stock processor also requires a video processor, which needs torchvision; this subclass declares only
    ``image_processor`` and ``tokenizer`` and otherwise behaves identically for text and images.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        """Build the processor.

        Args:
            image_processor: A Qwen2-VL image processor.
            tokenizer: A tokenizer holding the Qwen2-VL special tokens.
            chat_template: Jinja chat template.
            **kwargs: Ignored (accepted for ``from_pretrained`` compatibility).
        """
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


# A string key adds the class to AutoProcessor's name lookup without remapping Qwen2VLConfig.
AutoProcessor.register("vgym_tiny_qwen2_vl", TinyQwen2VLProcessor, exist_ok=True)

_COLOURS = tuple("red green blue yellow orange purple cyan magenta white black brown pink grey".split())
_RELATIONS = ("left of", "right of", "above", "below")
_SHAPES = tuple("marker square circle triangle object box dot".split())
_BOX = {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4,
        "description": "Bounding box [x1, y1, x2, y2] in pixels of the current image."}
_IDX = {"type": "integer", "description": "Index of the image to use; 0 is the original image."}
_TOOLS = (
    ("crop", "Crop a region of an image and return it as a new image.", {"box": _BOX, "image_index": _IDX}),
    ("zoom", "Zoom into a region of an image by an integer factor and return the zoomed image.",
     {"box": _BOX, "factor": {"type": "integer", "description": "Zoom factor, 2 to 4."}}),
    ("depth", "Estimate the relative depth of a point; smaller values are closer to the camera.",
     {"point": {"type": "array", "items": {"type": "integer"}, "description": "Point [x, y] in pixels."}}),
    ("frame", "Select a frame of the video by its index and return it as a new image.",
     {"index": {"type": "integer", "description": "Frame index, starting at 0."}}),
    ("count", "Count the objects of a given colour inside a region.",
     {"colour": {"type": "string", "enum": list(_COLOURS)}, "box": _BOX}),
)
_SYSTEM = (
    "You are a helpful assistant that answers questions about images using visual tools.\n\n# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\nYou are provided with function "
    "signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\nFor each function call, "
    "return "
    "a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>\n\n'
    "When you are done, give the final answer within <answer></answer> tags."
)


def _tool_schema(name: str) -> str:
    """Return the JSON schema line of one tool, in the Qwen2.5 tool-prompt format."""
    desc, props = next((d, p) for n, d, p in _TOOLS if n == name)
    params = {"type": "object", "properties": props, "required": list(props)[:1]}
    return json.dumps(
        {"type": "function", "function": {"name": name, "description": desc, "parameters": params}}
    )


def default_corpus(*, seed: int = 0, size: int = 3000) -> list[str]:
    """Generate text that looks like our prompts, tool calls, tool responses and answers.

    Args:
        seed: Seed of the private ``random.Random`` used (the global RNG is not touched).
        size: Number of episode-like strings (one system prompt is added per ten of them).

    Returns:
        A deterministic list of strings.
    """
    rng = random.Random(seed)
    names = [t[0] for t in _TOOLS]
    out = [" ".join(map(str, range(2048))), " ".join(_COLOURS + _SHAPES) + " " + " ".join(names)]
    for i in range(size):
        c1, c2, shape, rel = (
            rng.choice(_COLOURS),
            rng.choice(_COLOURS),
            rng.choice(_SHAPES),
            rng.choice(_RELATIONS),
        )
        x, y, w, h = (
            rng.randrange(0, 2048, 16),
            rng.randrange(2048),
            rng.choice((16, 112, 224)),
            rng.randrange(1, 448),
        )
        box, tool, sep = [x, y, x + w, y + h], rng.choice(names), rng.choice(("", "\n"))
        args = {
            "crop": {"box": box},
            "zoom": {"box": box, "factor": rng.randint(2, 4)},
            "depth": {"point": [x, y]},
            "frame": {"index": rng.randrange(64)},
            "count": {"colour": c1, "box": box},
        }[tool]
        result = {
            "crop": {"image_index": 1 + i % 4, "size": [w, h]},
            "zoom": {"image_index": 1, "size": [w, w]},
            "depth": {"depth": round(rng.random(), 2)},
            "frame": {"image_index": rng.randint(1, 8)},
            "count": {"count": rng.randrange(10)},
        }[tool]
        question = rng.choice((f"What colour is the {shape} inside the region {box}?",
                               f"How many {c1} {shape}s are {rel} the {c2} {shape}?",
                               f"Which {shape} is closer to the camera, the {c1} one or the {c2} one?",
                               f"In frame {rng.randrange(64)}, what colour is the {shape} at ({x}, {y})?",
                               f"Is the {c1} {shape} {rel} the {c2} {shape}? Answer yes or no."))
        answer = rng.choice((c1, c2, "yes", "no", str(rng.randrange(10)), f"the {c1} {shape}"))
        if i % 10 == 0:
            tools = "\n".join(_tool_schema(n) for n in rng.sample(names, rng.randint(1, len(names))))
            out.append(f"<|im_start|>system\n{_SYSTEM.format(tools=tools)}<|im_end|>\n")
        call = json.dumps({"name": tool, "arguments": args})
        out.append(
            f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n"
            f"<|im_start|>assistant\nLet me look at the {rng.choice(_RELATIONS)} "
            f"part.\n<tool_call>{sep}{call}{sep}"
            f"</tool_call><|im_end|>\n<|im_start|>user\n"
            f"<tool_response>{sep}{json.dumps(result)}{sep}</tool_response>"
            f"<|im_end|>\n<|im_start|>assistant\nThe {shape} is {c1}.\n<answer>{answer}</answer><|im_end|>\n"
        )
    return out


def _train_tokenizer(texts: list[str], vocab_size: int) -> Qwen2Tokenizer:
    """Train a byte-level BPE with Qwen2's exact normaliser/pre-tokeniser and wrap it as
    ``Qwen2Tokenizer``."""
    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS + TOOL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # Markers become single tokens anyway: split them out so no merge is spent on their pieces.
    bpe.train_from_iterator((p for t in texts for p in _MARKERS.split(t) if p), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, unk_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", errors="replace", model_max_length=32768,
                         clean_up_tokenization_spaces=False, split_special_tokens=False)
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    tok.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tok


def _mrope_section(head_dim: int) -> list[int]:
    """Split ``head_dim // 2`` rotary frequencies over (t, h, w) like Qwen2-VL's [16, 24, 24] for head_dim
    128."""
    hw = head_dim // 2 * 3 // 8
    return [head_dim // 2 - 2 * hw, hw, hw]


def build_tiny_vlm(
    out_dir: str | Path, *, corpus: Iterable[str] = (), config: TinyVLMConfig | None = None
) -> Path:
    """Train the tokenizer, build a random tiny Qwen2-VL and its processor, and save both.

    Args:
        out_dir: Directory to write to (created if needed).
        corpus: Extra tokenizer-training text (e.g. real rendered prompts), added to ``default_corpus()``.
        config: Sizes and seed; defaults to ``TinyVLMConfig()``.

    Returns:
        ``out_dir`` as a ``Path``, loadable with ``load_vlm`` or any ``from_pretrained``.

    Raises:
        ValueError: If ``hidden_size`` is not divisible by ``num_attention_heads``.
    """
    cfg = config or TinyVLMConfig()
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} not divisible by heads {cfg.num_attention_heads}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _train_tokenizer(default_corpus() + list(corpus), cfg.vocab_size)
    image_processor = qwen2_vl.Qwen2VLImageProcessorPil(
        min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    )
    processor = TinyQwen2VLProcessor(image_processor, tok, chat_template=QWEN2_VL_CHAT_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    eot, im_end = ids["<|endoftext|>"], ids["<|im_end|>"]
    mrope = _mrope_section(cfg.hidden_size // cfg.num_attention_heads)  # [4, 6, 6] for head_dim 32
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope}
    text_config = dict(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=32768,
        rope_parameters=rope,
        bos_token_id=eot,
        eos_token_id=im_end,
        pad_token_id=eot,
    )
    vision_config = dict(
        depth=cfg.vision_depth,
        embed_dim=cfg.vision_embed_dim,
        num_heads=cfg.vision_num_heads,
        hidden_size=cfg.hidden_size,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    model_config = qwen2_vl.Qwen2VLConfig(
        text_config=text_config, vision_config=vision_config, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = qwen2_vl.Qwen2VLForConditionalGeneration(model_config)
    model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=[im_end, eot], pad_token_id=eot)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("built tiny Qwen2-VL in %s: %d params, vocab %d", out, n_params, len(tok))
    return out


def load_vlm(path: str | Path, *, device: str = "cpu",
             dtype: torch.dtype | None = None) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a Qwen2-VL-family model and its processor from a local model folder (never the network).

    Works for a ``build_tiny_vlm`` folder, a real Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint and every
    checkpoint a vgym trainer writes, LoRA ones included: an adapter folder (peft's ``adapter_config.json``)
    loads its base from ``base_model_name_or_path`` and applies the adapters (see
    :mod:`vgym.engine.model_folder`). The folder is checked before anything is loaded. Without torchvision the
    stock processors of real checkpoints cannot be built (they need a video processor); then the processor
    falls back to ``TinyQwen2VLProcessor`` (same tokenizer, image processor and chat template, no video).

    Args:
        path: Local model folder.
        device: Device to move the model to.
        dtype: Model dtype; ``None`` keeps the checkpoint's.

    Returns:
        ``(model, processor)``; the model is in eval mode (a peft ``PeftModel`` for an adapter folder).

    Raises:
        ModelFolderError: ``path`` is not a folder, lacks a file a model needs (the message names the folder
            and each missing part), is an adapter whose base is not a complete local folder, or holds files
            transformers cannot load (the cause is chained; ``--debug`` shows it).
    """
    path = Path(path)
    base = check_model_folder(path)
    kwargs: dict[str, object] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model = AutoModelForImageTextToText.from_pretrained(base or path, **kwargs)
        if base is not None:
            model = _with_adapters(model, path)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:  # unreadable, not missing
        raise ModelFolderError(f"model folder {base or path} holds files transformers could not load as a "
                               f"model ({type(exc).__name__}); rerun with --debug for the cause") from exc
    model = model.to(device).eval()
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except (ImportError, ValueError, TypeError, AttributeError, OSError) as exc:
        logger.warning(
            "AutoProcessor failed on %s (%s); using TinyQwen2VLProcessor", path, type(exc).__name__
        )
        try:
            processor = TinyQwen2VLProcessor.from_pretrained(path, local_files_only=True)
        except (ImportError, ValueError, TypeError, AttributeError, OSError) as again:
            raise ModelFolderError(f"model folder {path} holds processor files transformers could not load "
                                   f"({type(again).__name__}); rerun with --debug for the cause") from again
    return model, processor


def _with_adapters(base: PreTrainedModel, folder: Path) -> Any:
    """``base`` with the LoRA adapters of ``folder`` applied (a peft ``PeftModel``, adapters frozen).

    Raises:
        ModelFolderError: peft is not installed.
    """
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise ModelFolderError(f"model folder {folder} holds LoRA adapters, which need peft: pip install "
                               "peft (or vgym[dev])") from exc
    return PeftModel.from_pretrained(base, folder, is_trainable=False)
