"""The loss forward with each distinct prompt computed once: a GRPO group's G rows share their prompt.

Contents: :func:`shared_prefix_logits`.

A training batch of G episodes per sample repeats each sample's prompt (system text, tool schemas, the image)
G times, and the plain forward and backward pay for every copy. Here the columns before the first trained
token are run once per distinct prefix (with its images) into a KV cache, the cache rows are copied to the
rows that share them (``index_select``: in the backward, the gradients of the copies add up, as they would
over separate copies), and the rest of every row is run against it. Logits and gradients equal the plain
forward's up to float rounding. Rotary positions are passed explicitly
(:func:`vgym.engine.decoding.mrope_positions`), so it applies to the Qwen-VL family with still images.

Under gradient checkpointing (the GPU recipes) the backward replays each decoder layer's forward, so a cache
that grew on the first run would grow again. The two caches here never grow: the prefix pass's records each
layer's first keys and values and returns what it is given, the tail pass's returns the prefix joined to what
it is given, so a replay computes what the first run did. transformers drops any cache a checkpointed layer is
handed unless the layer declares that it may keep one (``_can_checkpoint_with_cache``, set on the layers for
the two calls), and checkpointing must be non-reentrant (a reentrant replay would not carry gradients back
through the prefix's keys and values); where either is not so — an older transformers, ``use_reentrant=True``
— the plain forward runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import DynamicCache

try:
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # an older transformers: checkpointed layers drop caches there
    GradientCheckpointingLayer = None

from vgym.engine.decoding import distinct, image_classes, lean_decoding_supported, mrope_positions, row_images
from vgym.engine.modeling import forward_accepts, image_inputs, token_types
from vgym.engine.prefix_cache import cache_keyword

__all__ = ["shared_prefix_logits"]

MIN_PREFIX = 8
"""Shorter shared prefixes are not worth the second forward call."""


class _Recorder(DynamicCache):
    """Keeps each layer's first keys and values; stores nothing else and returns what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.recorded: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.recorded.setdefault(layer_idx, (key_states, value_states))
        return key_states, value_states


class _FixedPrefix(DynamicCache):
    """Reads a fixed prefix: ``update`` returns the prefix's keys and values joined to the given ones and
    stores nothing, so its length (for the attention mask) stays the prefix's."""

    def __init__(self, layers: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        for index in sorted(layers):
            super().update(*layers[index], index)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layers[layer_idx]
        return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)


def _checkpointed_layers(model: Any) -> list[Any] | None:
    """The gradient-checkpointed layers of ``model`` ([] without checkpointing), or None where the caches
    above cannot pass them (this transformers drops caches regardless, or the checkpointing is reentrant)."""
    flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    if not flagged:
        return []
    kind = GradientCheckpointingLayer
    layers = [m for m in flagged if kind is not None and isinstance(m, kind)]
    if not layers or not hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache"):
        return None  # checkpointing done by the model's own loop, or layers that drop any cache
    for layer in layers:
        keywords = getattr(getattr(layer, "_gradient_checkpointing_func", None), "keywords", {})
        if keywords.get("use_reentrant") is not False:
            return None
    return layers


@contextlib.contextmanager
def _keep_caches(layers: list[Any]) -> Iterator[None]:
    """Let checkpointed ``layers`` keep the cache they are handed (instance attributes, removed
    afterwards)."""
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache


def _cut(ids: torch.Tensor, first: int, image_token: int) -> int:
    """The prefix length: ``first - 1`` (the logits from column ``first - 1`` on are wanted), moved back so
    that no row's image placeholder run is split (a run may end exactly at the cut: its image is then in the
    prefix)."""
    cut = first - 1
    while cut > 0 and bool(((ids[:, cut - 1] == image_token) & (ids[:, cut] == image_token)).any()):
        cut -= 1
    return cut


def shared_prefix_logits(model: Any, inputs: dict[str, torch.Tensor], first: int) -> torch.Tensor | None:
    """Logits (B, T - first + 1, V) of a right-padded batch, each distinct prefix computed once.

    Args:
        model: a Qwen-VL ``*ForConditionalGeneration`` (train or eval mode; grads flow as in a plain forward).
        inputs: :func:`vgym.engine.modeling.model_inputs` of a right-padded batch: ``input_ids`` (B, T),
            ``attention_mask`` (B, T), optionally ``pixel_values`` / ``image_grid_thw`` (rows' images in
            order).
        first: the first column holding a trained token (logits are wanted from column ``first - 1``).

    Returns:
        The logits, or None when sharing does not apply (another model, videos, gradient checkpointing it
            cannot
        pass, a prefix shorter than :data:`MIN_PREFIX` or padded in some row, or no two rows sharing one) —
            run
        the plain forward.
    """
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    grids = inputs.get("image_grid_thw")
    checkpointed = _checkpointed_layers(model)
    if (
        not lean_decoding_supported(model, grids)
        or checkpointed is None
        or not forward_accepts(model, "logits_to_keep")
    ):
        return None
    image_token = int(model.config.image_token_id)
    merge = int(model.config.vision_config.spatial_merge_size)
    cut = _cut(ids, first, image_token)
    if cut < MIN_PREFIX or not bool(mask[:, :cut].all()):
        return None
    images, row_grids = row_images(inputs, image_token, merge)
    sizes = [(g[:, 1] * g[:, 2] // merge**2).tolist() for g in row_grids]
    in_prefix = []  # per row: how many of its images lie in the prefix
    for row in range(len(ids)):
        tokens, count = int((ids[row, :cut] == image_token).sum()), 0
        while tokens > 0:
            tokens -= sizes[row][count]
            count += 1
        in_prefix.append(count)
    classes = image_classes(inputs, images, in_prefix)
    keep, inverse = distinct([(tuple(prefix), c) for prefix, c in zip(ids[:, :cut].tolist(), classes)])
    if len(keep) == len(ids):
        return None
    positions, _ = mrope_positions(ids, mask, grids, image_token, merge)
    cache_key, recorder = cache_keyword(model), _Recorder()
    types = "mm_token_type_ids" in inputs
    head = image_inputs(
        [images[r][: in_prefix[r]] for r in keep], [row_grids[r][: in_prefix[r]] for r in keep]
    )
    head_ids = ids[keep, :cut]
    tail = image_inputs([images[r][in_prefix[r]:] for r in range(len(ids))],
                        [row_grids[r][in_prefix[r]:] for r in range(len(ids))])
    tail_ids = ids[:, cut:]
    rows = torch.tensor(inverse, device=ids.device)
    with _keep_caches(checkpointed):
        model(
            input_ids=head_ids,
            attention_mask=mask[keep, :cut],
            position_ids=positions[:, keep, :cut],
            use_cache=False,
            logits_to_keep=1,
            **{cache_key: recorder},
            **head,
            **_types(model, head_ids, types),
        )
        prefix = _FixedPrefix({i: (k.index_select(0, rows), v.index_select(0, rows))
                               for i, (k, v) in recorder.recorded.items()})
        out = model(
            input_ids=tail_ids,
            attention_mask=mask,
            position_ids=positions[:, :, cut:],
            use_cache=False,
            logits_to_keep=ids.shape[1] - first + 1,
            **{cache_key: prefix},
            **tail,
            **_types(model, tail_ids, types),
        )
    return out.logits


def _types(model: Any, ids: torch.Tensor, wanted: bool) -> dict[str, torch.Tensor]:
    return {"mm_token_type_ids": token_types(model, ids)} if wanted else {}
