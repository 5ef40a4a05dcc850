"""Tests of vgym/spaces.py: TextSpace, ImageListSpace and message_space."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from vgym.spaces import ImageListSpace, TextSpace, message_space

# ---------------------------------------------------------------- TextSpace


@pytest.mark.parametrize(
    "text",
    ["", "a b<c>", "Hello, world! (x=1; y=[2])", "line one\nline two\ttab", "ünïcødé ✓", "12345"],
)
def test_text_space_contains_any_string_up_to_max_length(text: str) -> None:
    # Gymnasium's Text would reject the empty string, spaces and punctuation; ours accepts any str.
    assert TextSpace(5 if text == "12345" else 100).contains(text)


@pytest.mark.parametrize("value", ["123456", b"abc", None, 5, ["a"]])
def test_text_space_rejects_too_long_strings_and_non_strings(value: object) -> None:
    assert not TextSpace(5).contains(value)


def test_text_space_rejects_negative_max_length() -> None:
    with pytest.raises(ValueError, match="max_length must be >= 0, got -1"):
        TextSpace(-1)


def test_text_space_sample_is_seeded() -> None:
    def draw(seed: int) -> list[str]:
        space = TextSpace(seed=seed)
        return [space.sample() for _ in range(5)]

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)


@pytest.mark.parametrize("max_length", [0, 3, 100])
def test_text_space_samples_are_members(max_length: int) -> None:
    space = TextSpace(max_length, seed=0)
    samples = [space.sample() for _ in range(20)]
    assert all(space.contains(s) and len(s) <= min(64, max_length) for s in samples)


def test_text_space_sample_rejects_masks() -> None:
    with pytest.raises(NotImplementedError, match="masks"):
        TextSpace(seed=0).sample(mask=np.ones(3))


def test_text_space_equality() -> None:
    assert TextSpace(5) == TextSpace(5)
    assert TextSpace(5) != TextSpace(6)


# ---------------------------------------------------------------- ImageListSpace


def _img(h: int, w: int, dtype: type = np.uint8, channels: int = 3) -> np.ndarray:
    return np.zeros((h, w, channels), dtype=dtype)


@pytest.mark.parametrize(
    "images",
    [
        (),
        (_img(10, 10),),  # exactly at the budget: 10*10 = 100
        (_img(1, 100), _img(100, 1)),  # strips at the budget, two images = max_images
        (_img(1, 1),),
    ],
    ids=["empty", "at-budget", "strips", "one-pixel"],
)
def test_image_list_space_contains(images: tuple) -> None:
    assert ImageListSpace(max_images=2, max_pixels=100).contains(images)


@pytest.mark.parametrize(
    "images",
    [
        (_img(10, 10, np.float32),),  # wrong dtype
        (_img(10, 10, np.int64),),  # wrong dtype
        (_img(11, 10),),  # 110 pixels > 100
        (_img(1, 101),),  # 101 pixels > 100
        (_img(2, 2), _img(2, 2), _img(2, 2)),  # 3 images > max_images 2
        [_img(2, 2)],  # a list, not a tuple
        (np.zeros((4, 4), np.uint8),),  # grey, no channel axis
        (_img(4, 4, channels=4),),  # RGBA
        ("not an image",),
        _img(4, 4),  # a bare array, not a tuple
    ],
    ids=[
        "float32",
        "int64",
        "too-many-pixels",
        "long-strip",
        "too-many-images",
        "list",
        "grey",
        "rgba",
        "str",
        "bare",
    ],
)
def test_image_list_space_rejects(images: object) -> None:
    assert not ImageListSpace(max_images=2, max_pixels=100).contains(images)


@pytest.mark.parametrize("max_images, max_pixels", [(-1, 100), (2, 0)])
def test_image_list_space_rejects_bad_limits(max_images: int, max_pixels: int) -> None:
    with pytest.raises(ValueError, match="need max_images >= 0 and max_pixels >= 1"):
        ImageListSpace(max_images, max_pixels)


def test_image_list_space_sample_is_seeded_and_a_member() -> None:
    def draw(seed: int) -> list[tuple]:
        space = ImageListSpace(max_images=3, max_pixels=64, seed=seed)
        return [space.sample() for _ in range(8)]

    a, b, c = draw(0), draw(0), draw(1)
    space = ImageListSpace(max_images=3, max_pixels=64)
    assert all(space.contains(s) for s in a + c)

    def flat(samples: list[tuple]) -> list[bytes]:
        return [im.tobytes() for s in samples for im in s]

    assert flat(a) == flat(b)
    assert flat(a) != flat(c)


def test_message_space_is_a_dict_of_text_and_images() -> None:
    space = message_space(max_text=10, max_images=1, max_pixels=4)
    assert isinstance(space, spaces.Dict)
    assert space.contains({"text": "hi", "images": (_img(2, 2),)})
    assert not space.contains({"text": "x" * 11, "images": ()})
    assert not space.contains({"text": "hi", "images": (_img(3, 2),)})  # 6 pixels > 4
