"""Chat templating and tokenisation for append-only multi-turn sequences.

Contents: :class:`Encoded`, :class:`ChatEncoder`, :func:`text_message`.

The prompt is templated once with the model's own chat template. After each model turn the env's new message
is templated *as a delta* (the text the template would add after the model's end-of-turn token) and its ids
are appended, so earlier tokens never change and the loss mask marks exactly the policy's tokens.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["Encoded", "ChatEncoder", "text_message"]

_PROBE_USER = "vgym-probe-user"
_PROBE_ASSISTANT = "vgym-probe-assistant"


@dataclass
class Encoded:
    """Ids and image tensors of one templated chunk."""

    input_ids: torch.Tensor
    """(T,) int64."""
    pixel_values: torch.Tensor | None
    """(P, D) or None when the chunk has no image."""
    image_grid_thw: torch.Tensor | None
    """(N, 3) or None."""


class ChatEncoder:
    """Templates and tokenises prompts, env deltas and policy text with one processor.

    Raises:
        ValueError: at construction, if the chat template does not render a conversation as a prefix of its
            continuation (append-only sequences would then be impossible).
    """

    def __init__(self, processor: Any) -> None:
        """Args:
        processor: a transformers processor with a chat template (e.g. Qwen2-VL's).
        """
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self._memo: collections.OrderedDict[str, Encoded] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._direct = self._direct_matches()
        probe = [text_message("user", _PROBE_USER), text_message("assistant", _PROBE_ASSISTANT)]
        prefix = self._template(probe, generation_prompt=False)
        tail = prefix[prefix.rindex(_PROBE_ASSISTANT) + len(_PROBE_ASSISTANT) :]
        # The model's turn ends with the template's end-of-turn token (e.g. "<|im_end|>"); what follows it in
        # the
        # template (e.g. "\n") belongs to the env's delta.
        ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"chat template puts nothing after an assistant turn: {tail!r}")
        self.turn_end_id = int(ids[0])
        turn_end = self.tokenizer.decode([self.turn_end_id])
        if not tail.startswith(turn_end):
            raise ValueError(f"cannot find the end-of-turn token in the template tail {tail!r}")
        self._after_turn_end = tail[len(turn_end) :]
        self._probe = probe
        self._probe_prefix = prefix
        self._check_append_only([text_message("user", _PROBE_USER)])

    def _check_append_only(self, messages: list[dict[str, Any]]) -> str:
        """The probe conversation + ``messages`` templated with the generation prompt; raises if not a
        continuation."""
        full = self._template(self._probe + messages, generation_prompt=True)
        if not full.startswith(self._probe_prefix):
            raise ValueError(
                "the chat template is not append-only: earlier turns changed when a message was added"
            )
        return full

    def _template(self, messages: list[dict[str, Any]], *, generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _encode(self, text: str, images: Sequence[np.ndarray]) -> Encoded:
        pil = [Image.fromarray(im) for im in images] or None
        if self._direct:
            direct = self._encode_direct(text, pil)
            if direct is not None:
                return direct
        out = self.processor(text=[text], images=pil, return_tensors="pt")
        return Encoded(
            input_ids=out["input_ids"][0],
            pixel_values=out.get("pixel_values") if pil else None,
            image_grid_thw=out.get("image_grid_thw") if pil else None,
        )

    def _encode_direct(self, text: str, pil: list[Image.Image] | None) -> Encoded | None:
        """What the processor returns, from its own image processor and tokenizer without its generic call
        machinery (keyword merging and validation: ~60 % of a small delta's encoding time). Qwen-VL style
        only: each image placeholder becomes one per merged patch. None where the text's placeholders and the
        images disagree in number (the processor then raises its own error)."""
        token = getattr(self.processor, "image_token", None)
        pixels = grids = None
        if pil:
            pieces = text.split(token) if token else []
            if len(pieces) - 1 != len(pil):
                return None
            out = self.processor.image_processor(images=pil, return_tensors="pt")
            pixels, grids = out["pixel_values"], out["image_grid_thw"]
            merge = int(getattr(self.processor.image_processor, "merge_size", 1))
            counts = (grids.prod(-1) // (merge * merge)).tolist()
            text = pieces[0] + "".join(token * n + piece for n, piece in zip(counts, pieces[1:]))
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"][0]
        return Encoded(input_ids=ids, pixel_values=pixels, image_grid_thw=grids)

    def _direct_matches(self) -> bool:
        """Whether :meth:`_encode_direct` gives the processor's exact output here (checked once per encoder on
        a templated probe with two images; any difference or error keeps the processor's own call)."""
        token = getattr(self.processor, "image_token", None)
        if token is None or not hasattr(self.processor, "image_processor"):
            return False
        content = [{"type": "image"}, {"type": "text", "text": _PROBE_USER}, {"type": "image"}]
        text = self._template([{"role": "user", "content": content}], generation_prompt=True)
        ramp = np.arange(56 * 84 * 3, dtype=np.uint32).reshape(56, 84, 3)
        pil = [Image.fromarray((ramp % 251).astype(np.uint8)),
               Image.fromarray((ramp[:, :56] % 13 * 19).astype(np.uint8))]
        try:
            mine = self._encode_direct(text, pil)
            out = self.processor(text=[text], images=pil, return_tensors="pt")
        except Exception:  # noqa: BLE001 - any failure means: do not use the direct path
            return False
        return (mine is not None and torch.equal(mine.input_ids, out["input_ids"][0])
                and torch.equal(mine.pixel_values, out["pixel_values"])
                and torch.equal(mine.image_grid_thw, out["image_grid_thw"]))

    def encode_prompt(self, messages: list[dict[str, Any]], images: Sequence[np.ndarray]) -> Encoded:
        """The first chunk: ``messages`` templated with the generation prompt (memoised, see
        :meth:`_memoised`)."""
        return self._memoised(self._template(messages, generation_prompt=True), images)

    def _memoised(self, text: str, images: Sequence[np.ndarray]) -> Encoded:
        """``_encode(text, images)``, memoised over the last 64 calls (keyed by the text and the images'
        bytes): the episodes of a group share their prompt, and often the same tool reply, and the processor's
        patching is the costliest part of encoding. The returned tensors are shared: callers copy before
        changing them (the rollout concatenates)."""
        digest = hashlib.blake2b(text.encode(), digest_size=16)
        for im in images:
            digest.update(f"{im.shape}{im.dtype}".encode())
            digest.update(np.ascontiguousarray(im).data)
        key = digest.hexdigest()
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
        encoded = self._encode(text, images)
        with self._lock:
            self._memo[key] = encoded
            while len(self._memo) > 64:
                self._memo.popitem(last=False)
        return encoded

    def __getstate__(self) -> dict[str, Any]:  # pickled to Ray workers: without the lock and the memo
        state = dict(self.__dict__)
        state.pop("_lock")
        state["_memo"] = collections.OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def encode_delta(self, messages: list[dict[str, Any]], images: Sequence[np.ndarray]) -> Encoded:
        """What the template adds after a model turn's end-of-turn token: ``messages`` + the generation
        prompt.

        Raises:
            ValueError: if the template rewrites earlier text when messages are appended.
        """
        full = self._check_append_only(messages)
        return self._memoised(self._after_turn_end + full[len(self._probe_prefix) :], images)

    def encode_images(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """The processor's patches and grids of ``images``, exactly as :meth:`encode_prompt` and
        :meth:`encode_delta` make them for the chunks that hold these images (Qwen-VL processors patch each
        image on its own, so a list spanning several chunks or episodes gives their outputs concatenated).
        SFT keeps a trajectory's uint8 images instead of its patches and patches each batch with this
        (:class:`vgym.trainers.sft_data.SFTDataset`, which checks the identity on its first trajectory).

        Args:
            images: RGB uint8 images (H, W, 3), at least one.

        Returns:
            ``pixel_values`` (P, D) and ``image_grid_thw`` (N, 3), N = ``len(images)``.
        """
        pil = [Image.fromarray(im) for im in images]
        token = getattr(self.processor, "image_token", None)
        if self._direct or token is None:
            out = self.processor.image_processor(images=pil, return_tensors="pt")
        else:  # the processor's own call, as _encode makes it (its image settings may not be the defaults)
            out = self.processor(text=[token * len(pil)], images=pil, return_tensors="pt")
        return out["pixel_values"], out["image_grid_thw"]

    def check_image_tokens(self, ids: Sequence[torch.Tensor], grids: Sequence[torch.Tensor]) -> None:
        """Check that the sequence holds exactly one placeholder token per merged image patch of its images.

        Raises:
            ValueError: on a mismatch (the model would then silently drop or misplace image features).
        """
        token = getattr(self.processor, "image_token", None)
        if token is None:
            return  # a processor without image placeholders has nothing to check
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        merge = int(getattr(self.processor.image_processor, "merge_size", 1))
        have = int(sum(int((chunk == token_id).sum()) for chunk in ids))
        want = int(sum(int(g.prod(-1).sum()) for g in grids)) // (merge * merge)
        if have != want:
            raise ValueError(
                f"the sequence has {have} {token!r} placeholders but its images need {want} "
                f"(grids {[g.tolist() for g in grids]}, merge size {merge}); the processor and the "
                "model's image settings disagree"
            )

    def encode_policy_text(self, text: str) -> list[int]:
        """Ids of a text-only policy's turn: ``text`` then the end-of-turn token."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + [self.turn_end_id]


def text_message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": text}]}
