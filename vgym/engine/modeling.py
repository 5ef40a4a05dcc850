"""Model-input assembly shared by the policies and the trainers.

Contents: :func:`model_inputs`, :func:`token_types`, :func:`image_inputs`, :func:`forward_accepts`,
:func:`shared_image_features`, :func:`unique_images`, :func:`load_pretrained_in_place`,
:func:`enable_checkpointing`; :data:`VISION_PLACEHOLDER_TOKENS` and :func:`vision_placeholder_ids`, the tokens
no policy may generate (and a trainer must not score).

Recent transformers Qwen-VL models need ``mm_token_type_ids`` (0 text, 1 image, 2 video) to compute their
multimodal rotary positions; without it ``generate`` silently falls back to 1-D text positions and ``forward``
raises. The processor returns it for a whole prompt, but our sequences are built by appending chunks, so we
derive it from the ids instead, for every model whose ``forward`` accepts it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from typing import Any

import torch

__all__ = [
    "model_inputs", "token_types", "image_inputs", "forward_accepts", "shared_image_features",
    "unique_images", "load_pretrained_in_place", "enable_checkpointing", "VISION_PLACEHOLDER_TOKENS",
    "vision_placeholder_ids",
]

VISION_PLACEHOLDER_TOKENS: tuple[str, ...] = (
    "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
)
"""Vision placeholder tokens of the Qwen-VL family. A generated one would desynchronise image tokens and image
features on the next turn, so policies never sample them."""


def vision_placeholder_ids(tokenizer: Any) -> list[int]:
    """The ids of the :data:`VISION_PLACEHOLDER_TOKENS` in ``tokenizer``'s vocabulary, in that order.

    Policies suppress them when sampling, and a trainer masks them in the loss's logits so that it scores the
    distribution the rollout sampled from.

    Args:
        tokenizer: a transformers tokenizer (``processor.tokenizer``), or anything with ``get_vocab()``.

    Returns:
        The ids of the placeholders the vocabulary holds; empty for a model family without them.
    """
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in VISION_PLACEHOLDER_TOKENS if t in vocab]


def model_inputs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Keyword arguments for ``model(**...)`` / ``model.generate(**...)``, on the model's device and dtype.

    Args:
        model: a transformers VLM.
        input_ids: (B, T) int64.
        attention_mask: (B, T) 0/1.
        pixel_values: (P, D) patches of every image in batch order, or None.
        image_grid_thw: (N, 3), or None.

    Returns:
        ``input_ids``, ``attention_mask``, and with images ``pixel_values`` (model dtype), ``image_grid_thw``;
        plus ``mm_token_type_ids`` (B, T) where the model's forward takes it.
    """
    param = next(model.parameters())
    out: dict[str, torch.Tensor] = {
        "input_ids": input_ids.to(param.device),
        "attention_mask": attention_mask.to(param.device),
    }
    if pixel_values is not None:
        out["pixel_values"] = pixel_values.to(device=param.device, dtype=param.dtype)
        out["image_grid_thw"] = image_grid_thw.to(param.device)  # type: ignore[union-attr]
    if forward_accepts(model, "mm_token_type_ids"):
        out["mm_token_type_ids"] = token_types(model, out["input_ids"])
    return out


