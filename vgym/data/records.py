"""The vgym JSONL dataset format: the record type, its validation, the file reader and answer scoring.
:mod:`vgym.data.dataset_task` (the generic loader task) builds on these.

Contents: :data:`ANSWER_TYPES`, :class:`DatasetRecord`, :func:`parse_record`, :func:`read_vgym_jsonl`,
:func:`record_json`, :func:`save_vgym_jsonl`, :func:`score_record`.

**The vgym JSONL format.** One JSON object per line, UTF-8 (a leading BOM is ignored); blank lines and lines
starting with ``//`` are skipped. Paths are relative to the dataset root, with ``/`` separators. Fields:

- ``id`` (str, required, unique in the file); ``question`` (str, required): the question shown to the model;
- ``answer`` (str, required), the gold answer as text, and ``answer_type`` (str, required), how it is scored:
  ``exact`` (normalised text match, :func:`vgym.rewards.exact_match_reward`; optional ``aliases``, more
  accepted answers), ``choice`` (``answer`` is the gold option's letter "A", "B", ...; needs ``options``, 2 to
  26 texts, which the loader appends to the question as lines "A. <option>"; a letter or the option text
  counts), ``numeric`` (``answer`` holds one number; optional ``tolerance``, relative to the gold value, and
  ``abs_tolerance``: a prediction is right when ``|pred - gold| <= max(tolerance * |gold|, abs_tolerance)``,
  so ``tolerance: 0.05`` is ChartQA's relaxed accuracy), ``box`` (``"[x1, y1, x2, y2]"`` in pixels of image 0,
  continuous IoU) or ``interval`` (``"[start, end]"`` in seconds from the video's first frame, temporal IoU);
- ``images`` (list of str) and/or ``video`` (str): at least one of them. Images are loaded as RGB uint8; a
  video is shown as ``overview_frames`` evenly spaced decoded frames after the images, and ``Sample.video`` is
  its resolved path (for the ``sample_frames`` / ``get_frame`` tools);
- ``split`` ("train", "val" or "test"; default "test"), ``tools`` (list of str, suggested tools;
  informational), ``metadata`` (object: anything else, copied into ``Sample.metadata["record"]``).

Unknown fields are an error (a misspelt ``optoins`` would otherwise vanish); put extra data under
``metadata``. A field that does not apply to the ``answer_type`` (``options`` on a numeric record, say) is an
error too.

**Limits.** :func:`read_vgym_jsonl` reads with :func:`vgym.data.files.read_json_lines` (its line, depth,
``NaN``/``Infinity`` and duplicate-key limits); a record id used twice is an error naming both lines.
:func:`parse_record` refuses absolute and ``..``-escaping paths lexically; symbolic links are checked when a
file is opened (:func:`vgym.data.files.confined_path`, from
:meth:`vgym.data.dataset_task.DatasetTask.sample`). All of these raise
:class:`~vgym.errors.InvalidConfigError` naming ``file:line``.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import posixpath
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vgym.data.files import read_json_lines
from vgym.errors import InvalidConfigError
from vgym.rewards import (
    box_iou_reward,
    exact_match_reward,
    interval_iou_reward,
    multiple_choice_reward,
    numeric_reward,
    parse_numbers,
)
from vgym.task import SPLITS

__all__ = ["ANSWER_TYPES", "DatasetRecord", "parse_record", "read_vgym_jsonl", "record_json",
           "save_vgym_jsonl", "score_record"]

ANSWER_TYPES: tuple[str, ...] = ("exact", "choice", "numeric", "box", "interval")
"""How a record's answer is scored (see the module docstring)."""

_FIELDS = (
    "id",
    "split",
    "question",
    "answer",
    "answer_type",
    "images",
    "video",
    "options",
    "aliases",
    "tolerance",
    "abs_tolerance",
    "tools",
    "metadata",
)
_ONLY_FOR = {"options": "choice", "aliases": "exact", "tolerance": "numeric", "abs_tolerance": "numeric"}
# as vgym.rewards reads a numeric prediction
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class DatasetRecord:
    """One parsed record of the vgym JSONL format (fields as in the module docstring; built by
    :func:`parse_record`, which validates them; ``answer`` of a ``choice`` record is an upper-case letter)."""

    id: str
    split: str
    question: str
    answer: str
    answer_type: str
    images: tuple[str, ...] = ()
    video: str | None = None
    options: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    tolerance: float = 0.0
    abs_tolerance: float = 0.0
    tools: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)


def _text(obj: Mapping[str, Any], name: str, where: str) -> str:
    value = obj[name]
    if not isinstance(value, str) or not value.strip():
        raise InvalidConfigError(f"{where}: {name!r} must be a non-empty string, got {value!r}")
    return value


