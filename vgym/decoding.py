"""A lean sampling loop for Qwen-VL models: one prefill per distinct prompt, then one forward per new token.

Contents: :func:`lean_decoding_supported`, :func:`mrope_positions`, :func:`sample_turn`.

``generate`` spends about a fifth of a small model's decode step in its own bookkeeping (stopping criteria, input
preparation, logits-processor plumbing), and prefills every row of a batch even when a GRPO group shows the same
prompt to all of its episodes. This loop prefills each distinct row once and copies its KV cache to the equal rows,
then runs the model on one token per step. It passes its own 3-D rotary positions, computed here from the ids and
image grids (Qwen2-VL's M-RoPE: text positions advance by one; an image's tokens take (0, row, column) offsets from
the position after the preceding text; the text after an image starts at that position plus the image's larger
side in merged patches), so it does not depend on how a transformers version derives positions during generation.
It handles images only (grid ``t == 1``); videos, and models outside the Qwen-VL family, use ``generate``.

All randomness comes from the ``generator`` argument; the global torch RNG is untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import DynamicCache

from vgym.modeling import forward_accepts, shared_image_features, unique_images

__all__ = ["lean_decoding_supported", "mrope_positions", "sample_turn"]

_MROPE_MODELS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
"""``model_type``s whose rotary positions :func:`mrope_positions` reproduces (their ``get_rope_index`` for images)."""

Warper = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A transformers logits warper: ``(input_ids (B, T), scores (B, V)) -> scores (B, V)``."""


