"""The RefCOCO / RefCOCO+ / RefCOCOg release as downloaded: ``refs(<split_by>).p`` + ``instances.json``,
joined into one referring expression per sentence.

Contents: :data:`RELEASES`, :data:`SPLIT_OF`, :class:`Expression`, :func:`refs_file`, :func:`read_refer`.

**The layout** (as the refer toolkit, ``lichengunc/refer`` ``refer.py``, reads it): a data folder holding one
folder per release, and the COCO ``train2014`` images::

    <root>/refcoco/refs(unc).p      refs(google).p   instances.json
    <root>/refcoco+/refs(unc).p                      instances.json
    <root>/refcocog/refs(google).p  refs(umd).p      instances.json
    <root>/train2014/COCO_train2014_000000581857.jpg ...

``refs(<split_by>).p`` is a Python 2 pickle of a list of refs, each a dict ``{"ref_id": int, "ann_id": int,
"image_id": int, "category_id": int, "split": str, "sent_ids": [int], "file_name": str, "sentences": [{"sent":
str, "raw": str, "tokens": [str], "sent_id": int}]}``; it is read with
:func:`vgym.data.plain_pickle.read_plain_pickle`, never ``pickle.load``. ``instances.json`` is COCO-style:
``images`` (``id``, ``file_name``, ``height``, ``width``), ``annotations`` (``id``, ``image_id``,
``category_id``, ``bbox`` as ``[x, y, w, h]`` in pixels, ``segmentation``, ``area``) and ``categories``
(``id``, ``name``). A ref's box is its annotation's ``bbox`` and its image file is the image's ``file_name``
(the ref's own ``file_name``, ``COCO_train2014_<id>_<n>.jpg``, names no file on disk).

**Splits as released** (:data:`RELEASES`): RefCOCO and RefCOCO+ (UNC) ``train``, ``val``, ``testA`` (people),
``testB`` (other objects); RefCOCO (Google) ``train``, ``val``, ``test``; RefCOCOg (Google) ``train``,
``val``; RefCOCOg (UMD) ``train``, ``val``, ``test``.

**Sentences.** Each ref holds one or more sentences; each becomes one :class:`Expression`. The text is the
normalised ``sent`` (lower case, as the papers evaluate), or ``raw`` when ``sent`` is blank; a sentence with
neither is skipped.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vgym.data.files import read_json
from vgym.data.plain_pickle import read_plain_pickle
from vgym.errors import InvalidConfigError

__all__ = ["RELEASES", "SPLIT_OF", "Expression", "read_refer", "refs_file"]

RELEASES: dict[str, dict[str, tuple[str, ...]]] = {
    "refcoco": {"unc": ("train", "val", "testA", "testB"), "google": ("train", "val", "test")},
    "refcoco+": {"unc": ("train", "val", "testA", "testB")},
    "refcocog": {"umd": ("train", "val", "test"), "google": ("train", "val")},
}
"""Release folder name -> ``split_by`` -> the splits its refs file uses (the first ``split_by`` is the usual
one: UNC for RefCOCO and RefCOCO+, UMD for RefCOCOg)."""

SPLIT_OF: dict[str, str] = {"train": "train", "val": "val", "test": "test", "testA": "test", "testB": "test",
                            "testC": "test", "testAB": "test", "testBC": "test", "testAC": "test"}
"""A released split name -> the vgym split (``train``, ``val``, ``test``); the refer toolkit's test variants
(``testA``, ``testB``, ...) are test sets."""


@dataclass(frozen=True)
class Expression:
    """One sentence of one ref, with what it refers to."""

    ref_id: int
    sent_id: int
    split: str
    """The split as released (``train``, ``val``, ``test``, ``testA``, ``testB``)."""
    sentence: str
    """``sent`` (or ``raw`` when ``sent`` is blank), stripped."""
    raw: str
    """The sentence as written by the annotator (``raw``; ``sentence`` when absent)."""
    image: str
    """The image's ``file_name`` from ``instances.json`` (e.g. ``COCO_train2014_000000581857.jpg``)."""
    bbox: tuple[float, float, float, float]
    """The annotation's COCO box ``(x, y, width, height)`` in pixels."""
    ann_id: int
    image_id: int
    category_id: int
    category: str
    """The category's ``name`` (``""`` when ``instances.json`` does not list it)."""


def refs_file(dataset: str, split_by: str) -> str:
    """The refs file of a release, relative to the data root: ``<dataset>/refs(<split_by>).p``.

    Args:
        dataset: the release folder relative to the root; its last part must be a key of :data:`RELEASES`
            (``refcoco``, ``refcoco+``, ``refcocog``).
        split_by: ``unc``, ``google`` or ``umd`` as that release has them; ``""`` picks the usual one.

    Raises:
        InvalidConfigError: for an unknown release or a ``split_by`` it does not have (listing the valid
            ones).
    """
    name = posixpath.basename(posixpath.normpath(dataset)) if dataset else ""
    if name not in RELEASES:
        raise InvalidConfigError(f"dataset must be a refer release folder named one of {sorted(RELEASES)} "
                                 f"(optionally under a path, e.g. 'refer/data/refcocog'), got {dataset!r}")
    split_by = split_by or next(iter(RELEASES[name]))
    if split_by not in RELEASES[name]:
        raise InvalidConfigError(f"{name} is released split by {sorted(RELEASES[name])}, not {split_by!r}")
    return posixpath.join(dataset, f"refs({split_by}).p")