def token_types(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """``mm_token_type_ids`` for ``input_ids`` (B, T): 0 text, 1 image placeholder, 2 video placeholder."""
    types = torch.zeros_like(input_ids)
    for value, key in ((1, "image_token_id"), (2, "video_token_id")):
        token = getattr(model.config, key, None)
        if token is not None:
            types[input_ids == token] = value
    return types


def image_inputs(images: list[list[torch.Tensor]], grids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``pixel_values`` / ``image_grid_thw`` for rows' images in row order (per row: a list of patch tensors
    and their (k, 3) grids); empty when no row has an image."""
    flat = [image for row in images for image in row]
    if not flat:
        return {}
    return {"pixel_values": torch.cat(flat), "image_grid_thw": torch.cat([g for g in grids if len(g)])}


def forward_accepts(model: Any, name: str) -> bool:
    """Whether ``model.forward`` takes the keyword ``name`` (looked through a peft wrapper, whose own
    signature hides the base model's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in _forward_parameters(type(base))


@functools.lru_cache(maxsize=64)
def _forward_parameters(cls: type) -> frozenset[str]:
    """The keyword names of ``cls.forward`` (``inspect.signature`` costs ~0.2 ms; asked several times a
    step)."""
    return frozenset(inspect.signature(cls.forward).parameters)


def load_pretrained_in_place(model: Any, folder: Any) -> None:
    """Load the weights a ``model.save_pretrained(folder)`` wrote back into ``model`` (same object, in place).

    Goes through ``from_pretrained``, which undoes the key renaming ``save_pretrained`` applies (e.g.
    Qwen2-VL's ``model.language_model.*`` is saved as ``model.*``); loading the raw safetensors file would
    silently match almost no key.
    """
    saved = type(model).from_pretrained(folder, local_files_only=True)
    model.load_state_dict(saved.state_dict())


def unique_images(pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> tuple[list[int], list[int]]:
    """Find the distinct images of a batch (a GRPO group shows one image to every episode).

    Args:
        pixel_values: (P, D) patches of every image, image after image.
        image_grid_thw: (N, 3) each image's patch grid (its row count is the product).

    Returns:
        ``(keep, inverse)``: indices of the first occurrence of each distinct image, in order, and for every
        image the position in ``keep`` of its equal. Images are equal when their grids and patches are exactly
        equal (a projection of the patches narrows the candidates; ``torch.equal`` decides).
    """
    sizes = image_grid_thw.prod(-1)
    columns = pixel_values[:, :: max(1, pixel_values.shape[1] // 64)].float()  # a sample of columns suffices
    weights = torch.rand(columns.shape[1], generator=torch.Generator().manual_seed(0)).to(columns.device)
    image_of_row = torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes)
    starts = (sizes.cumsum(0) - sizes)[image_of_row]  # (P,) the first row of each row's image
    row_in_image = torch.arange(len(columns), device=columns.device) - starts + 1
    prints = torch.zeros(len(sizes), dtype=torch.float64, device=columns.device).index_add_(
        0, image_of_row.to(columns.device), ((columns @ weights) * row_in_image).double()).tolist()
    sizes = sizes.tolist()
    chunks = pixel_values.split(sizes)
    keep: list[int] = []
    inverse: list[int] = []
    seen: dict[tuple[Any, ...], list[int]] = {}
    for i, key in enumerate(zip(map(tuple, image_grid_thw.tolist()), prints)):
        match = next((j for j in seen.get(key, []) if torch.equal(chunks[keep[j]], chunks[i])), None)
        if match is None:
            match = len(keep)
            keep.append(i)
            seen.setdefault(key, []).append(match)
        inverse.append(match)
    return keep, inverse


def _vision_owner(model: Any) -> Any | None:
    """The submodule whose ``forward`` calls ``self.get_image_features`` (Qwen-VL's inner ``*Model``), or
    None."""
    for module in model.modules():
        if all(hasattr(module, name) for name in ("get_image_features", "visual", "language_model")):
            return module
    return None


@contextlib.contextmanager
def shared_image_features(model: Any) -> Iterator[None]:
    """Within the block, ``model`` encodes each distinct image of a call once and reuses its features.

    GRPO shows a sample's image to all G episodes of its group, so generation's prefill and the loss forward
    would otherwise run the vision tower G times on the same pixels. Features are computed for the distinct
    images (:func:`unique_images`) and handed back in the original order; gradients of the shared features sum
    over their uses, as they would over copies. The outputs equal the unshared call's up to float rounding.
    Works with the Qwen-VL ``get_image_features`` output (``pooler_output`` split per image, plus Qwen3-VL's
    ``deepstack_features``); any other output, or a model without that method, runs unshared.
    """
    owner = _vision_owner(model)
    if owner is None:
        yield
        return
    original = owner.get_image_features

    def shared(pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if image_grid_thw is None or len(image_grid_thw) < 2:
            return original(pixel_values, image_grid_thw, **kwargs)
        keep, inverse = unique_images(pixel_values, image_grid_thw)
        if len(keep) == len(inverse):
            return original(pixel_values, image_grid_thw, **kwargs)
        chunks = pixel_values.split(image_grid_thw.prod(-1).tolist())
        out = original(torch.cat([chunks[i] for i in keep]), image_grid_thw[keep], **kwargs)
        pooled = getattr(out, "pooler_output", None)
        if not isinstance(pooled, (tuple, list)) or len(pooled) != len(keep):
            return original(pixel_values, image_grid_thw, **kwargs)  # an output layout we do not know
        out.pooler_output = tuple(pooled[j] for j in inverse)
        deepstack = getattr(out, "deepstack_features", None)
        if deepstack is not None:  # Qwen3-VL: per layer, split per image (5.24) or concatenated (5.17)
            sizes = [len(p) for p in pooled]
            out.deepstack_features = [type(f)(f[j] for j in inverse) if isinstance(f, (tuple, list))
                                      else torch.cat([f.split(sizes)[j] for j in inverse]) for f in deepstack]
        return out

    owner.get_image_features = shared
    try:
        yield
    finally:
        del owner.get_image_features  # the class's method again


def enable_checkpointing(model: Any, reentrant: bool = False) -> None:
    """Turn on activation (gradient) checkpointing, non-reentrant unless asked: PyTorch's recommended kind,
    and the one under which :func:`vgym.engine.shared_prefix.shared_prefix_logits` can share a group's prompt
    (transformers' default has changed between versions, so it is asked for explicitly)."""
    kwargs = {"use_reentrant": reentrant}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
