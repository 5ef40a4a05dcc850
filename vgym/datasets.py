"""Real datasets on disk: the vgym JSONL format, paths confined to a dataset root, robust image loading, and the
generic loader task that the dataset tasks (``tasks/local_data.py``) build on.

Contents: :data:`ANSWER_TYPES`, :class:`DatasetRecord`, :func:`parse_record`, :func:`read_vgym_jsonl`,
:func:`score_record`, :class:`DatasetConfig`, :class:`DatasetTask`. Re-exported from :mod:`vgym.dataset_io` (the
file readers, path confinement and image loading, defined there): :data:`MAX_LINE_BYTES`, :data:`MAX_JSON_DEPTH`,
:data:`MAX_JSON_FILE_BYTES`, :func:`read_text_lines`, :func:`read_json_lines`, :func:`read_json`,
:func:`confined_path`, :class:`MediaError`, :func:`load_image`.

**The vgym JSONL format.** One JSON object per line, UTF-8 (a leading BOM is ignored); blank lines and lines
starting with ``//`` are skipped. Paths are relative to the dataset root, with ``/`` separators. Fields:

- ``id`` (str, required, unique in the file); ``question`` (str, required): the question shown to the model;
- ``answer`` (str, required), the gold answer as text, and ``answer_type`` (str, required), how it is scored:
  ``exact`` (normalised text match, :func:`vgym.rewards.exact_match_reward`; optional ``aliases``, more accepted
  answers), ``choice`` (``answer`` is the gold option's letter "A", "B", ...; needs ``options``, 2 to 26 texts,
  which the loader appends to the question as lines "A. <option>"; a letter or the option text counts),
  ``numeric`` (``answer`` holds one number; optional ``tolerance``, relative to the gold value, and
  ``abs_tolerance``: a prediction is right when ``|pred - gold| <= max(tolerance * |gold|, abs_tolerance)``, so
  ``tolerance: 0.05`` is ChartQA's relaxed accuracy), ``box`` (``"[x1, y1, x2, y2]"`` in pixels of image 0,
  continuous IoU) or ``interval`` (``"[start, end]"`` in seconds from the video's first frame, temporal IoU);
- ``images`` (list of str) and/or ``video`` (str): at least one of them. Images are loaded as RGB uint8; a video
  is shown as ``overview_frames`` evenly spaced decoded frames after the images, and ``Sample.video`` is its
  resolved path (for the ``sample_frames`` / ``get_frame`` tools);
- ``split`` ("train", "val" or "test"; default "test"), ``tools`` (list of str, suggested tools; informational),
  ``metadata`` (object: anything else, copied into ``Sample.metadata["record"]``).

Unknown fields are an error (a misspelt ``optoins`` would otherwise vanish); put extra data under ``metadata``.
A field that does not apply to the ``answer_type`` (``options`` on a numeric record, say) is an error too.

**Limits.** A line over :data:`MAX_LINE_BYTES` (1 MiB), JSON nested deeper than :data:`MAX_JSON_DEPTH` (32),
``NaN``/``Infinity``, duplicate keys in an object and duplicate record ids are errors naming ``file:line``.
Every file a record names is resolved with :func:`confined_path`: absolute paths, ``..`` escapes and symbolic links
leading outside the root are refused. :func:`load_image` refuses images over ``max_pixels`` before decoding them.
All of these raise :class:`~vgym.errors.InvalidConfigError` naming the file (and the record, from
:meth:`DatasetTask.sample`).

**Bad media.** A record's image or video that is missing, empty, truncated, corrupt, without a video stream or
frames, or over ``max_pixels`` raises :class:`MediaError` (an ``InvalidConfigError``) from
:meth:`DatasetTask.sample`, naming the record and the file and carrying ``sample_id``; the other records are
unaffected (nothing is decoded when the task is built), and :func:`vgym.rollout.rollout` turns the failure into one
failed episode. A path escaping the root stays a plain ``InvalidConfigError``, which stops a rollout.
"""

