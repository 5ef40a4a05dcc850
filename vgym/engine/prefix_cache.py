"""KV reuse across turns: an episode's next turn reads its earlier turns from the keys and values kept last
turn.

Contents: :class:`PrefixCache`, :func:`prefill`, :func:`record`, :func:`new_cache`, :func:`cache_keyword`.

A multi-turn episode's turn ``t + 1`` sequence is its turn ``t`` sequence, the tokens generated at turn ``t``,
and the environment's reply. :func:`vgym.engine.decoding.sample_turn` records, for every row it decoded, the
keys and values of the tokens the model has read (prompt and fed generated tokens), and :func:`prefill` then
runs the model only on the new tail of each row (the reply, its images and the generation prompt), attending
to the kept prefix. Rotary positions are absolute and passed explicitly, so a prefix's keys are valid wherever
its row sits in the next batch.

Entries are exact: a row reuses an entry only if the entry's ids are a prefix of the row's ids and the images
among them are equal (``torch.equal``). Entries hold keys computed with the weights of their time: the cache
empties itself when any parameter was modified in place since (an optimizer step, ``load_state_dict``), and
:meth:`PrefixCache.clear` frees it at once (the rollout calls it when it ends).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from vgym.engine.modeling import forward_accepts, image_inputs, token_types

__all__ = ["PrefixCache", "cache_keyword", "new_cache", "prefill", "record"]

_WEIGHTS = torch.randint(-(2**62), 2**62, (1 << 12,), generator=torch.Generator().manual_seed(0))
"""Per-position multipliers of the prefix fingerprints (extended as needed; int64 arithmetic wraps)."""


def _fingerprints(ids: torch.Tensor) -> torch.Tensor:
    """(n,) int64: element ``i`` fingerprints ``ids[: i + 1]`` (a weighted prefix sum; collisions are
    re-checked)."""
    global _WEIGHTS
    if len(ids) > len(_WEIGHTS):
        extra = torch.randint(
            -(2**62), 2**62, (len(ids),), generator=torch.Generator().manual_seed(len(_WEIGHTS))
        )
        _WEIGHTS = torch.cat([_WEIGHTS, extra])
    return torch.cumsum((ids.cpu().long() + 1) * _WEIGHTS[: len(ids)], 0)


@dataclass
class _Entry:
    ids: torch.Tensor
    """(n,) the tokens whose keys and values are held, on the CPU."""
    images: list[torch.Tensor]
    """Patches of each image among ``ids``, in order."""
    grids: torch.Tensor
    """(len(images), 3) their grids."""
    source: list[tuple[torch.Tensor, torch.Tensor]]
    """Per decoder layer, the decoding cache's keys and values (rows, heads, columns, head_dim) at recording
    time (the cache replaces its tensors as it grows, so these stay as they were)."""
    row: int
    columns: torch.Tensor
    """The columns of ``source`` row ``row`` that hold ``ids``, in order."""
    versions: list[int]
    """``source`` tensors' in-place-modification counters at recording time."""

    def intact(self) -> bool:
        """False if a cache implementation wrote into the recorded tensors in place since (then unusable)."""
        return hasattr(self, "_layers") or [t._version for pair in self.source for t in pair] == self.versions

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, keys and values (heads, n, head_dim) — gathered on first use (most entries never
        are)."""
        if not hasattr(self, "_layers"):
            self._layers = [
                (k[self.row].index_select(1, self.columns), v[self.row].index_select(1, self.columns))
                for k, v in self.source
            ]
            self.source = []
        return self._layers


class PrefixCache:
    """Keys and values of the rows decoded in the last two calls, found by exact prefix match."""

    def __init__(self) -> None:
        self.generations: list[dict[tuple[int, int], list[_Entry]]] = []
        self.version: int | None = None
        # the model and its parameters, listed once
        self._params: tuple[Any, list[torch.Tensor]] | None = None

    def clear(self) -> None:
        """Drop every entry (frees their memory)."""
        self.generations = []

    def check_weights(self, model: Any) -> None:
        """Empty the cache if a parameter of ``model`` was modified in place since the last call."""
        if self._params is None or self._params[0] is not model:
            self._params = (model, list(model.parameters()))
        version = sum(p._version for p in self._params[1])  # bumped by in-place updates (optimizer, copy_)
        if version != self.version:
            self.clear()
            self.version = version

    def start_generation(self) -> dict[tuple[int, int], list[_Entry]]:
        """A new call's entry table; the one before the previous call's is dropped."""
        self.generations = [*self.generations[-1:], {}]
        return self.generations[-1]

    def add(self, table: dict[tuple[int, int], list[_Entry]], entry: _Entry) -> None:
        if len(entry.ids):
            key = (len(entry.ids), int(_fingerprints(entry.ids)[-1]))
            table.setdefault(key, []).append(entry)

    def lookup(self, ids: torch.Tensor, images: list[torch.Tensor], grids: torch.Tensor) -> _Entry | None:
        """The longest entry whose ids are a proper prefix of ``ids`` with equal images (patches and grids:
        equal patches laid out on another grid get other positions), or None."""
        tables = self.generations[:-1]  # not the table this call is filling
        if not tables:
            return None
        prints = _fingerprints(ids)
        lengths = sorted({n for table in tables for n, _ in table if n < len(ids)}, reverse=True)
        for n in lengths:
            for table in tables:
                for entry in table.get((n, int(prints[n - 1])), []):
                    k = len(entry.images)
                    if (k <= len(images) and entry.intact() and torch.equal(entry.ids, ids[:n].cpu())
                            and torch.equal(entry.grids.cpu(), grids[:k].cpu())
                            and all(torch.equal(a, b) for a, b in zip(entry.images, images[:k]))):
                        return entry
        return None


def new_cache(model: Any) -> Any:
    """An empty ``DynamicCache`` for ``model``."""
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # an older signature
        return DynamicCache()


def cache_keyword(model: Any) -> str:
    """The keyword ``model.forward`` takes its KV cache by: ``cache`` (transformers ≥ 5.2x) or
    ``past_key_values``."""
    return "cache" if forward_accepts(model, "cache") else "past_key_values"


def _layers(cache: Any) -> list[Any] | None:
    """The cache's per-layer objects with ``keys`` / ``values`` tensors, or None for another layout."""
    layers = getattr(cache, "layers", None)
    if not layers or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        return None
    return list(layers)


