"""Dataset loader tasks: a local annotation file plus a media folder, in five common formats.

Contents: :class:`VgymJsonlConfig`, :class:`VgymJsonlTask`, :class:`ChartqaConfig`, :class:`ChartqaTask`,
:class:`VstarConfig`, :class:`VstarTask`, :class:`RefcocoConfig`, :class:`RefcocoTask`,
:class:`CharadesStaConfig`, :class:`CharadesStaTask`.

Every loader is a :class:`vgym.data.dataset_task.DatasetTask` (``procedural = False``): its config names the
dataset folder ``root`` (required), and each format's records become :class:`~vgym.data.records.DatasetRecord`
s through :func:`~vgym.data.records.parse_record`, so they are validated and scored exactly like the vgym
JSONL format. Every path goes through :func:`~vgym.data.dataset_task.confined_path`. Layouts:

- ``vgym_jsonl`` (``vgym/VgymJsonl-v0``): ``<root>/<annotations>`` in the vgym JSONL format (module docstring
  of :mod:`vgym.data.records`).
- ``chartqa_dataset`` (``vgym/ChartqaDataset-v0``): the official ChartQA release,
  ``<root>/<split>/<split>_<subset>.json`` (JSON lists of ``{"imgname", "query", "label"}``) with images in
  ``<root>/<split>/png/``. Scored by ChartQA's relaxed accuracy: a label that is one number (optionally with
  ``%``) is ``numeric`` with 5 % tolerance relative to the gold value, any other label a normalised ``exact``
  match. Record ids ``<split>/<subset>/<position>``.
- ``vstar`` (``vgym/Vstar-v0``): V* Bench's ``<root>/test_questions.jsonl`` (the Hugging Face release
  ``craigwu/vstar_bench``), lines
  ``{"image": "direct_attributes/sa_4690.jpg", "text": "What is the material of the glove?\\n(A) rubber\\n
  (B) cotton\\n(C) kevlar\\n(D) leather\\nAnswer with the option's letter from the given choices directly.",
  "category": "direct_attributes", "question_id": 0, "label": "A"}`` (one line):
  the options are ``(A) ...`` lines of ``text`` (lines after them, the instruction, are dropped: the prompt
  adds its own). Lines carrying an ``options`` list instead (``text`` is then the bare question) are accepted
  too; ``label`` is a letter or an option index. (The GitHub release keeps one JSON per image with the gold
  option first; convert it to either form.) Record ids: ``question_id``, else the line number. Every record
  goes to one split (config ``split``).
- ``refcoco`` (``vgym/Refcoco-v0``): RefCOCO, RefCOCO+ and RefCOCOg as released
  (:mod:`vgym.data.refer`): ``<root>/<dataset>/refs(<split_by>).p`` (a Python 2 pickle, read without
  running it) and ``<root>/<dataset>/instances.json``, images ``<root>/<image_dir>/COCO_train2014_%012d.jpg``
  (default ``train2014``); one record per sentence, id ``<ref_id>/<sent_id>``, the question ``Give the box
  of: <sent>.``. Or, with ``annotations`` naming a file, RefCOCO JSONL lines
  ``{"image": "COCO_train2014_000000581857.jpg", "bbox": [x, y, w, h],
  "expression" | "sent" | "sentences": ..., "split": ...}`` (``sentences`` may list strings or refer-API
  ``{"sent": ...}`` objects, one record each; ids ``<line>`` or ``<line>.<k>``). COCO's ``[x, y, w, h]``
  becomes the answer ``[x1, y1, x2, y2]``; scored by box IoU. Splits ``train``/``val`` map to themselves and
  ``test``/``testA``/``testB`` to ``test`` (the released name is ``metadata["split"]``; ``keep_splits``
  filters on it).
- ``charades_sta`` (``vgym/CharadesSta-v0``): Charades-STA's ``charades_sta_<split>.txt`` (the release has
  ``train`` and ``test``), lines ``VIDEOID START END##sentence``, videos
  ``<root>/<video_dir>/<VIDEOID><video_ext>`` (default ``Charades_v1_480/<VIDEOID>.mp4``, the official 480p
  zip unpacked); the answer is ``[start, end]`` in seconds, scored by temporal IoU. Record ids
  ``<split>/<line>``.

Each loader declares its annotation files and media folders (:meth:`DatasetTask.required_paths`: ChartQA's
``<split>/png``, RefCOCO's ``image_dir``, Charades-STA's ``video_dir``; the vgym JSONL format and V* keep
media anywhere under the root), so a missing root, annotation file or media folder raises
:class:`~vgym.errors.DatasetLayoutError` naming it when the env is made.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from vgym.data.dataset_task import DatasetConfig, DatasetTask, RequiredPath
from vgym.data.files import confined_path, read_json, read_json_lines, read_text_lines
from vgym.data.records import DatasetRecord, parse_record, read_vgym_jsonl
from vgym.data.refer import SPLIT_OF, read_refer, refs_file
from vgym.errors import InvalidConfigError
from vgym.task import SPLITS, register_task

__all__ = ["VgymJsonlConfig", "VgymJsonlTask", "ChartqaConfig", "ChartqaTask", "VstarConfig", "VstarTask",
           "RefcocoConfig", "RefcocoTask", "CharadesStaConfig", "CharadesStaTask"]


def _check_split(name: str, split: str) -> None:
    if split not in SPLITS:
        raise InvalidConfigError(f"{name} must be one of {SPLITS}, got {split!r}")


def _line_number(where: str) -> str:
    """The line number of a ``"<path>:<line>"`` location."""
    return where.rsplit(":", 1)[1]


class _LocalTask(DatasetTask):
    """A loader whose config is a :class:`~vgym.data.dataset_task.DatasetConfig`: the root is
    ``config.root``."""

    config: Any

    def root(self) -> str:
        return self.config.root

    def path(self, relative: str) -> str:
        """``relative`` resolved inside the root (:func:`~vgym.data.dataset_task.confined_path`)."""
        return confined_path(self.root(), relative)


# ---------------------------------------------------------------- vgym JSONL


@dataclass(frozen=True)
class VgymJsonlConfig(DatasetConfig):
    """A dataset in the vgym JSONL format."""

    annotations: str = "data.jsonl"
    """The JSONL file, relative to ``root``."""


class VgymJsonlTask(_LocalTask):
    """Records of a vgym JSONL file (see :mod:`vgym.data.dataset_task`)."""

    name = "vgym_jsonl"
    config_cls = VgymJsonlConfig
    default_tools = ("crop",)

    def required_paths(self) -> list[RequiredPath]:
        return [RequiredPath("annotation file", (self.config.annotations,), ("annotations",))]

    def records(self) -> list[DatasetRecord]:
        return read_vgym_jsonl(self.path(self.config.annotations))


# ---------------------------------------------------------------- ChartQA

_CHARTQA_NUMBER = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*%?\s*")


@dataclass(frozen=True)
class ChartqaConfig(DatasetConfig):
    """The official ChartQA layout (see the module docstring)."""

    subsets: tuple[str, ...] = ("human", "augmented")
    """Which question sets to read: ``human`` (written by people) and/or ``augmented`` (machine-generated)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "subsets", tuple(self.subsets))  # a list from a dict config is accepted
        if not self.subsets or not set(self.subsets) <= {"human", "augmented"}:
            raise InvalidConfigError(f"subsets must be a non-empty subset of ('human', 'augmented'), got "
                                     f"{self.subsets!r}")