def lean_decoding_supported(model: Any, image_grid_thw: torch.Tensor | None) -> bool:
    """Whether :func:`sample_turn` reproduces ``model``'s positions for these images (Qwen-VL family, still images)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in _MROPE_MODELS or getattr(config, "image_token_id", None) is None:
        return False
    if getattr(getattr(config, "vision_config", None), "spatial_merge_size", None) is None:
        return False
    return image_grid_thw is None or bool((image_grid_thw[:, 0] == 1).all())


def mrope_positions(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    image_token_id: int,
    merge_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen-VL 3-D rotary positions of left-padded rows of text and still images.

    Args:
        input_ids: (B, L) ids; each image is a run of ``h * w / merge_size**2`` ``image_token_id`` tokens.
        attention_mask: (B, L) 0 on padding (its positions are 0 and never attended to).
        image_grid_thw: (N, 3) grids of the images in row order, then order within the row; ``t`` must be 1.
        image_token_id: the image placeholder id.
        merge_size: the vision tower's spatial merge size.

    Returns:
        ``positions`` (3, B, L) int64 (temporal, height, width) and ``next_position`` (B,): the position of the
        first token after each row (text continues at ``next_position + k`` in all three components).

    Raises:
        ValueError: if the placeholder tokens and the grids disagree in number.
    """
    batch, length = input_ids.shape
    positions = torch.zeros(3, batch, length, dtype=torch.long)
    next_position = torch.zeros(batch, dtype=torch.long)
    grids = [] if image_grid_thw is None else [(int(h) // merge_size, int(w) // merge_size)
                                               for _, h, w in image_grid_thw.tolist()]
    grid_index = 0
    ids_cpu, mask_cpu = input_ids.cpu(), attention_mask.cpu().bool()
    for row in range(batch):
        ids = ids_cpu[row][mask_cpu[row]]
        if not len(ids):
            continue
        is_image = ids == image_token_id
        edges = (torch.nonzero(is_image[1:] != is_image[:-1]).flatten() + 1).tolist()
        parts, current = [], 0
        for start, end in zip([0, *edges], [*edges, len(ids)]):
            if not bool(is_image[start]):
                parts.append(torch.arange(current, current + end - start).expand(3, -1))
                current += end - start
                continue
            remaining = end - start
            while remaining > 0:  # a run may hold several adjacent images
                if grid_index == len(grids):
                    raise ValueError("more image placeholder tokens than image grids")
                h, w = grids[grid_index]
                grid_index += 1
                rows = torch.arange(h).repeat_interleave(w)
                cols = torch.arange(w).repeat(h)
                parts.append(torch.stack([torch.zeros_like(rows), rows, cols]) + current)
                current += max(h, w)
                remaining -= h * w
            if remaining:
                raise ValueError("an image's placeholder run does not match its grid")
        if parts:
            positions[:, row, mask_cpu[row]] = torch.cat(parts, dim=1)
        next_position[row] = current
    if grid_index != len(grids):
        raise ValueError(f"{len(grids)} image grids for {grid_index} images in the ids")
    return positions.to(input_ids.device), next_position.to(input_ids.device)


def _distinct_rows(inputs: dict[str, torch.Tensor]) -> tuple[list[int], list[int]]:
    """``(keep, inverse)`` over the batch rows: rows are equal when their ids, mask and images are all equal."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    grids = inputs.get("image_grid_thw")
    if grids is not None and len(grids):
        image_token = inputs["_image_token_id"]
        per_row = (ids == image_token).sum(-1).tolist()
        _, image_class = unique_images(inputs["pixel_values"], grids)
        sizes = (grids[:, 1] * grids[:, 2] // inputs["_merge"] ** 2).tolist()
        classes, cursor = [], 0
        for count in per_row:
            taken = []
            while count > 0:
                taken.append(image_class[cursor])
                count -= sizes[cursor]
                cursor += 1
            classes.append(tuple(taken))
    else:
        classes = [()] * len(ids)
    keep: list[int] = []
    inverse: list[int] = []
    seen: dict[Any, int] = {}
    for row, (row_ids, row_mask, images) in enumerate(zip(ids.tolist(), mask.tolist(), classes)):
        key = (tuple(row_ids), tuple(row_mask), images)
        if key not in seen:
            seen[key] = len(keep)
            keep.append(row)
        inverse.append(seen[key])
    return keep, inverse


def _rows(inputs: dict[str, torch.Tensor], keep: list[int], merge: int, image_token: int) -> dict[str, torch.Tensor]:
    """The model inputs of rows ``keep`` only (their images included)."""
    out = {k: v[keep] for k, v in inputs.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    grids = inputs.get("image_grid_thw")
    if grids is not None and len(grids):
        per_row = (inputs["input_ids"] == image_token).sum(-1).tolist()
        sizes = (grids[:, 1] * grids[:, 2] // merge**2).tolist()
        patches = grids.prod(-1).tolist()
        chunks = inputs["pixel_values"].split(patches)
        owner, cursor = [], 0
        for row, count in enumerate(per_row):
            while count > 0:
                owner.append(row)
                count -= sizes[cursor]
                cursor += 1
        wanted = set(keep)
        chosen = [i for i, row in enumerate(owner) if row in wanted]
        if chosen:
            out["pixel_values"] = torch.cat([chunks[i] for i in chosen])
            out["image_grid_thw"] = grids[chosen]
    return out


@torch.no_grad()
def sample_turn(
    model: Any,
    inputs: dict[str, torch.Tensor],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    warpers: Sequence[Warper] = (),
    greedy: bool = False,
    suppressed_ids: Sequence[int] = (),
    min_new_tokens: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one turn for every row of a left-padded batch.

    Args:
        model: a Qwen-VL ``*ForConditionalGeneration`` (see :func:`lean_decoding_supported`), in eval mode.
        inputs: :func:`vgym.modeling.model_inputs` output: ``input_ids`` (B, L), ``attention_mask`` (B, L),
            optionally ``pixel_values`` / ``image_grid_thw`` (and ``mm_token_type_ids``, passed through).
        max_new_tokens: most tokens per row.
        eos_ids: ids that end a row; after its end a row is filled with ``pad_id``.
        pad_id: the filler id.
        warpers: applied in order to the float32 scores each step (temperature, top-p), unless ``greedy``.
        greedy: take the arg-max instead of sampling.
        suppressed_ids: ids whose scores are set to -inf before warping.
        min_new_tokens: the end ids are suppressed for the first this-many tokens.
        generator: the sampling RNG (on the model's device).

    Returns:
        ``tokens`` (B, N) int64 and ``logprobs`` (B, N) float32 on the CPU, N ≤ ``max_new_tokens`` (the loop ends
        when every row has ended): each token's log-probability under the scores it was drawn from (after
        suppression and warping; for greedy decoding, after suppression only). Entries after a row's end are
        ``pad_id`` / 0.
    """
    image_token = int(model.config.image_token_id)
    merge = int(model.config.vision_config.spatial_merge_size)
    batch = inputs["input_ids"].shape[0]
    device = inputs["input_ids"].device
    keep, inverse = _distinct_rows({**inputs, "_image_token_id": image_token, "_merge": merge})
    prefill = _rows(inputs, keep, merge, image_token) if len(keep) < batch else dict(inputs)
    positions, next_position = mrope_positions(prefill["input_ids"], prefill["attention_mask"],
                                               prefill.get("image_grid_thw"), image_token, merge)
    cache_key = "cache" if forward_accepts(model, "cache") else "past_key_values"
    extra = {"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}
    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # an older signature
        cache = DynamicCache()
    with shared_image_features(model):
        out = model(**prefill, position_ids=positions, use_cache=True, **{cache_key: cache}, **extra)
    logits = out.logits[:, -1]
    if len(keep) < batch:
        index = torch.tensor(inverse, device=device)
        cache.reorder_cache(index)
        logits, next_position = logits[index], next_position[index]
    mask = inputs["attention_mask"]
    eos = torch.tensor(list(eos_ids), device=device)
    suppress = torch.tensor(list(suppressed_ids), dtype=torch.long, device=device)
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(batch, max_new_tokens, device=device)
    rows = torch.arange(batch, device=device)  # the batch row of each cache row
    running = torch.ones(batch, dtype=torch.bool, device=device)  # per cache row
    seen = inputs["input_ids"]
    length = 0
    for step in range(max_new_tokens):
        scores = logits.float()
        if len(suppress):
            scores[:, suppress] = -float("inf")
        if step < min_new_tokens:
            scores[:, eos] = -float("inf")
        if greedy:
            chosen = scores.argmax(-1)
        else:
            for warp in warpers:
                scores = warp(seen, scores)
            chosen = torch.multinomial(torch.softmax(scores, -1), 1, generator=generator).squeeze(-1)
        logp = scores.gather(-1, chosen[:, None]).squeeze(-1) - torch.logsumexp(scores, -1)
        chosen = torch.where(running, chosen, pad_id)
        tokens[rows, step] = chosen
        logprobs[rows, step] = torch.where(running, logp, 0.0)
        length = step + 1
        running &= ~torch.isin(chosen, eos)
        alive = int(running.sum())
        if step == max_new_tokens - 1 or not alive:
            break
        if alive <= len(rows) // 2:  # drop ended rows once half have ended: at most log2(B) copies of the cache
            live = running.nonzero().squeeze(-1)
            cache.reorder_cache(live)
            rows, running, chosen = rows[live], running[live], chosen[live]
            mask, next_position, seen = mask[live], next_position[live], seen[live]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        step_positions = (next_position + step).view(1, -1, 1).expand(3, -1, -1)
        if warpers and not greedy:
            seen = torch.cat([seen, chosen[:, None]], dim=1)
        out = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=step_positions, use_cache=True,
                    **{cache_key: cache})
        logits = out.logits[:, -1]
    return tokens[:, :length].cpu(), logprobs[:, :length].float().cpu()
