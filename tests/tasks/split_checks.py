"""Checks shared by the task-family tests: sample digests and split disjointness.

Imported by the ``test_*.py`` files beside it (pytest puts this folder on ``sys.path``); not a test module
itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from vgym.task import Sample

__all__ = ["image_digest", "assert_disjoint_splits"]


def image_digest(sample: Sample) -> str:
    """SHA-1 of the bytes of the sample's first image."""
    return hashlib.sha1(sample.images[0].tobytes()).hexdigest()


def assert_disjoint_splits(digests: Mapping[str, set[str]], per_split: int) -> None:
    """Each split's ``per_split`` items are distinct, and no item is in two splits."""
    assert all(len(d) == per_split for d in digests.values())  # no repeats inside a split either
    assert not digests["train"] & digests["val"]
    assert not digests["train"] & digests["test"]
    assert not digests["val"] & digests["test"]