class ChartqaTask(_LocalTask):
    """ChartQA questions on chart images (relaxed accuracy)."""

    name = "chartqa_dataset"
    config_cls = ChartqaConfig
    default_tools = ("crop",)

    def required_paths(self) -> list[RequiredPath]:
        files = tuple(f"{split}/{split}_{subset}.json" for split in SPLITS for subset in self.config.subsets)
        splits = [split for split in SPLITS if any(os.path.isfile(self.path(f)) for f in files
                                                   if f.startswith(f"{split}/"))]
        media = [RequiredPath("media folder", (f"{split}/png",), ("root",), folder=True) for split in splits]
        return [RequiredPath("annotation file", files, ("root", "subsets")), *media]

    def records(self) -> list[DatasetRecord]:
        out: list[DatasetRecord] = []
        expected = []
        for split in SPLITS:
            for subset in self.config.subsets:
                relative = f"{split}/{split}_{subset}.json"
                expected.append(relative)
                path = self.path(relative)
                if os.path.isfile(path):
                    out += self._read(path, split, subset)
        if not out:
            raise InvalidConfigError(f"chartqa: no question file found under {self.root()}; expected one of "
                                     f"{expected}")
        return out

    def _read(self, path: str, split: str, subset: str) -> list[DatasetRecord]:
        items = read_json(path)
        if not isinstance(items, list):
            raise InvalidConfigError(f"{path}: expected a JSON list of questions, got {type(items).__name__}")
        out = []
        for i, item in enumerate(items):
            where = f"{path}[{i}]"
            if not isinstance(item, dict) or not {"imgname", "query", "label"} <= set(item):
                raise InvalidConfigError(f"{where}: expected an object with 'imgname', 'query' and 'label'")
            label = item["label"]
            if isinstance(label, list) and len(label) == 1:  # some re-releases wrap the label in a list
                label = label[0]
            label = str(label) if isinstance(label, (int, float)) and not isinstance(label, bool) else label
            numeric = isinstance(label, str) and _CHARTQA_NUMBER.fullmatch(label) is not None
            record = {
                "id": f"{split}/{subset}/{i}",
                "split": split,
                "question": item["query"],
                "answer": label,
                "answer_type": "numeric" if numeric else "exact",
                "images": [f"{split}/png/{item['imgname']}"],
                "metadata": {"subset": subset, "imgname": item["imgname"]},
            }
            if numeric:
                record["tolerance"] = 0.05
            out.append(parse_record(record, where=where))
        return out


