"""A vLLM policy: offline ``vllm.LLM`` generation on the rollout's own token ids and images, with log-probs
and in-place weight sync from a trainer in the same process.

Contents: :class:`VLLMPolicyConfig`, :class:`VLLMPolicy`, :func:`collapse_image_placeholders`,
:func:`build_vllm_prompt`, :func:`chosen_logprobs`, :func:`completion_to_output`.

vLLM is imported lazily (in the constructor and in :meth:`VLLMPolicy.act`), so this module imports without it;
install it with ``pip install 'vgym[vllm]'`` on a CUDA machine. Supported: vLLM 0.11.0 to 0.34.x (0.11.0 is
the first release with Qwen3-VL). This module is written to vLLM's source and has NOT been run here (no GPU;
vLLM's CPU build needs a CPU torchvision that no registry reachable here has): the unit tests cover prompt
building (re-expanded as vLLM expands it, against the real transformers processors), log-prob extraction and
the weight-sync plumbing against stand-ins shaped like vLLM's objects.

**Prompts: one placeholder per image; vLLM expands it.** Prompts are ``TokensPrompt`` dicts:
``prompt_token_ids`` is ``PolicyInput.input_ids`` with each image's run of ``<|image_pad|>`` tokens collapsed
to one (:func:`collapse_image_placeholders`), and ``multi_modal_data`` holds the budget-fitted images as PIL
images. Read in vLLM's source (the wheels of 0.7.3, 0.8.5, 0.10.2, 0.11.0, 0.14.1, 0.18.0, 0.22.0, 0.27.0,
0.30.0 and 0.34.0): a token prompt never goes through the Hugging Face processor, so
``BaseMultiModalProcessor`` (``vllm/multimodal/processing.py``, from 0.18 ``processing/processor.py``)
always applies the model's prompt updates to it -- through 0.27 ``_apply_hf_processor_main`` returns
``is_update_applied=False`` for token prompts, and in 0.30 and 0.34 ``_maybe_apply_prompt_updates`` applies
them unconditionally. Qwen2-VL's and Qwen2.5-VL's ``_get_prompt_updates`` (and Qwen3-VL's, for images) is a
``PromptReplacement`` of the target ``[<|image_pad|>]`` by ``grid_t * grid_h * grid_w // merge_size**2`` pad
tokens, item i replacing the first target at or after the end of item i-1's replacement. An already expanded
run would therefore be expanded again: its first pad becomes the image's N pads and the other N - 1 stay, and
a second image's replacement lands inside the first run -- silently, since vLLM then finds every item's N
pads. (Only development versions before 0.7.3 looked for already-inserted placeholders and skipped the
update.) verl collapses the pads for the same reason. vLLM's own image processor must give every image the
grid ours gave it: use the same checkpoint's preprocessor config and do not override
``min_pixels``/``max_pixels`` in ``mm_processor_kwargs``. Videos are not sent (tasks show frames as images);
Qwen3-VL's video update also inserts per-frame timestamps, so a video placeholder is refused.

Log-probs: each request asks for ``logprobs=0`` (the sampled token only) and gets back, per generated
position, a dict ``token_id -> Logprob``. By default vLLM returns the *raw* model log-probs (before
temperature and top-p), whereas :class:`~vgym.policies.hf.HFPolicy` returns the processed ones; pass
``engine_kwargs={"logprobs_mode": "processed_logprobs"}`` (vLLM >= 0.10.2) to match it.

**Weight sync** (:meth:`VLLMPolicy.load_weights`, with ``weight_sync=True``) goes through vLLM's documented
worker-extension path: the engine is built with ``worker_extension_cls`` naming
:class:`~vgym.policies.vllm_worker.WeightSyncExtension`, and ``LLM.collective_rpc`` calls its method by name
in the worker, which runs the engine model's own ``load_weights`` (mapping Hugging Face names to vLLM's:
Qwen-VL models declare ``hf_to_vllm_mapper``); then ``LLM.reset_prefix_cache()`` drops KV entries of the old
weights. It needs the engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, one GPU), where
``collective_rpc`` hands the tensors over by reference; no pickled callable, so no
``VLLM_ALLOW_INSECURE_SERIALIZATION``. (vLLM >= 0.18 also has a weight-transfer API, ``update_weights``,
whose same-GPU backend sends CUDA IPC handles -- pickled callables, through Ray or, over HTTP, only with
that flag; it does not exist in 0.11.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from vgym.engine.modeling import vision_placeholder_ids
from vgym.env import EnvConfig
from vgym.errors import InvalidConfigError, VgymError
from vgym.policies.base import PolicyInput, PolicyOutput
from vgym.policies.vllm_worker import LOAD_METHOD, WORKER_EXTENSION

__all__ = ["VLLMPolicyConfig", "VLLMPolicy", "collapse_image_placeholders", "build_vllm_prompt",
           "chosen_logprobs", "completion_to_output"]

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
    max_images: int = EnvConfig.max_images
    """Most images in one prompt (``limit_mm_per_prompt``); match the env's ``EnvConfig.max_images`` (whose
    default this is). ``vgym train`` sets it from the recipe's env."""
    dtype: str = "auto"
    """Engine dtype ("auto" = the checkpoint's, "bfloat16", ...)."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Further ``vllm.LLM`` keyword arguments (e.g. ``{"logprobs_mode": "processed_logprobs"}``); they may not
    repeat the fields above."""
    weight_sync: bool = False
    """Build the engine for :meth:`VLLMPolicy.load_weights` from a trainer in this process: with vgym's
    worker extension, and only when ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set (the engine then runs in this
    process and takes the trainer's tensors by reference). False (evaluation) leaves vLLM's defaults."""

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
        clash = {"model", "seed", "gpu_memory_utilization", "max_model_len", "dtype", "limit_mm_per_prompt",
                 "worker_extension_cls"}
        if clash & set(self.engine_kwargs):
            raise InvalidConfigError(
                f"engine_kwargs may not set {sorted(clash & set(self.engine_kwargs))}; use the config's own "
                "fields"
            )
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)


