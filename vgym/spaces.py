"""Gymnasium spaces for text actions and multimodal (text + images) observations.

Contents: :class:`TextSpace`, :class:`ImageListSpace`, :func:`message_space`.

Gymnasium's built-in ``Text`` space rejects spaces, punctuation and the empty string by default, which a
language model's turn always contains, so we define our own ``Space[str]``. Both spaces are variable-sized, so
they cannot live in shared memory: use
``gymnasium.make_vec(..., vectorization_mode="async", vector_kwargs={"shared_memory": False})``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

__all__ = ["TextSpace", "ImageListSpace", "message_space"]

# Printable ASCII plus newline and tab; used only by `sample()` (any `str` is a valid member).
_SAMPLE_ALPHABET = np.array(list(" \n\t" + "".join(chr(c) for c in range(33, 127))))


class TextSpace(spaces.Space[str]):
    """Any Python string of at most ``max_length`` characters (the empty string included).

    >>> TextSpace(8).contains("a b<c>")
    True
    """

    def __init__(self, max_length: int = 100_000, seed: int | np.random.Generator | None = None) -> None:
        """Args:
        max_length: longest valid string, in characters.
        seed: seeds :meth:`sample`.
        """
        if max_length < 0:
            raise ValueError(f"max_length must be >= 0, got {max_length}")
        self.max_length = max_length
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        """A random string of printable characters, at most 64 long (uses ``self.np_random``)."""
        if mask is not None or probability is not None:
            raise NotImplementedError("TextSpace.sample does not support masks")
        n = int(self.np_random.integers(0, min(64, self.max_length) + 1))
        return "".join(self.np_random.choice(_SAMPLE_ALPHABET, size=n))

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextSpace) and other.max_length == self.max_length

    def to_jsonable(self, sample_n: Any) -> list[str]:
        return list(sample_n)

    def from_jsonable(self, sample_n: list[str]) -> list[str]:
        return list(sample_n)


class ImageListSpace(spaces.Space[tuple]):
    """A tuple of up to ``max_images`` RGB uint8 images, each of shape (H, W, 3) with H·W ≤ ``max_pixels``."""

    def __init__(
        self, max_images: int, max_pixels: int, seed: int | np.random.Generator | None = None
    ) -> None:
        """Args:
        max_images: most images one observation may carry.
        max_pixels: the image budget; every image satisfies H·W ≤ max_pixels.
        seed: seeds :meth:`sample`.
        """
        if max_images < 0 or max_pixels < 1:
            raise ValueError(f"need max_images >= 0 and max_pixels >= 1, got {max_images}, {max_pixels}")
        self.max_images = max_images
        self.max_pixels = max_pixels
        super().__init__(shape=None, dtype=np.uint8, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> tuple:
        """Up to two random small images (uses ``self.np_random``)."""
        if mask is not None or probability is not None:
            raise NotImplementedError("ImageListSpace.sample does not support masks")
        n = int(self.np_random.integers(0, min(2, self.max_images) + 1))
        side = max(1, min(32, int(self.max_pixels**0.5)))
        return tuple(self.np_random.integers(0, 256, size=(side, side, 3), dtype=np.uint8) for _ in range(n))

    def contains(self, x: Any) -> bool:
        if not isinstance(x, tuple) or len(x) > self.max_images:
            return False
        return all(
            isinstance(im, np.ndarray)
            and im.dtype == np.uint8
            and im.ndim == 3
            and im.shape[2] == 3
            and im.shape[0] * im.shape[1] <= self.max_pixels
            for im in x
        )

    def __repr__(self) -> str:
        return f"ImageListSpace(max_images={self.max_images}, max_pixels={self.max_pixels})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ImageListSpace)
            and other.max_images == self.max_images
            and other.max_pixels == self.max_pixels
        )


def message_space(max_text: int, max_images: int, max_pixels: int) -> spaces.Dict:
    """The observation space of a :class:`vgym.env.VisualToolEnv`: one new message.

    Returns:
        ``Dict({"text": TextSpace, "images": ImageListSpace})``.
    """
    return spaces.Dict({"text": TextSpace(max_text), "images": ImageListSpace(max_images, max_pixels)})