# ---------------------------------------------------------------- V* Bench

_OPTION_LINE = re.compile(r"\s*\(([A-Z])\)\s*(.*?)\s*")


@dataclass(frozen=True)
class VstarConfig(DatasetConfig):
    """V* Bench (see the module docstring)."""

    annotations: str = "test_questions.jsonl"
    """The question file, relative to ``root``."""
    split: str = "test"
    """The split every record belongs to (V* Bench is one test set; "train" lets you train on it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_split("split", self.split)


def _vstar_options(text: str, where: str) -> tuple[str, list[str], str]:
    """Split a V* ``text`` into the question, its ``(A) ...`` option lines and what follows them."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if _OPTION_LINE.fullmatch(line)), None)
    if first is None:
        raise InvalidConfigError(
            f"{where}: no options: expected an 'options' list or '(A) ...' lines in 'text'"
        )
    options: list[str] = []
    end = first
    while end < len(lines) and (match := _OPTION_LINE.fullmatch(lines[end])) \
            and match.group(1) == chr(ord("A") + len(options)):
        options.append(match.group(2))
        end += 1
    return "\n".join(lines[:first]).strip(), options, "\n".join(lines[end:]).strip()


class VstarTask(_LocalTask):
    """V* Bench multiple-choice questions on high-resolution images."""

    name = "vstar"
    config_cls = VstarConfig
    default_tools = ("crop",)

    def required_paths(self) -> list[RequiredPath]:
        return [RequiredPath("annotation file", (self.config.annotations,), ("annotations",))]

    def records(self) -> list[DatasetRecord]:
        out = []
        for where, line in read_json_lines(self.path(self.config.annotations)):
            if not isinstance(line, dict) or not {"image", "text", "label"} <= set(line):
                raise InvalidConfigError(f"{where}: expected an object with 'image', 'text' and 'label'")
            extra = {k: v for k, v in line.items() if k not in ("image", "text", "label", "options")}
            if "options" in line:
                question, options = line["text"], line["options"]
            elif isinstance(line["text"], str):
                question, options, extra["instruction"] = _vstar_options(line["text"], where)
            else:
                raise InvalidConfigError(f"{where}: 'text' must be a string, got {line['text']!r}")
            label = line["label"]
            if isinstance(label, int) and not isinstance(label, bool):
                label = chr(ord("A") + label) if 0 <= label < 26 else str(label)
            elif isinstance(label, str):
                label = label.strip().strip("().").strip()
            record_id = line.get("question_id", _line_number(where))
            out.append(parse_record({"id": str(record_id), "split": self.config.split, "question": question,
                                     "answer": label, "answer_type": "choice", "options": options,
                                     "images": [line["image"]], "metadata": extra}, where=where))
        return out


# ---------------------------------------------------------------- RefCOCO


