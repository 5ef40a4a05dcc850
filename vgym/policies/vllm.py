"""A vLLM policy: offline ``vllm.LLM`` generation on the rollout's own token ids and images, with log-probs
and in-place weight sync from the trainer's model.

Contents: :class:`VLLMPolicyConfig`, :class:`VLLMPolicy`, :func:`build_vllm_prompt`, :func:`chosen_logprobs`,
:func:`completion_to_output`.

vLLM is imported lazily (in the constructor and in :meth:`VLLMPolicy.act`), so this module imports without it;
install it with ``pip install 'vgym[vllm]'`` on a CUDA machine. This module is written against vLLM's
documented offline API and has NOT been run here (no GPU, no vLLM): the unit tests cover input building,
log-prob extraction and the weight-sync plumbing against stand-ins shaped like vLLM's objects.

Prompts are :class:`vllm.inputs.TokensPrompt` dicts: ``prompt_token_ids`` is ``PolicyInput.input_ids``
unchanged (the append-only sequence the rollout built, image placeholders already expanded) and
``multi_modal_data`` holds the budget-fitted images as PIL images. vLLM's multimodal processor detects that
the placeholders are already expanded and inserts none; this requires its image processor to give every image
the same grid as ours, i.e. the same checkpoint's preprocessor config (do not override
``min_pixels``/``max_pixels`` in ``mm_processor_kwargs``).

Log-probs: each request asks for ``logprobs=0`` (the sampled token only) and gets back, per generated
position, a dict ``token_id -> Logprob``. By default vLLM returns the *raw* model log-probs (before
temperature and top-p), whereas :class:`~vgym.policies.hf.HFPolicy` returns the processed ones; pass
``engine_kwargs={"logprobs_mode": "processed_logprobs"}`` (vLLM >= 0.10.2) to match it.

Weight sync: :meth:`VLLMPolicy.load_weights` runs the engine model's own ``load_weights`` inside every worker
through the documented ``LLM.apply_model`` and then resets the prefix cache (its KV entries were computed with
the old weights). The model's ``load_weights`` maps Hugging Face parameter names to vLLM's
(Qwen2-VL / Qwen2.5-VL declare ``hf_to_vllm_mapper``), so ``model.named_parameters()`` of the transformers
model goes in unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from vgym.engine.modeling import vision_placeholder_ids
from vgym.errors import InvalidConfigError, VgymError
from vgym.policies.base import PolicyInput, PolicyOutput

__all__ = ["VLLMPolicyConfig", "VLLMPolicy", "build_vllm_prompt", "chosen_logprobs", "completion_to_output"]

_SUPPRESS_BIAS = -100.0
"""Logit bias of the placeholder tokens: -100 is the OpenAI-API floor, which vLLM also accepts; it makes them
practically impossible (a logit would need to beat every other token by 100 nats)."""

_INSTALL_HINT = "vLLM is not installed: pip install 'vgym[vllm]' on a CUDA machine (vLLM needs an NVIDIA GPU)"


def _import_vllm() -> Any:
    """``import vllm``, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return vllm


