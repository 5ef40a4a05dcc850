"""A transformers policy: batched sampling over multi-turn, multi-image sequences.

Contents: :class:`GenerationConfig`, :class:`HFPolicy`, :func:`collate_left`.

Sequences of different lengths are left-padded into one batch; the images of all episodes are concatenated in
batch order (the order the model's placeholder tokens appear). Qwen-VL models with still images decode with
:func:`vgym.engine.decoding.sample_turn` (one prefill per distinct prompt, earlier turns read from the kept KV
cache) where :func:`vgym.engine.fast_paths.fast_paths` allows it (a checked transformers version); other
models, other versions, videos and ``decoder="generate"`` use transformers' ``generate``. Sampling randomness
comes from the policy's own seed: each call draws a seed from its generator, used by a dedicated
``torch.Generator`` (lean loop) or inside ``torch.random.fork_rng`` (``generate``), so the global torch RNG is
left as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from vgym.engine.decoding import lean_decoding_supported, sample_turn
from vgym.engine.fast_paths import fast_paths
from vgym.engine.modeling import model_inputs, shared_image_features, vision_placeholder_ids
from vgym.engine.prefix_cache import PrefixCache
from vgym.policies.base import PolicyInput, PolicyOutput

__all__ = ["GenerationConfig", "HFPolicy", "collate_left"]


@dataclass
class GenerationConfig:
    """Sampling settings for one model turn."""

    max_new_tokens: int = 64
    """Most tokens generated in one turn; a turn that hits it is cut and closed with the end-of-turn token."""
    temperature: float = 1.0
    """Sampling temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass (Holtzman et al., 2019, arXiv:1904.09751); 1.0 disables it."""
    decoder: str = "auto"
    """``"auto"``: :func:`vgym.engine.decoding.sample_turn` (one prefill per distinct prompt, no ``generate``
    overhead) where it supports the model and images (Qwen-VL family, still images), else ``generate``;
    ``"generate"``: always transformers' ``generate``."""

    def __post_init__(self) -> None:
        if self.decoder not in ("auto", "generate"):
            raise ValueError(f"decoder must be 'auto' or 'generate', got {self.decoder!r}")
        if self.max_new_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(
                "need max_new_tokens >= 1, temperature >= 0 and 0 < top_p <= 1; got "
                f"{self.max_new_tokens}, {self.temperature}, {self.top_p}"
            )