def _texts(obj: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = obj.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise InvalidConfigError(f"{where}: {name!r} must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def _relative(path: str, where: str) -> str:
    """``path`` if it is relative and stays inside the root lexically (symbolic links are checked when
    used)."""
    if os.path.isabs(path) or path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[/\\]", path):
        raise InvalidConfigError(f"{where}: absolute path {path!r}; paths are relative to the dataset root")
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        raise InvalidConfigError(
            f"{where}: path {path!r} leaves the dataset root ('..'); keep files inside it"
        )
    return path


def _tolerance(obj: Mapping[str, Any], name: str, where: str) -> float:
    value = obj.get(name, 0.0)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidConfigError(f"{where}: {name!r} must be a finite number >= 0, got {value!r}")
    return float(value)


def _gold_number(answer: str) -> float | None:
    """The single number in a numeric gold answer (thousands commas removed), or None."""
    numbers = _NUMBER.findall(answer.replace(",", ""))
    return float(numbers[0]) if len(numbers) == 1 and math.isfinite(float(numbers[0])) else None


def _check_answer(answer: str, answer_type: str, options: tuple[str, ...], where: str) -> str:
    """The answer, canonicalised (choice letters upper-cased); raises if it cannot be scored."""
    numbers = parse_numbers(answer)
    if answer_type == "choice":
        if not 2 <= len(options) <= 26:
            raise InvalidConfigError(
                f"{where}: a 'choice' record needs 2 to 26 'options', got {len(options)}"
            )
        letter = answer.strip().upper()
        if not (len(letter) == 1 and "A" <= letter < chr(ord("A") + len(options))):
            raise InvalidConfigError(f"{where}: the answer of a 'choice' record is the gold option's letter "
                                     f"(A to {chr(ord('A') + len(options) - 1)}), got {answer!r}")
        return letter
    if answer_type == "numeric" and _gold_number(answer) is None:
        raise InvalidConfigError(f"{where}: a 'numeric' answer must hold exactly one number, got {answer!r}")
    if answer_type == "box" and not (len(numbers) == 4 and all(map(math.isfinite, numbers))
                                     and numbers[0] < numbers[2] and numbers[1] < numbers[3]):
        raise InvalidConfigError(f"{where}: a 'box' answer is \"[x1, y1, x2, y2]\" with x1 < x2 and y1 < y2, "
                                 f"got {answer!r}")
    if answer_type == "interval" and not (len(numbers) == 2 and all(map(math.isfinite, numbers))
                                          and 0 <= numbers[0] < numbers[1]):
        raise InvalidConfigError(f"{where}: an 'interval' answer is \"[start, end]\" in seconds with "
                                 f"0 <= start < end, got {answer!r}")
    return answer


def parse_record(obj: Mapping[str, Any], *, where: str) -> DatasetRecord:
    """Validate one decoded JSON object of the vgym JSONL format and build its :class:`DatasetRecord`.

    Args:
        obj: the decoded line.
        where: where it came from, e.g. ``"data.jsonl:12"``; every error message starts with it.

    Returns:
        The record; ``choice`` answers upper-cased, lists as tuples, ``metadata`` a shallow copy.

    Raises:
        InvalidConfigError: for a missing, unknown, mistyped or inapplicable field, an unknown ``answer_type``
            or split, an answer its type cannot score, a record without images or video, or an absolute or
            ``..``-escaping path.
    """
    if not isinstance(obj, Mapping):
        raise InvalidConfigError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], _FIELDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidConfigError(
            f"{where}: unknown field(s) {unknown}{hint}; the fields are {list(_FIELDS)}, "
            "and anything else goes under 'metadata'"
        )
    missing = [name for name in ("id", "question", "answer", "answer_type") if name not in obj]
    if missing:
        raise InvalidConfigError(f"{where}: missing required field(s) {missing}")
    answer_type = obj["answer_type"]
    if answer_type not in ANSWER_TYPES:
        raise InvalidConfigError(f"{where}: answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")
    for name, allowed in _ONLY_FOR.items():
        if name in obj and answer_type != allowed:
            raise InvalidConfigError(
                f"{where}: {name!r} applies only to answer_type {allowed!r}, not {answer_type!r}"
            )
    split = obj.get("split", "test")
    if split not in SPLITS:
        raise InvalidConfigError(f"{where}: split must be one of {SPLITS}, got {split!r}")
    images = tuple(_relative(p, where) for p in _texts(obj, "images", where))
    video = _relative(_text(obj, "video", where), where) if obj.get("video") is not None else None
    if not images and video is None:
        raise InvalidConfigError(
            f"{where}: a record needs at least one of 'images' (a non-empty list) or 'video'"
        )
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, Mapping):
        raise InvalidConfigError(f"{where}: 'metadata' must be a JSON object, got {type(metadata).__name__}")
    options = _texts(obj, "options", where)
    return DatasetRecord(
        id=_text(obj, "id", where),
        split=split,
        question=_text(obj, "question", where),
        answer=_check_answer(_text(obj, "answer", where), answer_type, options, where),
        answer_type=answer_type,
        images=images,
        video=video,
        options=options,
        aliases=_texts(obj, "aliases", where),
        tolerance=_tolerance(obj, "tolerance", where),
        abs_tolerance=_tolerance(obj, "abs_tolerance", where),
        tools=_texts(obj, "tools", where),
        metadata=dict(metadata),
    )