class _Walk:
    """Type checks along the expected schema, with a budget of visited values (the file's size in bytes): a
    genuine file holds each value once, so only shared references (pickle's memo) can exceed it."""

    def __init__(self, path: str, budget: int) -> None:
        self.path = path
        self.left = budget

    def spend(self, n: int = 1) -> None:
        self.left -= n
        if self.left < 0:
            raise InvalidConfigError(f"{self.path}: the pickle repeats shared values far beyond its size; "
                                     "not a refer refs file")

    def field(self, obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
        value = obj.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise InvalidConfigError(f"{self.path}: {where}: {key!r} must be {names}, got {value!r:.80}")
        return value


def _index(items: Any, what: str, path: str) -> dict[int, Mapping[str, Any]]:
    """``instances.json``'s ``what`` list by ``id``."""
    if not isinstance(items, list):
        raise InvalidConfigError(f"{path}: {what!r} must be a list, got {type(items).__name__}")
    out = {}
    for i, item in enumerate(items):
        key = item.get("id") if isinstance(item, dict) else None
        if not isinstance(key, int) or isinstance(key, bool):
            raise InvalidConfigError(f"{path}: {what}[{i}] must be an object with an integer 'id'")
        out[item["id"]] = item
    return out


def _bbox(value: Any, where: str) -> tuple[float, float, float, float]:
    if not (isinstance(value, list) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and value[2] > 0 and value[3] > 0):
        raise InvalidConfigError(f"{where}: 'bbox' must be COCO [x, y, width, height] with width, "
                                 f"height > 0, got {value!r}")
    x, y, w, h = (float(v) for v in value)
    return x, y, w, h


def read_refer(refs_path: str | os.PathLike, instances_path: str | os.PathLike) -> list[Expression]:
    """Read a refer release's refs file and ``instances.json`` into expressions (see the module docstring).

    Args:
        refs_path: ``refs(<split_by>).p``, read with :func:`~vgym.data.plain_pickle.read_plain_pickle`.
        instances_path: the release's ``instances.json``.

    Returns:
        One :class:`Expression` per non-blank sentence, in the file's order of refs and sentences.

    Raises:
        InvalidConfigError: for an unreadable, refused (any global: see
            :func:`~vgym.data.plain_pickle.read_plain_pickle`) or malformed refs file, a malformed
            ``instances.json``, a ref whose ``ann_id`` or ``image_id`` it does not list, or a split name the
            refer toolkit does not know; the message names the file and the ref.
    """
    refs_path, instances_path = os.fspath(refs_path), os.fspath(instances_path)
    refs = read_plain_pickle(refs_path)
    instances = read_json(instances_path)
    if not isinstance(instances, dict):
        raise InvalidConfigError(f"{instances_path}: expected a COCO object with 'images', 'annotations' "
                                 f"and 'categories', got {type(instances).__name__}")
    images = _index(instances.get("images"), "images", instances_path)
    anns = _index(instances.get("annotations"), "annotations", instances_path)
    categories = _index(instances.get("categories", []), "categories", instances_path)
    if not isinstance(refs, list):
        raise InvalidConfigError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    walk = _Walk(refs_path, os.path.getsize(refs_path))
    out: list[Expression] = []
    for i, ref in enumerate(refs):
        walk.spend()
        where = f"ref {i}"
        if not isinstance(ref, dict):
            raise InvalidConfigError(f"{refs_path}: {where}: expected a dict, got {type(ref).__name__}")
        ref_id = walk.field(ref, "ref_id", int, where)
        where = f"ref_id {ref_id}"
        ann_id = walk.field(ref, "ann_id", int, where)
        image_id = walk.field(ref, "image_id", int, where)
        split = walk.field(ref, "split", str, where)
        sentences = walk.field(ref, "sentences", list, where)
        if split not in SPLIT_OF:
            raise InvalidConfigError(f"{refs_path}: {where}: split must be one of {list(SPLIT_OF)}, "
                                     f"got {split!r}")
        if ann_id not in anns:
            raise InvalidConfigError(f"{refs_path}: {where}: ann_id {ann_id} is not in {instances_path}")
        ann = anns[ann_id]
        image = images.get(image_id)
        if image is None or not isinstance(image.get("file_name"), str):
            raise InvalidConfigError(f"{refs_path}: {where}: image_id {image_id} has no 'file_name' in "
                                     f"{instances_path}")
        bbox = _bbox(ann.get("bbox"), f"{instances_path}: annotation {ann_id}")
        category_id = next((c for c in (ref.get("category_id"), ann.get("category_id"))
                            if isinstance(c, int) and not isinstance(c, bool)), -1)
        category = categories.get(category_id, {}).get("name", "")
        walk.spend(len(sentences))
        for k, sent in enumerate(sentences):
            at = f"{where} sentence {k}"
            if not isinstance(sent, dict):
                raise InvalidConfigError(f"{refs_path}: {at}: expected a dict, got {type(sent).__name__}")
            sent_id = walk.field(sent, "sent_id", int, at)
            text = sent.get("sent") if isinstance(sent.get("sent"), str) and sent["sent"].strip() \
                else sent.get("raw")
            if not isinstance(text, str) or not text.strip():
                continue  # an empty sentence carries nothing to ground
            raw = sent.get("raw") if isinstance(sent.get("raw"), str) else text
            out.append(Expression(ref_id=ref_id, sent_id=sent_id, split=split, sentence=text.strip(),
                                  raw=raw, image=image["file_name"], bbox=bbox, ann_id=ann_id,
                                  image_id=image_id, category_id=category_id, category=str(category)))
    return out
