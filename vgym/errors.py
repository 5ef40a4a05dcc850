"""The vgym exception hierarchy.

Contents: :class:`VgymError` (base), :class:`UnknownNameError`, :class:`InvalidConfigError`,
:class:`ToolError`, :class:`MediaError` (an ``InvalidConfigError``), :class:`ModelFolderError` and
:class:`DatasetLayoutError` (each an ``InvalidConfigError`` and a ``FileNotFoundError``).

Bugs in vgym raise ordinary Python exceptions. Bad *model actions* (a malformed tool call, a box outside the
image) are episode events, not exceptions: tools raise :class:`ToolError` and the env turns it into an error
observation, so :meth:`vgym.env.VisualToolEnv.step` never raises on model output. A media file that is
missing, empty, not an image, truncated, corrupt or too large raises :class:`MediaError`, which marks a fault
of *one record's data* rather than of the configuration: :func:`vgym.rollout.loop.rollout` turns it into a
failed episode (reward 0, ``truncated_reason`` naming the error and the file) and plays the rest of the batch.
"""

from __future__ import annotations

__all__ = ["VgymError", "UnknownNameError", "InvalidConfigError", "ToolError", "MediaError",
           "ModelFolderError", "DatasetLayoutError"]


class VgymError(Exception):
    """Base class of every error vgym raises on purpose."""


class UnknownNameError(VgymError, KeyError):
    """A registry lookup named something that is not registered; the message lists valid names."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class InvalidConfigError(VgymError, ValueError):
    """A config value (or combination of values) is invalid; the message names the value and the fix."""


class ToolError(VgymError):
    """A tool was called with arguments it cannot serve.

    The message is written for the *model*: it says what was wrong, the value received, and what a valid call
    looks like. The env shows it to the policy as the tool's observation.
    """


class MediaError(InvalidConfigError):
    """A record's media file (image or video) cannot be used: missing, empty, not a known format, truncated,
    corrupt, too large, or without an RGB meaning. The message names the file.

    It is an :class:`InvalidConfigError`, so ``except InvalidConfigError`` still catches it; the
    subclass lets a rollout tell one bad record (skip the episode, keep the batch) from a bad configuration
    (stop). Pickles with its attributes (Ray workers may raise it).

    Attributes:
        path: the file at fault, or None when unknown.
        sample_id: the id of the sample that needed it (``"<task>/<record id>"``), set by
            :meth:`vgym.data.dataset_task.DatasetTask.sample`; None when raised outside a task.
    """

    def __init__(self, message: str, *, path: str | None = None, sample_id: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.sample_id = sample_id


class ModelFolderError(InvalidConfigError, FileNotFoundError):
    """A model folder (a local checkpoint given as ``hf:DIR``, a recipe's ``model``, a ``checkpoint-<step>``)
    cannot be loaded: it is missing, lacks a file a model needs (config, weights, tokenizer, image processor,
    chat template), or points (a LoRA adapter) to a base that is not a local folder. The message names the
    folder and what is missing; vgym never looks for the files online.

    A ``FileNotFoundError`` too, so code that caught a missing checkpoint folder as one still does.
    """


class DatasetLayoutError(InvalidConfigError, FileNotFoundError):
    """A dataset's root folder, annotation file or media folder is missing, raised when the env is made
    (:class:`vgym.data.dataset_task.DatasetTask`), so a wrong path stops the run before any episode instead of
    failing every ``reset``. The message names which one is missing, the path, and the config field that
    sets it.

    Pickles with its attributes, as :class:`MediaError` does.

    Attributes:
        path: the missing path (absolute).
        what: which part of the layout it is: ``"dataset root"``, ``"annotation file"`` or ``"media folder"``.
    """

    def __init__(self, message: str, *, path: str = "", what: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.what = what
