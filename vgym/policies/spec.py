"""Policies named by a spec string, as ``vgym eval --policy`` takes them: ``oracle``, ``random``, ``hf:DIR``,
``vllm:DIR``, ``openai:URL[#model[,key=value...]]`` (keys ``tool_calling`` = text | native | auto and
``tool_images`` = tool | user, see :class:`~vgym.policies.openai.OpenAIPolicyConfig`; e.g.
``openai:http://127.0.0.1:8000/v1#Qwen2-VL-7B,tool_calling=text``).

Contents: :class:`PolicyMaker`, :func:`make_policy`.

:func:`make_policy` loads the backend once (model weights, a vLLM engine) and returns a :class:`PolicyMaker`,
which builds the policy of each attempt from a seed, sharing what was loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vgym.errors import InvalidConfigError
from vgym.policies.base import Policy
from vgym.policies.oracle import OraclePolicy
from vgym.policies.random_answer import RandomAnswerPolicy

__all__ = ["PolicyMaker", "make_policy"]


@dataclass
class PolicyMaker:
    """A loaded policy backend: ``make(seed)`` builds the policy of one attempt (model weights are shared)."""

    make: Callable[[int], Policy]
    """Seed -> policy."""
    processor: Any = None
    """The model's processor for token-level rollouts (``hf:``/``vllm:``); None for text-only policies, whose
    rollouts carry no tokens."""


def make_policy(spec: str, *, device: str = "auto", temperature: float = 0.0, max_new_tokens: int = 256,
                seed: int = 0) -> PolicyMaker:
    """Load the policy named by ``spec``.

    Args:
        spec: ``oracle``, ``random`` (uniform over the task's answer choices, no tools), ``hf:DIR`` (a local
            transformers checkpoint), ``vllm:DIR`` or ``openai:URL[#model[,key=value...]]`` (model defaults
            to ``default``; keys ``tool_calling`` and ``tool_images``).
        device: ``hf:`` policies: ``cpu``, ``cuda`` or ``auto`` (cuda when available).
        temperature: sampling temperature of model policies (0 = greedy).
        max_new_tokens: most tokens per model turn.
        seed: the vLLM engine's seed (each attempt's policy gets its own seed from :attr:`PolicyMaker.make`).

    Raises:
        InvalidConfigError: for an unknown spec form, or a bad ``openai:`` option or value.
        FileNotFoundError: for a missing ``hf:``/``vllm:`` checkpoint directory.
    """
    kind, _, rest = spec.partition(":")
    if spec == "oracle":
        return PolicyMaker(lambda s: OraclePolicy(seed=s))
    if spec == "random":
        return PolicyMaker(lambda s: RandomAnswerPolicy(s))
    if kind == "hf" and rest:
        import torch

        from vgym.engine.tiny import load_vlm
        from vgym.policies.hf import GenerationConfig, HFPolicy

        where = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        model, processor = load_vlm(rest, device=where)
        gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature)
        return PolicyMaker(lambda s: HFPolicy(model, processor, gen, seed=s), processor)
    if kind == "vllm" and rest:
        from transformers import AutoProcessor

        from vgym.policies.vllm import VLLMPolicy, VLLMPolicyConfig

        vcfg = VLLMPolicyConfig(model=rest, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        first = VLLMPolicy(vcfg)  # builds the engine once; later attempts share it
        return PolicyMaker(lambda s: VLLMPolicy(dataclasses.replace(vcfg, seed=s), engine=first.engine),
                           AutoProcessor.from_pretrained(rest, local_files_only=True))
    if kind == "openai" and rest:
        from vgym.policies.openai import OpenAIPolicy, OpenAIPolicyConfig

        url, _, fragment = rest.partition("#")
        model, *options = fragment.split(",")
        settings = _openai_options(spec, options)
        config = OpenAIPolicyConfig(base_url=url, model=model or "default", temperature=temperature,
                                    max_tokens=max_new_tokens, **settings)  # checked here, once
        return PolicyMaker(lambda s: OpenAIPolicy(dataclasses.replace(config, seed=s)))
    raise InvalidConfigError(f"unknown policy {spec!r}; expected oracle, random, hf:DIR, vllm:DIR or "
                             "openai:URL[#model[,tool_calling=...][,tool_images=...]]")


_OPENAI_OPTIONS = ("tool_calling", "tool_images")
"""``openai:`` spec options (fields of :class:`~vgym.policies.openai.OpenAIPolicyConfig`)."""


def _openai_options(spec: str, options: list[str]) -> dict[str, str]:
    """``["tool_calling=text", ...]`` -> ``{"tool_calling": "text", ...}``.

    Raises:
        InvalidConfigError: for an option that is not ``key=value``, an unknown or repeated key.
    """
    settings: dict[str, str] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if not eq or key not in _OPENAI_OPTIONS or key in settings:
            close = difflib.get_close_matches(key, _OPENAI_OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close and close[0] != key else ""
            raise InvalidConfigError(f"policy {spec!r}: bad option {option!r}: options are key=value with "
                                     f"keys {', '.join(_OPENAI_OPTIONS)}, each once{hint}")
        settings[key] = value
    return settings