def record(prefix_cache: PrefixCache, table: dict[tuple[int, int], list[_Entry]], cache: Any, row: int,
           columns: torch.Tensor, ids: torch.Tensor, images: list[torch.Tensor], grids: torch.Tensor) -> None:
    """Keep cache row ``row``'s keys and values at ``columns`` (the columns holding ``ids``, in order)."""
    layers = _layers(cache)
    if layers is None or len(columns) != len(ids):
        return
    source = [(layer.keys, layer.values) for layer in layers]
    prefix_cache.add(table, _Entry(ids=ids.cpu(), images=images, grids=grids, source=source, row=row,
                                   columns=columns, versions=[t._version for pair in source for t in pair]))


def prefill(
    model: Any,
    inputs: dict[str, torch.Tensor],
    positions: torch.Tensor,
    row_images: list[list[torch.Tensor]],
    row_grids: list[torch.Tensor],
    prefix_cache: PrefixCache | None,
    cache_key: str,
    extra: dict[str, Any],
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Run the prompt of every row, reading kept prefixes instead of recomputing them.

    Args:
        inputs: ``input_ids`` / ``attention_mask`` (B, L) left-padded, with the rows' images.
        positions: (3, B, L) the rows' rotary positions.
        row_images / row_grids: each row's image patches (list per row) and grids ((k, 3) per row).
        prefix_cache: where kept prefixes are looked up (None: no reuse).

    Returns:
        ``(cache, logits, mask)``: the KV cache of the B rows, the last position's logits (B, V), and the
            cache's
        attention mask (B, C) (zeros on padding, including padding between a kept prefix and its new tail).
    """
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    batch, width = ids.shape
    lengths = mask.sum(-1).tolist()
    hits = [None] * batch
    if prefix_cache is not None:
        hits = [
            prefix_cache.lookup(ids[b, width - lengths[b] :], row_images[b], row_grids[b])
            for b in range(batch)
        ]
    cache = new_cache(model)
    if not any(hits):
        out = model(**inputs, position_ids=positions, use_cache=True, **{cache_key: cache}, **extra)
        return cache, out.logits[:, -1], mask
    kept = [len(h.ids) if h else 0 for h in hits]
    tails = [n - k for n, k in zip(lengths, kept)]
    prefix_width, tail_width = max(kept), max(tails)
    template = next(h for h in hits if h).layers
    for layer, (k0, v0) in enumerate(template):
        keys = k0.new_zeros(batch, k0.shape[0], prefix_width, k0.shape[2])
        values = v0.new_zeros(batch, v0.shape[0], prefix_width, v0.shape[2])
        for b, hit in enumerate(hits):
            if hit:
                keys[b, :, prefix_width - kept[b]:] = hit.layers[layer][0]
                values[b, :, prefix_width - kept[b]:] = hit.layers[layer][1]
        cache.update(keys, values, layer)
    new_ids = ids.new_zeros(batch, tail_width)
    new_positions = positions.new_zeros(3, batch, tail_width)
    full_mask = mask.new_zeros(batch, prefix_width + tail_width)
    for b in range(batch):
        new_ids[b, tail_width - tails[b]:] = ids[b, width - tails[b]:]
        new_positions[:, b, tail_width - tails[b]:] = positions[:, b, width - tails[b]:]
        full_mask[b, prefix_width - kept[b]:prefix_width] = 1
        full_mask[b, prefix_width + tail_width - tails[b]:] = 1
    done = [len(hit.images) if hit else 0 for hit in hits]  # images already in the kept prefix
    step_inputs: dict[str, Any] = {
        "input_ids": new_ids,
        "attention_mask": full_mask,
        **image_inputs(
            [images[d:] for images, d in zip(row_images, done)],
            [grids[d:] for grids, d in zip(row_grids, done)],
        ),
    }
    if "mm_token_type_ids" in inputs:
        step_inputs["mm_token_type_ids"] = token_types(model, new_ids)
    out = model(**step_inputs, position_ids=new_positions, use_cache=True, **{cache_key: cache}, **extra)
    return cache, out.logits[:, -1], full_mask