@dataclass
class VLLMPolicyConfig:
    """The engine and sampling settings of a :class:`VLLMPolicy`."""

    model: str
    """Checkpoint directory or Hugging Face id of the VLM (e.g. ``Qwen/Qwen2.5-VL-3B-Instruct``)."""

    # sampling
    max_new_tokens: int = 64
    """Most tokens generated in one turn (>= 1); a turn that hits it is cut and the rollout closes it."""
    temperature: float = 1.0
    """Sampling temperature (>= 0); 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass (Holtzman et al., 2019, arXiv:1904.09751), in (0, 1]; 1.0 disables it."""
    seed: int = 0
    """Seeds the policy's generator, which draws one vLLM ``seed`` per request: reproducible, and the episodes
    of a GRPO group do not share a sampling seed."""
    stop_token_ids: tuple[int, ...] = ()
    """Extra end-of-turn ids; () relies on vLLM's own (the tokenizer's eos and
    ``generation_config.json``'s)."""
    suppress_placeholders: bool = True
    """Forbid the vision placeholder tokens through ``logit_bias`` (a generated placeholder would
    desynchronise image tokens and image features on the next turn). Turn off only for a vLLM without
    ``logit_bias`` support."""

    # engine
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory vLLM may take, in (0, 1]; 0.5 leaves room for a trainer on the same GPU."""
    max_model_len: int | None = None
    """Longest sequence (prompt + generation) in tokens; None means the checkpoint's maximum."""
    max_images: int = 8
    """Most images in one prompt (``limit_mm_per_prompt``); match ``EnvConfig.max_images``."""
    dtype: str = "auto"
    """Engine dtype ("auto" = the checkpoint's, "bfloat16", ...)."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further ``vllm.LLM`` keyword arguments (e.g. ``{"logprobs_mode": "processed_logprobs"}``); they may not
    repeat the fields above."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise InvalidConfigError(
                "need max_new_tokens >= 1, temperature >= 0 and 0 < top_p <= 1; got "
                f"{self.max_new_tokens}, {self.temperature}, {self.top_p}"
            )
        if not 0 < self.gpu_memory_utilization <= 1 or self.max_images < 1:
            raise InvalidConfigError(
                f"need 0 < gpu_memory_utilization <= 1 and max_images >= 1; got "
                f"{self.gpu_memory_utilization}, {self.max_images}"
            )
        clash = {"model", "seed", "gpu_memory_utilization", "max_model_len", "dtype", "limit_mm_per_prompt"}
        if clash & set(self.engine_kwargs):
            raise InvalidConfigError(
                f"engine_kwargs may not set {sorted(clash & set(self.engine_kwargs))}; use the config's own "
                "fields"
            )
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)


def build_vllm_prompt(item: PolicyInput) -> dict[str, Any]:
    """The vLLM ``TokensPrompt`` of one episode's turn.

    Returns:
        ``{"prompt_token_ids": item.input_ids as a list of ints}``, plus ``"multi_modal_data": {"image": [PIL
        RGB images of item.images, in order]}`` when the episode has images.
    """
    prompt: dict[str, Any] = {"prompt_token_ids": [int(t) for t in item.input_ids.tolist()]}
    if item.images:
        prompt["multi_modal_data"] = {"image": [Image.fromarray(np.ascontiguousarray(im)).convert("RGB")
                                                for im in item.images]}
    return prompt


def chosen_logprobs(token_ids: Sequence[int], position_logprobs: Sequence[Any] | None) -> list[float] | None:
    """Log-probabilities of the generated tokens from vLLM's ``CompletionOutput.logprobs``.

    Args:
        token_ids: the generated ids.
        position_logprobs: one mapping per generated position from token id to an object with a ``logprob``
            attribute (vLLM's ``Logprob``); it holds the sampled token whenever ``logprobs`` was requested.
            None when log-probs were not requested.

    Returns:
        ``[position_logprobs[i][token_ids[i]].logprob for each i]``, or None.

    Raises:
        VgymError: if the lengths differ or a position lacks its sampled token (vLLM output of another shape).
    """
    if position_logprobs is None:
        return None
    if len(position_logprobs) != len(token_ids):
        raise VgymError(f"vLLM gave log-probs for {len(position_logprobs)} positions but {len(token_ids)} "
                        "tokens")
    out = []
    for i, (token, candidates) in enumerate(zip(token_ids, position_logprobs)):
        entry = candidates.get(token) if candidates is not None else None
        if entry is None:
            raise VgymError(f"vLLM gave no log-prob for the sampled token {token} at position {i}; "
                            "was the request made with SamplingParams(logprobs=0)?")
        out.append(float(entry.logprob))
    return out


def completion_to_output(completion: Any, tokenizer: Any, eos_ids: Iterable[int]) -> PolicyOutput:
    """Turn one vLLM ``CompletionOutput`` into a :class:`PolicyOutput`.

    Args:
        completion: has ``token_ids`` (the generated ids, ending with the stop token when generation stopped
            on one) and ``logprobs`` (see :func:`chosen_logprobs`).
        tokenizer: decodes the text (``decode(ids, skip_special_tokens=False)``, as HFPolicy does).
        eos_ids: end-of-turn ids; a final one is kept in ``token_ids`` but not in ``text``.

    Returns:
        ``PolicyOutput(text, token_ids, logprobs)`` with one log-prob per token id.
    """
    token_ids = [int(t) for t in completion.token_ids]
    logprobs = chosen_logprobs(token_ids, completion.logprobs)
    text_ids = token_ids[:-1] if token_ids and token_ids[-1] in set(eos_ids) else token_ids
    text = tokenizer.decode(text_ids, skip_special_tokens=False)
    return PolicyOutput(text=text, token_ids=token_ids, logprobs=logprobs)


class _LoadWeights:
    """Runs ``model.load_weights(pairs)`` inside a vLLM worker (a module-level class, so it pickles by
    reference when the engine's workers live in other processes)."""

    def __init__(self, pairs: list[tuple[str, torch.Tensor]]) -> None:
        self.pairs = pairs

    def __call__(self, model: Any) -> None:
        model.load_weights(iter(self.pairs))


class VLLMPolicy:
    """Plays turns with an offline ``vllm.LLM`` and returns token ids and behaviour log-probs.

    Needs vLLM and a CUDA GPU (see the module docstring); an already built engine may be passed in instead.
    """

    def __init__(self, config: VLLMPolicyConfig, *, engine: Any = None) -> None:
        """Args:
        config: engine and sampling settings.
        engine: an already built ``vllm.LLM`` for ``config.model`` (e.g. shared with an evaluator); None
            builds one from the config.

        Raises:
            ImportError: when ``engine`` is None and vLLM is not installed (the message says how to install
                it).
        """
        self.config = config
        if engine is None:
            vllm = _import_vllm()
            engine = vllm.LLM(
                model=config.model,
                seed=config.seed,
                gpu_memory_utilization=config.gpu_memory_utilization,
                max_model_len=config.max_model_len,
                dtype=config.dtype,
                limit_mm_per_prompt={"image": config.max_images},
                **config.engine_kwargs,
            )
        self.engine = engine
        self.tokenizer = engine.get_tokenizer()
        self.rng = np.random.default_rng(config.seed)
        self.eos_ids = frozenset(config.stop_token_ids) | _default_eos_ids(config.model, self.tokenizer)
        # the vision placeholders, never sampled (as in HFPolicy)
        suppressed = vision_placeholder_ids(self.tokenizer) if config.suppress_placeholders else []
        self.logit_bias = {token: _SUPPRESS_BIAS for token in suppressed}

    def state_dict(self) -> dict[str, Any]:
        """The sampling state (:class:`~vgym.policies.base.StatefulPolicy`): ``{"rng": ...}``, the state of
        the generator each request's vLLM seed is drawn from."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the next :meth:`act` draws the seeds it would have drawn after the
        save."""
        self.rng.bit_generator.state = state["rng"]

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        """Generate one turn for every episode in ``batch`` in one ``LLM.generate`` call.

        Returns:
            Outputs in batch order whose ``token_ids`` end with an end-of-turn id unless ``max_new_tokens``
            was hit, with one behaviour log-prob per id.

        Raises:
            ImportError: if vLLM is not installed.
        """
        vllm = _import_vllm()
        cfg = self.config
        params = [
            vllm.SamplingParams(
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_tokens=cfg.max_new_tokens,
                seed=int(self.rng.integers(2**31)),
                logprobs=0,
                stop_token_ids=list(cfg.stop_token_ids) or None,
                logit_bias=self.logit_bias or None,
            )
            for _ in batch
        ]
        results = self.engine.generate([build_vllm_prompt(item) for item in batch], params, use_tqdm=False)
        return [completion_to_output(r.outputs[0], self.tokenizer, self.eos_ids) for r in results]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy the trainer's weights into the engine's model, in place.

        Args:
            named_tensors: ``(name, tensor)`` pairs with Hugging Face names, e.g. ``model.named_parameters()``
                of the transformers model being trained (full tensors: gather sharded ones first).

        Returns:
            The number of tensors sent.

        Notes:
            The pairs go, in order and detached (no copy), to the model's ``load_weights`` in every worker via
            ``LLM.apply_model``; then ``LLM.reset_prefix_cache()`` drops KV entries of the old weights. With
            multi-process workers (vLLM's V1 default) the tensors are pickled to the workers; for colocated
            training set ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` so they are passed by reference.
        """
        pairs = [(str(name), tensor.detach()) for name, tensor in named_tensors]
        self.engine.apply_model(_LoadWeights(pairs))
        self.engine.reset_prefix_cache()
        return len(pairs)


def _default_eos_ids(model: str, tokenizer: Any) -> frozenset[int]:
    """The tokenizer's eos id plus ``generation_config.json``'s eos ids (which vLLM also stops on), when
    readable."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    try:
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model).eos_token_id
    except (OSError, ValueError):
        eos = None  # no generation_config.json (or no network for a hub id): the tokenizer's only
    if eos is not None:
        ids |= {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}
    return frozenset(ids)