@dataclass(frozen=True)
class RefcocoConfig(DatasetConfig):
    """RefCOCO, RefCOCO+ or RefCOCOg as released, or RefCOCO JSONL lines (see the module docstring)."""

    dataset: str = "refcoco"
    """The release folder, relative to ``root``: ``refcoco``, ``refcoco+`` or ``refcocog`` (a deeper path such
    as ``"refer/data/refcocog"`` is fine: its last part names the release)."""
    split_by: str = ""
    """Whose splits (the refs file ``refs(<split_by>).p``): ``unc`` (RefCOCO, RefCOCO+), ``google`` (RefCOCO,
    RefCOCOg) or ``umd`` (RefCOCOg); "" means the usual one: ``unc`` for RefCOCO and RefCOCO+, ``umd`` for
    RefCOCOg (Nagaraja et al. 2016, the split most RefCOCOg results use)."""
    annotations: str = ""
    """"" reads the release (``<dataset>/refs(<split_by>).p`` and ``<dataset>/instances.json``); a file name,
    relative to ``root``, reads RefCOCO JSONL lines instead (``dataset`` and ``split_by`` are then unused)."""
    image_dir: str = "train2014"
    """Folder of the COCO ``train2014`` images, relative to ``root`` ("" means ``root`` itself; the refer
    toolkit's own layout is ``"images/mscoco/images/train2014"``)."""
    default_split: str = "test"
    """JSONL lines only: the split of lines without a ``"split"`` field."""
    keep_splits: tuple[str, ...] = ()
    """Released split names to keep (e.g. ``("testA",)``); () keeps every expression."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_split("default_split", self.default_split)
        object.__setattr__(self, "keep_splits", tuple(self.keep_splits))
        if not self.annotations:
            refs_file(self.dataset, self.split_by)  # an unknown release or split_by fails here

    @property
    def refs(self) -> str:
        """The refs file of the release, relative to ``root``."""
        return refs_file(self.dataset, self.split_by)


def _sentences(line: dict[str, Any], where: str) -> list[str]:
    """The referring expressions of a RefCOCO JSONL line."""
    key = next((k for k in ("expression", "sent", "sentences") if k in line), None)
    value = line.get(key) if key else None
    items = value if isinstance(value, list) else [value]
    out = [item.get("sent", item.get("raw")) if isinstance(item, dict) else item for item in items]
    if not out or not all(isinstance(s, str) and s.strip() for s in out):
        raise InvalidConfigError(
            f"{where}: expected 'expression', 'sent' or 'sentences' with non-empty text, got {value!r}"
        )
    return [s.strip() for s in out]


def _coco_box(value: Any, where: str) -> str:
    """COCO ``[x, y, w, h]`` as the answer text ``"[x1, y1, x2, y2]"``."""
    if not (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and value[2] > 0 and value[3] > 0):
        raise InvalidConfigError(
            f"{where}: 'bbox' must be COCO [x, y, width, height] with width, height > 0, got {value!r}"
        )
    x, y, w, h = (float(v) for v in value)
    return "[" + ", ".join(f"{round(v, 2):.12g}" for v in (x, y, x + w, y + h)) + "]"


def _refcoco_question(sentence: str) -> str:
    return f"Give the box of: {sentence.rstrip('.')}."


class RefcocoTask(_LocalTask):
    """Give the box of the object a referring expression names."""

    name = "refcoco"
    config_cls = RefcocoConfig
    default_tools = ("ground", "crop")
    config: RefcocoConfig

    def required_paths(self) -> list[RequiredPath]:
        cfg = self.config
        if cfg.annotations:
            needed = [RequiredPath("annotation file", (cfg.annotations,), ("annotations",))]
        else:
            needed = [RequiredPath("annotation file", (cfg.refs,), ("dataset", "split_by")),
                      RequiredPath("annotation file", (posixpath.join(cfg.dataset, "instances.json"),),
                                   ("dataset",))]
        if cfg.image_dir:
            needed.append(RequiredPath("media folder", (cfg.image_dir,), ("image_dir",), folder=True))
        return needed

    def records(self) -> list[DatasetRecord]:
        return self._jsonl_records() if self.config.annotations else self._release_records()

    def _release_records(self) -> list[DatasetRecord]:
        cfg, refs = self.config, self.config.refs
        out = []
        for e in read_refer(self.path(refs), self.path(posixpath.join(cfg.dataset, "instances.json"))):
            if cfg.keep_splits and e.split not in cfg.keep_splits:
                continue
            out.append(parse_record({
                "id": f"{e.ref_id}/{e.sent_id}",
                "split": SPLIT_OF[e.split],
                "question": _refcoco_question(e.sentence),
                "answer": _coco_box(e.bbox, refs),
                "answer_type": "box",
                "images": [posixpath.join(cfg.image_dir, e.image)],
                "metadata": {"ref_id": e.ref_id, "sent_id": e.sent_id, "ann_id": e.ann_id,
                             "image_id": e.image_id, "category_id": e.category_id, "category": e.category,
                             "split": e.split, "expression": e.sentence, "raw": e.raw,
                             "bbox_xywh": list(e.bbox)},
            }, where=f"{refs}: ref_id {e.ref_id}"))
        return out

    def _jsonl_records(self) -> list[DatasetRecord]:
        cfg = self.config
        out = []
        for where, line in read_json_lines(self.path(cfg.annotations)):
            number = _line_number(where)
            if not isinstance(line, dict) or "image" not in line or "bbox" not in line:
                raise InvalidConfigError(
                    f"{where}: expected an object with 'image', 'bbox' and an expression"
                )
            original = line.get("split", cfg.default_split)
            if original not in SPLIT_OF:
                raise InvalidConfigError(
                    f"{where}: split must be one of {sorted(SPLIT_OF)}, got {original!r}"
                )
            if cfg.keep_splits and original not in cfg.keep_splits:
                continue
            sentences = _sentences(line, where)
            answer = _coco_box(line["bbox"], where)
            image = (
                posixpath.join(cfg.image_dir, line["image"])
                if isinstance(line["image"], str)
                else line["image"]
            )
            extra = {
                k: v for k, v in line.items() if k not in ("image", "bbox", "expression", "sent", "sentences")
            }
            for k, sentence in enumerate(sentences):
                out.append(
                    parse_record(
                        {
                            "id": f"{number}" if len(sentences) == 1 else f"{number}.{k}",
                            "split": SPLIT_OF[original],
                            "question": _refcoco_question(sentence),
                            "answer": answer,
                            "answer_type": "box",
                            "images": [image],
                            "metadata": {
                                **extra,
                                "split": original,
                                "expression": sentence,
                                "bbox_xywh": line["bbox"],
                            },
                        },
                        where=where,
                    )
                )
        return out


# ---------------------------------------------------------------- Charades-STA


@dataclass(frozen=True)
class CharadesStaConfig(DatasetConfig):
    """Charades-STA (see the module docstring)."""

    annotations: str = "charades_sta_{split}.txt"
    """Annotation file per split, relative to ``root``; ``{split}`` becomes train, val and test (missing files
    are skipped: Charades-STA has train and test)."""
    video_dir: str = "Charades_v1_480"
    """Folder of the videos, relative to ``root``: the official ``Charades_v1_480.zip`` (480p mp4s) unpacks
    to ``Charades_v1_480/``."""
    video_ext: str = ".mp4"
    """File name extension of the videos."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if "{split}" not in self.annotations:
            raise InvalidConfigError(f"annotations must contain '{{split}}', got {self.annotations!r}")