def collapse_image_placeholders(input_ids: Sequence[int], image_token_id: int, video_token_id: int | None,
                                num_images: int) -> list[int]:
    """The ids vLLM must receive: every run of image placeholders collapsed to one placeholder.

    The rollout's sequence holds, per image, ``<|vision_start|>`` + N ``<|image_pad|>`` + ``<|vision_end|>``
    (N = the image's merged patches), as the processor wrote it; vLLM replaces each pad it is sent by N pads
    (see the module docstring), so it must be sent one.

    Args:
        input_ids: the sequence so far.
        image_token_id: the ``<|image_pad|>`` id.
        video_token_id: the ``<|video_pad|>`` id, or None for a vocabulary without one.
        num_images: the images sent with the prompt.

    Returns:
        ``input_ids`` with each maximal run of ``image_token_id`` replaced by a single one.

    Raises:
        VgymError: if the sequence holds a video placeholder (videos are not sent), or its number of
            placeholder runs differs from ``num_images`` (vLLM would fail on, or misplace, the images).
    """
    ids = [int(t) for t in input_ids]
    if video_token_id is not None and video_token_id in ids:
        raise VgymError("the prompt holds video placeholders; VLLMPolicy sends images only (tasks show video "
                        "frames as images)")
    out = [t for i, t in enumerate(ids) if t != image_token_id or i == 0 or ids[i - 1] != image_token_id]
    runs = out.count(image_token_id)
    if runs != num_images:
        raise VgymError(f"the prompt holds {runs} image placeholder runs but {num_images} images go with it")
    return out