from __future__ import annotations

import difflib
import math
import os
import posixpath
import re
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vgym.dataset_io import (MAX_JSON_DEPTH, MAX_JSON_FILE_BYTES, MAX_LINE_BYTES, MediaError, confined_path,
                             load_image, read_json, read_json_lines, read_text_lines)
from vgym.errors import InvalidConfigError
from vgym.rewards import (box_iou_reward, exact_match_reward, interval_iou_reward, multiple_choice_reward,
                          numeric_reward, parse_numbers)
from vgym.task import SPLITS, Sample, Solution, Task
from vgym.tools.video import VideoReaderCache, frame_indices

__all__ = ["ANSWER_TYPES", "MAX_LINE_BYTES", "MAX_JSON_DEPTH", "MAX_JSON_FILE_BYTES", "DatasetRecord", "parse_record",
           "read_text_lines", "read_json_lines", "read_json", "read_vgym_jsonl", "confined_path", "MediaError",
           "load_image", "score_record", "DatasetConfig", "DatasetTask"]

ANSWER_TYPES: tuple[str, ...] = ("exact", "choice", "numeric", "box", "interval")
"""How a record's answer is scored (see the module docstring)."""

_FIELDS = ("id", "split", "question", "answer", "answer_type", "images", "video", "options", "aliases", "tolerance",
           "abs_tolerance", "tools", "metadata")
_ONLY_FOR = {"options": "choice", "aliases": "exact", "tolerance": "numeric", "abs_tolerance": "numeric"}
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")  # as vgym.rewards reads a numeric prediction


@dataclass(frozen=True)
class DatasetRecord:
    """One parsed record of the vgym JSONL format (fields as in the module docstring; built by :func:`parse_record`,
    which validates them; ``answer`` of a ``choice`` record is an upper-case letter)."""

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
    """``path`` if it is relative and stays inside the root lexically (symbolic links are checked when used)."""
    if os.path.isabs(path) or path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[/\\]", path):
        raise InvalidConfigError(f"{where}: absolute path {path!r}; paths are relative to the dataset root")
    normal = posixpath.normpath(path)
    if normal == ".." or normal.startswith("../"):
        raise InvalidConfigError(f"{where}: path {path!r} leaves the dataset root ('..'); keep files inside it")
    return path