def read_vgym_jsonl(path: str | os.PathLike) -> list[DatasetRecord]:
    """Read a vgym JSONL file (see the module docstring): :func:`read_json_lines`, then :func:`parse_record`.

    Returns:
        The records in file order.

    Raises:
        InvalidConfigError: as :func:`read_json_lines` and :func:`parse_record`, or for an id used twice
            (naming both lines).
    """
    records: list[DatasetRecord] = []
    first: dict[str, str] = {}
    for where, value in read_json_lines(path):
        record = parse_record(value, where=where)
        if record.id in first:
            raise InvalidConfigError(
                f"{where}: duplicate id {record.id!r} (first used at {first[record.id]})"
            )
        first[record.id] = where
        records.append(record)
    return records


def record_json(record: DatasetRecord) -> dict[str, Any]:
    """The vgym JSONL object of ``record``: the inverse of :func:`parse_record` (fields at their default are
    left out), so ``parse_record(record_json(r), where=...) == r`` for every record it built.

    Raises:
        InvalidConfigError: when the metadata holds something JSON cannot write (naming the record).
    """
    out: dict[str, Any] = {"id": record.id, "split": record.split, "question": record.question,
                           "answer": record.answer, "answer_type": record.answer_type}
    for name in ("images", "options", "aliases", "tools"):
        if getattr(record, name):
            out[name] = list(getattr(record, name))
    if record.video is not None:
        out["video"] = record.video
    for name in ("tolerance", "abs_tolerance"):
        if getattr(record, name):
            out[name] = getattr(record, name)
    if record.metadata:
        out["metadata"] = dict(record.metadata)
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidConfigError(f"record {record.id!r}: cannot be written as JSON ({error})") from None
    return out


def save_vgym_jsonl(records: Iterable[DatasetRecord], path: str | os.PathLike) -> int:
    """Write ``records`` as a vgym JSONL file (:func:`record_json`, one UTF-8 line each), replacing ``path``
    atomically (a temporary file beside it, then ``os.replace``).

    Returns:
        The number of lines written.

    Raises:
        InvalidConfigError: as :func:`record_json`. OSError: when the file cannot be written.
    """
    path = os.fspath(path)
    lines = [json.dumps(record_json(record), ensure_ascii=False) + "\n" for record in records]
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".jsonl", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return len(lines)


def _score_choice(record: DatasetRecord, answer: str) -> float:
    return multiple_choice_reward(answer, record.options, ord(record.answer) - ord("A"))


def _score_numeric(record: DatasetRecord, answer: str) -> float:
    gold = _gold_number(record.answer)
    if gold is None:  # records from parse_record always hold one; a hand-built one may not
        raise InvalidConfigError(
            f"record {record.id!r}: numeric answer {record.answer!r} holds no single number"
        )
    return numeric_reward(answer, gold, abs_tol=max(record.tolerance * abs(gold), record.abs_tolerance))


_SCORERS: dict[str, Callable[[DatasetRecord, str], float]] = {
    "exact": lambda record, answer: exact_match_reward(answer, record.answer, record.aliases),
    "choice": _score_choice,
    "numeric": _score_numeric,
    "box": lambda record, answer: box_iou_reward(answer, parse_numbers(record.answer)),
    "interval": lambda record, answer: interval_iou_reward(answer, parse_numbers(record.answer)),
}


def score_record(record: DatasetRecord, answer: str) -> float:
    """Score ``answer`` (the text inside ``<answer>``) against ``record`` by its ``answer_type``.

    ``exact``: normalised match with the answer or an alias. ``choice``: the gold letter or option text.
    ``numeric``: the one number in ``answer`` within ``max(tolerance * |gold|, abs_tolerance)`` of the gold
    value. ``box``: IoU with the gold box. ``interval``: temporal IoU with the gold interval.

    Returns:
        A float in [0, 1].

    Raises:
        InvalidConfigError: for an unknown ``answer_type`` (only possible for records not built by
            :func:`parse_record`).
    """
    scorer = _SCORERS.get(record.answer_type)
    if scorer is None:
        raise InvalidConfigError(f"record {record.id!r}: answer_type must be one of {ANSWER_TYPES}, "
                                 f"got {record.answer_type!r}")
    return min(1.0, max(0.0, float(scorer(record, answer))))