def build_vllm_prompt(item: PolicyInput, *, image_token_id: int,
                      video_token_id: int | None) -> dict[str, Any]:
    """The vLLM ``TokensPrompt`` of one episode's turn.

    Args:
        item: the episode's state.
        image_token_id: the ``<|image_pad|>`` id of the model's vocabulary.
        video_token_id: its ``<|video_pad|>`` id, or None.

    Returns:
        ``{"prompt_token_ids": ids}`` with one placeholder per image (:func:`collapse_image_placeholders`),
        plus ``"multi_modal_data": {"image": [PIL RGB images of item.images, in order]}`` when the episode has
        images.

    Raises:
        VgymError: as :func:`collapse_image_placeholders`.
    """
    ids = collapse_image_placeholders(item.input_ids.tolist(), image_token_id, video_token_id,
                                      len(item.images))
    prompt: dict[str, Any] = {"prompt_token_ids": ids}
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


class VLLMPolicy:
    """Plays turns with an offline ``vllm.LLM`` and returns token ids and behaviour log-probs.

    Needs vLLM and a CUDA GPU (see the module docstring); an already built engine may be passed in instead.
    """

    def __init__(self, config: VLLMPolicyConfig, *, engine: Any = None) -> None:
        """Args:
        config: engine and sampling settings.
        engine: an already built ``vllm.LLM`` for ``config.model`` (e.g. shared with an evaluator); None
            builds one from the config.

            With ``config.weight_sync`` it must have been built as this constructor builds it (vgym's worker
            extension, in this process).

        Raises:
            InvalidConfigError: when ``engine`` is None, ``config.weight_sync`` is set and
                ``VLLM_ENABLE_V1_MULTIPROCESSING`` is not ``0`` (weights could not be handed over in place).
            ImportError: when ``engine`` is None and vLLM is not installed (the message says how to install
                it).
        """
        self.config = config
        if engine is None:
            extra = dict(config.engine_kwargs)
            if config.weight_sync:
                if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
                    raise InvalidConfigError(
                        "weight_sync needs the vLLM engine in this process: set "
                        "VLLM_ENABLE_V1_MULTIPROCESSING=0 before building it (vgym train does)")
                extra["worker_extension_cls"] = WORKER_EXTENSION
            vllm = _import_vllm()
            engine = vllm.LLM(
                model=config.model,
                seed=config.seed,
                gpu_memory_utilization=config.gpu_memory_utilization,
                max_model_len=config.max_model_len,
                dtype=config.dtype,
                limit_mm_per_prompt={"image": config.max_images},
                **extra,
            )
        self.engine = engine
        self.tokenizer = engine.get_tokenizer()
        vocab = self.tokenizer.get_vocab()
        self.image_token_id = int(vocab["<|image_pad|>"])
        self.video_token_id = int(vocab["<|video_pad|>"]) if "<|video_pad|>" in vocab else None
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
        prompts = [build_vllm_prompt(item, image_token_id=self.image_token_id,
                                     video_token_id=self.video_token_id) for item in batch]
        results = self.engine.generate(prompts, params, use_tqdm=False)
        return [completion_to_output(r.outputs[0], self.tokenizer, self.eos_ids) for r in results]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy the trainer's weights into the engine's model, in place.

        Args:
            named_tensors: ``(name, tensor)`` pairs with Hugging Face names, e.g. ``model.named_parameters()``
                of the transformers model being trained (full tensors on the engine's GPU: gather sharded
                ones first; a peft model's adapters must be merged first).

        Returns:
            The number of tensors sent.

        Raises:
            VgymError: if the policy was not configured with ``weight_sync``, or a worker reports another
                number of loaded tensors.

        Notes:
            The pairs go, in order and detached (no copy), to
            :meth:`~vgym.policies.vllm_worker.WeightSyncExtension.vgym_load_weights` in every worker through
            ``LLM.collective_rpc``; then ``LLM.reset_prefix_cache()`` drops KV entries of the old weights.
        """
        if not self.config.weight_sync:
            raise VgymError("this VLLMPolicy was built without weight_sync=True, so its engine cannot load "
                            "weights in place")
        pairs = [(str(name), tensor.detach()) for name, tensor in named_tensors]
        loaded = self.engine.collective_rpc(LOAD_METHOD, args=(pairs,))
        if any(count != len(pairs) for count in loaded):
            raise VgymError(f"vLLM workers loaded {loaded} tensors of {len(pairs)} sent")
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