def _tolerance(obj: Mapping[str, Any], name: str, where: str) -> float:
    value = obj.get(name, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
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
            raise InvalidConfigError(f"{where}: a 'choice' record needs 2 to 26 'options', got {len(options)}")
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
        InvalidConfigError: for a missing, unknown, mistyped or inapplicable field, an unknown ``answer_type`` or
            split, an answer its type cannot score, a record without images or video, or an absolute or
            ``..``-escaping path.
    """
    if not isinstance(obj, Mapping):
        raise InvalidConfigError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(_FIELDS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], _FIELDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidConfigError(f"{where}: unknown field(s) {unknown}{hint}; the fields are {list(_FIELDS)}, "
                                 "and anything else goes under 'metadata'")
    missing = [name for name in ("id", "question", "answer", "answer_type") if name not in obj]
    if missing:
        raise InvalidConfigError(f"{where}: missing required field(s) {missing}")
    answer_type = obj["answer_type"]
    if answer_type not in ANSWER_TYPES:
        raise InvalidConfigError(f"{where}: answer_type must be one of {ANSWER_TYPES}, got {answer_type!r}")
    for name, allowed in _ONLY_FOR.items():
        if name in obj and answer_type != allowed:
            raise InvalidConfigError(f"{where}: {name!r} applies only to answer_type {allowed!r}, not {answer_type!r}")
    split = obj.get("split", "test")
    if split not in SPLITS:
        raise InvalidConfigError(f"{where}: split must be one of {SPLITS}, got {split!r}")
    images = tuple(_relative(p, where) for p in _texts(obj, "images", where))
    video = _relative(_text(obj, "video", where), where) if obj.get("video") is not None else None
    if not images and video is None:
        raise InvalidConfigError(f"{where}: a record needs at least one of 'images' (a non-empty list) or 'video'")
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
        InvalidConfigError: as :func:`read_json_lines` and :func:`parse_record`, or for an id used twice (naming
            both lines).
    """
    records: list[DatasetRecord] = []
    first: dict[str, str] = {}
    for where, value in read_json_lines(path):
        record = parse_record(value, where=where)
        if record.id in first:
            raise InvalidConfigError(f"{where}: duplicate id {record.id!r} (first used at {first[record.id]})")
        first[record.id] = where
        records.append(record)
    return records


def _score_choice(record: DatasetRecord, answer: str) -> float:
    return multiple_choice_reward(answer, record.options, ord(record.answer) - ord("A"))


def _score_numeric(record: DatasetRecord, answer: str) -> float:
    gold = _gold_number(record.answer)
    if gold is None:  # records from parse_record always hold one; a hand-built one may not
        raise InvalidConfigError(f"record {record.id!r}: numeric answer {record.answer!r} holds no single number")
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
    ``numeric``: the one number in ``answer`` within ``max(tolerance * |gold|, abs_tolerance)`` of the gold value.
    ``box``: IoU with the gold box. ``interval``: temporal IoU with the gold interval.

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


@dataclass(frozen=True)
class DatasetConfig:
    """Fields every dataset loader's config has (loader configs subclass it and add their format's fields)."""

    root: str = ""
    """The dataset folder; every path in the annotations is relative to it and must stay inside it. Required: the
    empty default makes constructing the task raise (``task_config={'root': '/data/chartqa'}``)."""
    overview_frames: int = 4
    """Frames of a record's video shown as images, spread evenly over the clip as ``sample_frames`` would over the
    whole clip (1 to 8; the env's default episode budget is 8 images)."""
    max_image_pixels: int = 64_000_000
    """Largest image (W·H) decoded; larger files are refused as possible decompression bombs."""

    def __post_init__(self) -> None:
        if isinstance(self.root, os.PathLike):
            object.__setattr__(self, "root", os.fspath(self.root))  # a pathlib.Path is accepted and stored as str
        if not isinstance(self.root, str):
            raise InvalidConfigError(f"root must be a folder path (str), got {self.root!r}")
        if isinstance(self.overview_frames, bool) or not isinstance(self.overview_frames, int) \
                or not 1 <= self.overview_frames <= 8:
            raise InvalidConfigError(f"overview_frames must be an int from 1 to 8, got {self.overview_frames!r}")
        if isinstance(self.max_image_pixels, bool) or not isinstance(self.max_image_pixels, int) \
                or self.max_image_pixels < 1:
            raise InvalidConfigError(f"max_image_pixels must be an int >= 1, got {self.max_image_pixels!r}")


def _instruction(sample: Sample) -> str:
    """The one-line answer-format instruction for the sample's answer type."""
    meta = sample.metadata
    answer_type = meta["answer_type"]
    if answer_type == "choice":
        letters = [chr(ord("A") + i) for i in range(len(meta["options"]))]
        return f"Answer with the letter ({', '.join(letters[:-1])} or {letters[-1]}) of the correct option."
    if answer_type == "box":
        height, width = sample.images[0].shape[:2]
        return (f"Answer with the bounding box [x1, y1, x2, y2] in pixels of image 0 at full resolution "
                f"({width}x{height}).")
    return {"exact": "Answer with a single word or short phrase.",
            "numeric": "Answer with a single number.",
            "interval": "Answer the time interval in seconds as [start, end]."}[answer_type]


class DatasetTask(Task):
    """A task whose samples are the records of a dataset on disk (``procedural = False``).

    Subclasses set ``name``, ``config_cls`` (usually a :class:`DatasetConfig` subclass) and ``default_tools``, and
    implement :meth:`records` and :meth:`root`; sampling, scoring, prompts and the oracle's answer are generic.
    :meth:`records` is called once, at the end of ``DatasetTask.__init__`` (so a bad annotation fails when the env
    is made, and no image is decoded then): set anything it needs *before* calling ``super().__init__(config)``.
    The optional config fields ``overview_frames`` (default 4) and ``max_image_pixels`` (default 64 M) are read
    when present.

    :meth:`sample` returns record ``index % n`` of the split's ``n`` records in their order (the env draws random
    indices, so this samples uniformly); ``seed`` is unused, because the data is fixed. The oracle's
    :class:`~vgym.task.Solution` has no tool calls: real data has no ground truth for tool arguments.
    """

    procedural = False

    def __init__(self, config: Any = None) -> None:
        """Args:
        config: as :class:`~vgym.task.Task`.

        Raises:
            InvalidConfigError: when :meth:`root` is empty or not a folder, or the annotations are invalid (from
                :meth:`records`), or two records share an id.
        """
        super().__init__(config)
        root = self.root()
        if not root:
            raise InvalidConfigError(f"{self.name} reads a dataset from disk: set task_config={{'root': ...}} to its "
                                     f"folder, e.g. gymnasium.make(..., task_config={{'root': '/data/{self.name}'}})")
        if not os.path.isdir(root):
            raise InvalidConfigError(f"{self.name}: the dataset root {root!r} is not a folder")
        records = self.records()
        by_split: dict[str, list[DatasetRecord]] = {split: [] for split in SPLITS}
        seen: set[str] = set()
        for record in records:
            if record.id in seen:
                raise InvalidConfigError(f"{self.name}: two records have the id {record.id!r}; ids must be unique")
            seen.add(record.id)
            by_split[record.split].append(record)
        self._by_split = by_split

    @abstractmethod
    def records(self) -> list[DatasetRecord]:
        """Every record of the dataset, in a stable order (called once; see the class docstring).

        Raises:
            InvalidConfigError: for missing or malformed annotations, naming the file and line.
        """

    @abstractmethod
    def root(self) -> str:
        """The dataset folder that record paths are relative to ("" when unset)."""

    def split_records(self, split: str) -> list[DatasetRecord]:
        """The records of ``split`` in dataset order (a copy).

        Raises:
            InvalidConfigError: for an unknown split.
        """
        if split not in SPLITS:
            raise InvalidConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
        return list(self._by_split[split])

    def sample(self, split: str, index: int, seed: int) -> Sample:
        """Record ``index % n`` of ``split``, its images and video frames decoded (``seed`` is unused).

        Returns:
            A :class:`~vgym.task.Sample` with id ``"<task>/<record id>"``, ``index`` the record's position in the
            split, the question followed by ``"A. <option>"`` lines for choice records, the record's images then
            its video's overview frames (full resolution), and ``metadata`` holding ``record`` (the record's own
            metadata), ``record_id``, ``answer_type``, ``options``, ``aliases``, ``tolerance``, ``abs_tolerance``,
            ``tools`` and, for video records, ``video`` (``duration_s``, ``fps``, ``num_frames``,
            ``frame_indices``, ``frame_times`` of the overview frames).

        Raises:
            MediaError: for a file of the record that is missing or cannot be decoded (naming record and file;
                ``sample_id`` set).
            InvalidConfigError: for an unknown split, a negative index or seed, a split without records, or a file
                path outside the root.
        """
        if index < 0 or seed < 0:
            raise InvalidConfigError(f"seed and index must be non-negative ints, got seed={seed}, index={index}")
        records = self.split_records(split)
        if not records:
            counts = {name: len(found) for name, found in self._by_split.items()}
            raise InvalidConfigError(f"{self.name}: the split {split!r} has no records in {self.root()} (records per "
                                     f"split: {counts}); choose another split (EnvConfig.split or reset options)")
        position = index % len(records)
        record = records[position]
        metadata: dict[str, Any] = {
            "record": dict(record.metadata), "record_id": record.id, "answer_type": record.answer_type,
            "options": list(record.options), "aliases": list(record.aliases), "tolerance": record.tolerance,
            "abs_tolerance": record.abs_tolerance, "tools": list(record.tools),
        }
        max_pixels = int(getattr(self.config, "max_image_pixels", 64_000_000))
        try:
            images = [load_image(confined_path(self.root(), p), max_pixels=max_pixels) for p in record.images]
            video = None
            if record.video is not None:
                video = confined_path(self.root(), record.video)
                frames, metadata["video"] = _overview(video, int(getattr(self.config, "overview_frames", 4)))
                images += frames
        except MediaError as error:  # one record's bad file: a rollout skips this episode (see MediaError)
            raise MediaError(f"{self.name} record {record.id!r}: {error}", path=error.path,
                             sample_id=f"{self.name}/{record.id}") from error
        except InvalidConfigError as error:
            raise InvalidConfigError(f"{self.name} record {record.id!r}: {error}") from error
        question = record.question + "".join(f"\n{chr(ord('A') + i)}. {o}" for i, o in enumerate(record.options))
        return Sample(id=f"{self.name}/{record.id}", task=self.name, split=split, index=position, question=question,
                      images=tuple(images), answer=record.answer, metadata=metadata, video=video)

    def score(self, sample: Sample, answer: str) -> float:
        """:func:`score_record` of the record the sample came from (rebuilt from ``sample.metadata``)."""
        meta = sample.metadata
        record = DatasetRecord(id=meta["record_id"], split=sample.split, question=sample.question,
                               answer=sample.answer, answer_type=meta["answer_type"], options=tuple(meta["options"]),
                               aliases=tuple(meta["aliases"]), tolerance=meta["tolerance"],
                               abs_tolerance=meta["abs_tolerance"])
        return score_record(record, answer)

    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        """The question, a note on which images are video frames (for video records), and the answer format."""
        lines = [sample.question]
        video = sample.metadata.get("video")
        if video is not None:
            n, first = len(video["frame_times"]), len(sample.images) - len(video["frame_times"])
            which = "The images are" if first == 0 else f"Images {first} to {first + n - 1} are"
            lines.append(f"{which} {n} evenly spaced frames of the {video['duration_s']:.2f} s video.")
        lines.append(_instruction(sample))
        return "\n".join(lines)

    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        """The gold answer without tool calls (real data has no ground truth for tool arguments)."""
        return Solution(tool_calls=(), answer=sample.answer)


def _overview(path: str, count: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    """``count`` frames spread evenly over the clip (the centres of equal slices, as ``sample_frames`` picks over
    the whole clip), decoded with PyAV, and the clip's facts for ``Sample.metadata["video"]``."""
    import av  # lazy, as in vgym.tools.video

    if not os.path.isfile(path):
        raise MediaError(f"video file not found: {path}", path=path)
    cache = VideoReaderCache("pyav", max_open=1)
    try:
        with cache.open(path) as clip:
            info = clip.info
            chosen = frame_indices(info.times, [(k + 0.5) * info.duration / count for k in range(count)])
            frames = clip.read(chosen)
    except (av.FFmpegError, OSError, ValueError, IndexError) as error:  # PyAV and our reader's failures
        detail = str(error) if type(error) is ValueError else repr(error)  # our reader's checks read plainly
        raise MediaError(f"{path}: the video could not be decoded with PyAV ({detail})", path=path) from None
    finally:
        cache.close()
    facts = {"duration_s": round(info.duration, 6), "fps": info.fps, "num_frames": len(info.times),
             "frame_indices": chosen, "frame_times": [time for _, time in frames]}
    return [np.ascontiguousarray(frame) for frame, _ in frames], facts