class CharadesStaTask(_LocalTask):
    """When does the described moment happen in the video?"""

    name = "charades_sta"
    config_cls = CharadesStaConfig
    default_tools = ("sample_frames", "get_frame")

    def required_paths(self) -> list[RequiredPath]:
        files = tuple(self.config.annotations.format(split=split) for split in SPLITS)
        return [RequiredPath("annotation file", files, ("annotations",)),
                RequiredPath("media folder", (self.config.video_dir,), ("video_dir",), folder=True)]

    def records(self) -> list[DatasetRecord]:
        cfg = self.config
        out: list[DatasetRecord] = []
        files = [cfg.annotations.format(split=split) for split in SPLITS]
        for split, relative in zip(SPLITS, files):
            path = self.path(relative)
            if os.path.isfile(path):
                out += self._read(path, split)
        if not out:
            raise InvalidConfigError(f"charades_sta: no annotation lines found under {self.root()}; expected "
                                     f"one of {files}")
        return out

    def _read(self, path: str, split: str) -> list[DatasetRecord]:
        cfg = self.config
        out = []
        for where, text in read_text_lines(path):
            head, sep, sentence = text.partition("##")
            fields, sentence = head.split(), sentence.strip()
            try:
                if not sep or len(fields) != 3 or not sentence:
                    raise ValueError
                start, end = float(fields[1]), float(fields[2])
            except ValueError:
                raise InvalidConfigError(
                    f"{where}: expected 'VIDEOID START END##sentence', got {text!r}"
                ) from None
            video = posixpath.join(cfg.video_dir, fields[0] + cfg.video_ext)
            out.append(parse_record({
                "id": f"{split}/{_line_number(where)}", "split": split, "answer_type": "interval",
                "video": video, "question": f'When does this happen in the video: "{sentence}"?',
                "answer": f"[{start:.2f}, {end:.2f}]",
                "metadata": {"video_id": fields[0], "sentence": sentence, "start_s": start, "end_s": end},
            }, where=where))
        return out


register_task(VgymJsonlTask)
register_task(ChartqaTask)
register_task(VstarTask)
register_task(RefcocoTask)
register_task(CharadesStaTask)