def collate_left(
    sequences: Sequence[torch.Tensor], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D id tensors into a batch.

    Returns:
        ``input_ids`` (B, L) and ``attention_mask`` (B, L) with 0 on padding.
    """
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, length - len(seq) :] = seq
        mask[row, length - len(seq) :] = 1
    return ids, mask


class HFPolicy:
    """Plays turns with a transformers VLM (e.g. Qwen2-VL) and returns ids and behaviour log-probs."""

    def __init__(  # type: ignore[no-untyped-def]
        self, model, processor, config: GenerationConfig | None = None, *, seed: int = 0
    ) -> None:
        """Args:
        model: a ``*ForConditionalGeneration`` VLM.
        processor: its processor (gives the tokenizer and end-of-turn id).
        config: sampling settings.
        seed: seeds sampling.
        """
        self.model = model
        self.processor = processor
        self.config = config or GenerationConfig()
        self.rng = np.random.default_rng(seed)
        tokenizer = processor.tokenizer
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.suppressed_ids = vision_placeholder_ids(tokenizer)  # never sampled (see the function)
        # the lean decoder's keys and values of the last call, for the next turn
        self.prefix_cache = PrefixCache()

    def clear_cache(self) -> None:
        """Free the keys and values kept for episodes' next turns (the rollout calls this when it ends)."""
        self.prefix_cache.clear()

    def state_dict(self) -> dict[str, Any]:
        """The sampling state (:class:`~vgym.policies.base.StatefulPolicy`): ``{"rng": ...}``, the state of
        the generator each :meth:`act` draws its seed from."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: the next :meth:`act` samples as it would have after the save."""
        self.rng.bit_generator.state = state["rng"]

    @torch.no_grad()
    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        """Generate one turn for every episode in ``batch``.

        Returns:
            Outputs whose ``token_ids`` end with an end-of-turn id unless ``max_new_tokens`` was hit, and
            whose ``logprobs`` are log-softmax of the processed scores (temperature and top-p applied) at each
            chosen token; for greedy decoding, of the raw logits.
        """
        ids, mask = collate_left([item.input_ids for item in batch], self.pad_id)
        pixels = [item.pixel_values for item in batch if item.pixel_values is not None]
        grids = [item.image_grid_thw for item in batch if item.image_grid_thw is not None]
        inputs = model_inputs(
            self.model, ids, mask, torch.cat(pixels) if pixels else None, torch.cat(grids) if grids else None
        )
        device = inputs["input_ids"].device
        cfg = self.config
        processors: list[LogitsProcessor] = []
        # sampling settings go in our list so the recorder sees the final distribution; generate's own are
        # neutralised below
        if cfg.temperature > 0:
            if cfg.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(cfg.temperature))
            if cfg.top_p < 1.0:
                processors.append(TopPLogitsWarper(cfg.top_p))
            kwargs = {"do_sample": True, "temperature": 1.0, "top_p": 1.0}
        else:
            kwargs = {"do_sample": False}
        was_training = self.model.training
        self.model.eval()
        seed = int(self.rng.integers(2**62))
        try:
            paths = fast_paths(self.model)
            lean = paths.decoder and lean_decoding_supported(self.model, inputs.get("image_grid_thw"))
            if cfg.decoder == "auto" and lean:
                new, logprobs = sample_turn(
                    self.model, inputs, max_new_tokens=cfg.max_new_tokens, eos_ids=self.eos_ids,
                    pad_id=self.pad_id, warpers=processors, greedy=cfg.temperature == 0,
                    suppressed_ids=self.suppressed_ids,
                    min_new_tokens=int(getattr(self.model.generation_config, "min_new_tokens", None) or 0),
                    generator=torch.Generator(device=device).manual_seed(seed),
                    prefix_cache=self.prefix_cache, direct=paths.direct_steps)
            else:
                new, logprobs = self._generate(inputs, processors, kwargs, seed)
        finally:
            self.model.train(was_training)
        results = []
        new = new.cpu()
        eos = set(self.eos_ids)
        for row in range(new.shape[0]):
            toks = new[row].tolist()
            end = next((i + 1 for i, t in enumerate(toks) if t in eos), len(toks))
            toks = toks[:end]
            text_ids = toks[:-1] if toks and toks[-1] in eos else toks
            text = self.processor.tokenizer.decode(text_ids, skip_special_tokens=False)
            results.append(PolicyOutput(text=text, token_ids=toks, logprobs=logprobs[row, :end].tolist()))
        return results


    def _generate(self, inputs: dict[str, torch.Tensor], processors: list[LogitsProcessor],
                  kwargs: dict[str, Any], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One turn through transformers' ``generate``: new tokens (B, N) and their log-probs (B, N)."""
        device = inputs["input_ids"].device
        recorder = _ChosenLogprobs()
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), shared_image_features(self.model):
            torch.manual_seed(seed)
            sequences = self.model.generate(
                **inputs,
                max_new_tokens=self.config.max_new_tokens,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                logits_processor=LogitsProcessorList([*processors, recorder]),
                top_k=None,
                # a checkpoint's default (Qwen2-VL: 1.05) would sample off the trained policy
                repetition_penalty=1.0,
                suppress_tokens=self.suppressed_ids or None,
                **kwargs,
            )
        new = sequences[:, inputs["input_ids"].shape[1] :]  # (B, N)
        return new, recorder.finish(new)


class _ChosenLogprobs(LogitsProcessor):
    """The log-probability of each chosen token under the final processed scores, in O(B × V) memory.

    Placed last in ``generate``'s processor list, it keeps only the current step's scores; the token sampled
    from them is read at the next call (the last column of ``input_ids``) or, for the last step, by
    :meth:`finish`. Keeping every step's scores instead (``output_scores=True``) costs N × B × V floats: 20 GB
    for 128 episodes × 256 tokens at Qwen's 151,936-token vocabulary.
    """

    def __init__(self) -> None:
        self.pending: torch.Tensor | None = None
        self.columns: list[torch.Tensor] = []

    def _take(self, chosen: torch.Tensor) -> None:
        if self.pending is not None:
            scores, self.pending = self.pending, None
            picked = scores.gather(-1, chosen[:, None]).squeeze(-1)  # (B,)
            self.columns.append(picked - torch.logsumexp(scores, dim=-1))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids[:, -1])
        self.pending = scores
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """(B, N) log-probs of ``new_tokens`` (B, N), the tokens ``generate`` appended."""
        if new_tokens.shape[1]:
            self._take(new_tokens[:, -1])
        if not self.columns:
            return torch.zeros(new_tokens.shape, dtype=torch.float32)
        return torch.stack(self.columns, dim=1).float().cpu()


def _eos_ids(model, tokenizer) -> list[int]:  # type: ignore[no-untyped-def]
    """End-of-turn ids: the generation config's eos ids, else the tokenizer's eos id."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
