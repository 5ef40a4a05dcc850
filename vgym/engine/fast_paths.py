"""Which of vgym's fast paths a model may take with the installed transformers; ``generate`` and the plain
forward otherwise.

Contents: :data:`CHECKED_TRANSFORMERS`, :data:`FAMILIES`, :class:`FastPaths`, :func:`fast_paths`,
:func:`installed_transformers`.

The lean sampling loop (:mod:`~vgym.engine.decoding`, with the KV reuse of :mod:`~vgym.engine.prefix_cache`),
its direct decode steps (:mod:`~vgym.engine.decode_step`) and the shared-prompt loss forward
(:mod:`~vgym.engine.shared_prefix`) redo parts of transformers' Qwen-VL code: 3-D rotary positions, attention,
the cache's layout. Their tests compare them with the model's own forward, token for token; they are exact on
the transformers versions and model families those tests ran on, :data:`CHECKED_TRANSFORMERS` and
:data:`FAMILIES`. For any other version or family, :func:`fast_paths` turns them off and vgym uses
``generate`` and the plain forward (slower, never wrong), and says which and why once per process on this
module's logger. The primitives themselves stay callable on any version, so their equivalence tests run
wherever the suite runs — which is how a new version joins :data:`CHECKED_TRANSFORMERS`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["CHECKED_TRANSFORMERS", "FAMILIES", "FastPaths", "fast_paths", "installed_transformers"]

logger = logging.getLogger(__name__)

CHECKED_TRANSFORMERS: frozenset[tuple[int, int]] = frozenset((5, minor) for minor in range(5, 26))
"""The ``(major, minor)`` transformers releases the fast paths' equivalence tests passed on (any patch release
of them): 5.5 to 5.25. 5.24 and 5.25 in earlier sessions; in the eighth, ``tests/engine``, the chat encoder,
the HF policy and the three families' processors passed on 5.5.4, 5.6.2, 5.7.0, 5.8.1, 5.9.0, 5.10.4, 5.11.0,
5.12.1, 5.13.1, 5.14.1, 5.15.1, 5.16.1, 5.17.0, 5.18.0, 5.19.0, 5.20.2, 5.21.1, 5.22.2 and 5.23.0. Not 5.4
(its Qwen2-VL image processor needs torchvision) nor 5.5.0–5.5.3 (Qwen2.5-VL's own positions differ from
ours), which pyproject's ``transformers>=5.5.4`` keeps out. CI reruns them on 5.5.4 (the lowest), 5.10.4
(what ``pip install 'vgym[verl]'`` resolves) and what ``make setup`` installs."""

FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
"""``config.model_type`` of the model families the equivalence tests cover (random tiny models of each)."""


@dataclass(frozen=True)
class FastPaths:
    """The fast paths a model may take.

    Attributes:
        decoder: the lean sampling loop with KV reuse across turns (:func:`vgym.engine.decoding.sample_turn`)
            instead of ``generate``.
        direct_steps: its decode steps through :class:`vgym.engine.decode_step.DecodeStep` (where that also
            supports the model: attention implementation, no hooks) instead of ``model(...)``.
        shared_prompt: the loss forward runs each group's prompt once
            (:func:`vgym.engine.shared_prefix.shared_prefix_logits`) instead of the plain forward.
        reason: why they are off (None when on).
    """

    decoder: bool
    direct_steps: bool
    shared_prompt: bool
    reason: str | None = None


def installed_transformers() -> str:
    """The installed transformers version string."""
    import transformers

    return str(transformers.__version__)


def _minor(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


@functools.lru_cache(maxsize=None)
def _decide(version: str, family: str | None) -> FastPaths:
    """The decision for one (transformers version, model family); logged once, when first made."""
    minor = _minor(version)
    low, high = min(CHECKED_TRANSFORMERS), max(CHECKED_TRANSFORMERS)
    checked = f"{low[0]}.{low[1]}–{high[0]}.{high[1]}"
    if family not in FAMILIES:
        reason = f"model family {family!r} is not one the fast paths were checked on ({', '.join(FAMILIES)})"
    elif minor not in CHECKED_TRANSFORMERS:
        reason = f"transformers {version} is not a version the fast paths were checked on ({checked})"
    else:
        logger.info("fast paths on: transformers %s, %s (lean decoder, direct decode steps, KV reuse, "
                    "shared-prompt loss forward)", version, family)
        return FastPaths(True, True, True)
    logger.warning("vgym uses generate and the plain forward: %s", reason)
    return FastPaths(False, False, False, reason)


def fast_paths(model: Any) -> FastPaths:
    """The fast paths ``model`` may take with the installed transformers (see the module docstring).

    Args:
        model: a transformers model (its ``config.model_type`` names its family; a peft wrapper forwards it).

    Returns:
        All on for a checked family on a checked transformers version, else all off with the reason (logged
        once per process and (version, family)).
    """
    family = getattr(getattr(model, "config", None), "model_type", None)
    return _decide(installed_transformers(), family)
