"""Real datasets on disk: the generic loader task that the dataset tasks (``tasks/local_data.py``) build on.

Contents: :class:`DatasetConfig`, :class:`RequiredPath`, :class:`DatasetTask`.

Records come in the vgym JSONL format (:mod:`vgym.data.records`) or are converted to it by a loader; files are
read with the bounded readers and path confinement of :mod:`vgym.data.files` and decoded by
:mod:`vgym.data.media`.

**Limits.** A line over :data:`~vgym.data.files.MAX_LINE_BYTES` (1 MiB), JSON nested deeper than
:data:`~vgym.data.files.MAX_JSON_DEPTH` (32), ``NaN``/``Infinity``, duplicate keys in an object and duplicate
record ids are errors naming ``file:line``. Every file a record names is resolved with
:func:`~vgym.data.files.confined_path`: absolute paths, ``..`` escapes and symbolic links leading outside the
root are refused. :func:`~vgym.data.media.load_image` refuses images over ``max_pixels`` before decoding them.
All of these raise :class:`~vgym.errors.InvalidConfigError` naming the file (and the record, from
:meth:`DatasetTask.sample`).

**Layout, checked when the task is built** (so ``gymnasium.make`` fails once, up front, instead of every
``reset`` failing during a rollout): the root folder, then the annotation files the loader declares
(:class:`RequiredPath`, :meth:`DatasetTask.required_paths`), then, after the records are read, the media
folders it declares (a loader whose media sit anywhere under the root, such as the vgym JSONL format, has
the root as its media folder). The first one missing raises
:class:`~vgym.errors.DatasetLayoutError` (an ``InvalidConfigError``) saying which it is (dataset root,
annotation file, media folder), its path, and the config field that sets it. Files inside the folders are not
opened then: a missing or broken *file* is one record's fault (below).

**Bad media.** A record's image or video that is missing, empty, truncated, corrupt, without a video stream or
frames, or over ``max_pixels`` raises :class:`~vgym.errors.MediaError` (an ``InvalidConfigError``) from
:meth:`DatasetTask.sample`, naming the record and the file and carrying ``sample_id``; the other records are
unaffected (nothing is decoded when the task is built), and :func:`vgym.rollout.loop.rollout` turns the
failure into one failed episode. A path escaping the root stays a plain ``InvalidConfigError``, which stops a
rollout.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from vgym.data.files import confined_path
from vgym.data.media import load_image, overview_frames
from vgym.data.records import DatasetRecord, score_record
from vgym.errors import DatasetLayoutError, InvalidConfigError, MediaError
from vgym.task import SPLITS, Sample, Solution, Task

__all__ = ["DatasetConfig", "RequiredPath", "DatasetTask"]


@dataclass(frozen=True)
class DatasetConfig:
    """Fields every dataset loader's config has (loader configs subclass it and add their format's fields)."""

    root: str = ""
    """The dataset folder; every path in the annotations is relative to it and must stay inside it. Required:
    the empty default makes constructing the task raise (``task_config={'root': '/data/chartqa'}``)."""
    overview_frames: int = 4
    """Frames of a record's video shown as images, spread evenly over the clip as ``sample_frames`` would over
    the whole clip (1 to 8; the env's default episode budget is 8 images)."""
    max_image_pixels: int = 64_000_000
    """Largest image (W·H) decoded; larger files are refused as possible decompression bombs."""

    def __post_init__(self) -> None:
        if isinstance(self.root, os.PathLike):
            # a pathlib.Path is accepted and stored as str
            object.__setattr__(self, "root", os.fspath(self.root))
        if not isinstance(self.root, str):
            raise InvalidConfigError(f"root must be a folder path (str), got {self.root!r}")
        if isinstance(self.overview_frames, bool) or not isinstance(self.overview_frames, int) \
                or not 1 <= self.overview_frames <= 8:
            raise InvalidConfigError(
                f"overview_frames must be an int from 1 to 8, got {self.overview_frames!r}"
            )
        if isinstance(self.max_image_pixels, bool) or not isinstance(self.max_image_pixels, int) \
                or self.max_image_pixels < 1:
            raise InvalidConfigError(f"max_image_pixels must be an int >= 1, got {self.max_image_pixels!r}")


@dataclass(frozen=True)
class RequiredPath:
    """A file or folder a loader needs under its root, checked when the task is built."""

    what: str
    """What it is, for the message: ``"annotation file"`` or ``"media folder"``."""
    paths: tuple[str, ...]
    """Candidates relative to the root; one existing is enough (e.g. one annotation file per split)."""
    fields: tuple[str, ...]
    """The config fields that name it (the message says to set them)."""
    folder: bool = False
    """True for a folder, False for a file."""


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

    Subclasses set ``name``, ``config_cls`` (usually a :class:`DatasetConfig` subclass) and ``default_tools``,
    and implement :meth:`records` and :meth:`root`; SOME override :meth:`required_paths` (their annotation
    files and media folders) and ``default_split``. Sampling, scoring, prompts and the oracle's answer are
    generic. :meth:`records` is called once, at the end of ``DatasetTask.__init__``, between the layout
    checks (so a missing folder or a bad annotation fails when the env is made, and no image is decoded then):
    set anything it needs *before* calling ``super().__init__(config)``. The optional config fields
    ``overview_frames`` (default 4) and ``max_image_pixels`` (default 64 M) are read when present.

    :meth:`sample` returns record ``index % n`` of the split's ``n`` records in their order (the env draws
    random indices, so this samples uniformly); ``seed`` is unused, because the data is fixed. The oracle's
    :class:`~vgym.task.Solution` has no tool calls: real data has no ground truth for tool arguments.
    """

    procedural = False

    def __init__(self, config: Any = None) -> None:
        """Args:
        config: as :class:`~vgym.task.Task`.

        Raises:
            DatasetLayoutError: when the root or a :meth:`required_paths` entry is missing (an
                ``InvalidConfigError``; the message says which).
            InvalidConfigError: when :meth:`root` is empty, or the annotations are invalid (from
                :meth:`records`), or two records share an id.
        """
        super().__init__(config)
        root = self.root()
        if not root:
            raise InvalidConfigError(
                f"{self.name} reads a dataset from disk: set task_config={{'root': ...}} to its "
                f"folder, e.g. gymnasium.make(..., task_config={{'root': '/data/{self.name}'}})"
            )
        if not os.path.isdir(root):
            raise DatasetLayoutError(
                f"{self.name}: the dataset root {root!r} is not a folder (task_config 'root')",
                path=os.path.abspath(root), what="dataset root",
            )
        required = self.required_paths()
        for entry in required:  # annotation files first: they are read next
            if not entry.folder:
                self._check_required(entry)
        records = self.records()
        for entry in required:
            if entry.folder:
                self._check_required(entry)
        by_split: dict[str, list[DatasetRecord]] = {split: [] for split in SPLITS}
        seen: set[str] = set()
        for record in records:
            if record.id in seen:
                raise InvalidConfigError(
                    f"{self.name}: two records have the id {record.id!r}; ids must be unique"
                )
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

    def required_paths(self) -> list[RequiredPath]:
        """The annotation files (checked before :meth:`records` runs) and media folders (checked after it) of
        the layout (see the module docstring); the default declares none (only the root is checked)."""
        return []

    def _check_required(self, required: RequiredPath) -> None:
        """Raise :class:`~vgym.errors.DatasetLayoutError` when none of ``required.paths`` exists."""
        full = [confined_path(self.root(), relative) for relative in required.paths]
        if any(os.path.lexists(path) for path in full):  # something is there: its reader names any fault
            return
        fix = f"set task_config {' / '.join(map(repr, required.fields))} if yours is elsewhere"
        if len(full) == 1:
            message = (f"{self.name}: the {required.what} {required.paths[0]!r} is missing from the dataset "
                       f"root {self.root()} (looked for {full[0]}); {fix}")
        else:
            message = (f"{self.name}: none of the {required.what}s {list(required.paths)} is in the dataset "
                       f"root {self.root()}; {fix}")
        raise DatasetLayoutError(message, path=full[0], what=required.what)

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
            A :class:`~vgym.task.Sample` with id ``"<task>/<record id>"``, ``index`` the record's position in
                the
            split, the question followed by ``"A. <option>"`` lines for choice records, the record's images
                then
            its video's overview frames (full resolution), and ``metadata`` holding ``record`` (the record's
                own
            metadata), ``record_id``, ``answer_type``, ``options``, ``aliases``, ``tolerance``,
                ``abs_tolerance``,
            ``tools`` and, for video records, ``video`` (``duration_s``, ``fps``, ``num_frames``,
            ``frame_indices``, ``frame_times`` of the overview frames).

        Raises:
            MediaError: for a file of the record that is missing or cannot be decoded (naming record and file;
                ``sample_id`` set).
            InvalidConfigError: for an unknown split, a negative index or seed, a split without records, or a
                file path outside the root.
        """
        if index < 0 or seed < 0:
            raise InvalidConfigError(
                f"seed and index must be non-negative ints, got seed={seed}, index={index}"
            )
        records = self.split_records(split)
        if not records:
            counts = {name: len(found) for name, found in self._by_split.items()}
            raise InvalidConfigError(
                f"{self.name}: the split {split!r} has no records in {self.root()} (records per "
                f"split: {counts}); choose another split (EnvConfig.split or reset options)"
            )
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
                frames, metadata["video"] = overview_frames(
                    video, int(getattr(self.config, "overview_frames", 4))
                )
                images += frames
        except MediaError as error:  # one record's bad file: a rollout skips this episode (see MediaError)
            raise MediaError(f"{self.name} record {record.id!r}: {error}", path=error.path,
                             sample_id=f"{self.name}/{record.id}") from error
        except InvalidConfigError as error:
            raise InvalidConfigError(f"{self.name} record {record.id!r}: {error}") from error
        question = record.question + "".join(
            f"\n{chr(ord('A') + i)}. {o}" for i, o in enumerate(record.options)
        )
        return Sample(
            id=f"{self.name}/{record.id}",
            task=self.name,
            split=split,
            index=position,
            question=question,
            images=tuple(images),
            answer=record.answer,
            metadata=metadata,
            video=video,
        )

    def score(self, sample: Sample, answer: str) -> float:
        """:func:`score_record` of the record the sample came from (rebuilt from ``sample.metadata``)."""
        meta = sample.metadata
        record = DatasetRecord(
            id=meta["record_id"],
            split=sample.split,
            question=sample.question,
            answer=sample.answer,
            answer_type=meta["answer_type"],
            options=tuple(meta["options"]),
            aliases=tuple(meta["aliases"]),
            tolerance=meta["tolerance"],
            abs_tolerance=meta["abs_tolerance"],
        )
        return score_record(record, answer)

    def prompt(self, sample: Sample, tools_enabled: bool) -> str:
        """The question, a note on which images are video frames (for video records), and the answer
        format."""
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
