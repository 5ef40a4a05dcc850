"""Tool contract and registry: typed functions whose JSON schema comes from their signature and docstring.

Contents: :class:`ToolContext`, :class:`ToolResult`, :class:`Backend`, :class:`Tool`, :data:`TOOLS`,
:func:`fit_to_budget`.

A tool is a plain function ``fn(ctx: ToolContext, **arguments) -> ToolResult`` with type hints and a
Google-style docstring describing every model-facing argument. Its schema is produced by
:func:`vgym.tool_schema.function_schema` (the format of ``transformers.utils.get_json_schema``) with the
``ctx`` parameter hidden. Invalid arguments raise
:class:`vgym.errors.ToolError` with a message for the model. Register at the bottom of the tool's file::

    TOOLS.register("crop", Tool(crop))
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from vgym.errors import ToolError, UnknownNameError
from vgym.registry import Registry
from vgym.tool_schema import function_schema

__all__ = ["ToolContext", "ToolResult", "Backend", "Tool", "TOOLS", "fit_to_budget"]


@dataclass
class ToolContext:
    """What a tool may read during one episode.

    Attributes:
        images: every image of the episode so far, addressable by index: first the sample's own images at full
            resolution, then each image a tool produced, at the resolution the tool produced it.
        metadata: the sample's scene metadata (ground truth), for oracle backends only.
        rng: the episode's seeded generator; tools draw all randomness from it.
        max_pixels: the env's image budget (H·W) for images shown to the model.
        video: path of the sample's video file, or None.
        arrays: the sample's ground-truth arrays (depth, masks, stereo right view), for oracle/classical
            backends.
        resource: what the selected backend's ``loader`` built (e.g. a model), or None; set by the runtime.
        options: the backend options from the env config (e.g. ``{"model": "/path"}``); set by the runtime.
    """

    images: list[np.ndarray]
    metadata: Mapping[str, Any]
    rng: np.random.Generator
    max_pixels: int
    video: str | None = None
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    resource: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ToolResult:
    """A tool's output: text for the model and zero or more new images (RGB uint8, any size).

    The env appends the images to the episode (they get the next indices) and shows them resized to the
    budget.
    """

    text: str = ""
    images: list[np.ndarray] = field(default_factory=list)


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "number": (int, float),
    "integer": (int,),
    "string": (str,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


@dataclass(frozen=True)
class Backend:
    """One implementation of a tool.

    Attributes:
        fn: ``fn(ctx, **arguments) -> ToolResult`` with the tool's model-facing arguments.
        loader: builds the backend's heavy resource (a model, a detector) from the env's backend options;
            called once per process per distinct options and handed to ``fn`` as ``ctx.resource``. None:
            nothing to load.
        device: where it runs ("cpu", "cuda").
        nondeterministic: True when repeated calls may differ (model backends on GPU); such results are worth
            caching for exact replays.
    """

    fn: Callable[..., ToolResult]
    loader: Callable[[Mapping[str, Any]], Any] | None = None
    device: str = "cpu"
    nondeterministic: bool = False


class Tool:
    """A registered tool: its name, JSON schema and one or more backends.

    Calling :meth:`__call__` validates the arguments against the schema (unknown, missing or wrongly typed
    arguments, and non-finite numbers, raise :class:`ToolError`) before running the selected backend. Caching,
    timeouts and process isolation live in :mod:`vgym.tool_runtime`.
    """

    def __init__(
        self,
        fn: Callable[..., ToolResult],
        *,
        name: str | None = None,
        backends: Mapping[str, Backend] | None = None,
        default_backend: str | None = None,
        version: int = 0,
    ) -> None:
        """Args:
        fn: defines the model-facing signature and docstring (``fn(ctx, **arguments)``; the first parameter is
            the context, hidden from the schema; every other parameter needs a type hint and a docstring
            line). Without ``backends`` it is also the implementation, as backend ``"default"``.
        name: the name the model calls; defaults to ``fn.__name__``.
        backends: implementations by name (e.g. ``oracle``, ``opencv``, ``hf``).
        default_backend: used when the env config names none; defaults to the first of ``backends``.
        version: bump when results change meaning; part of the cache key.

        Raises:
            ValueError: if ``default_backend`` is not one of ``backends``.
        """
        self.fn = fn
        self.name = name or fn.__name__
        self.backends: dict[str, Backend] = dict(backends) if backends else {"default": Backend(fn)}
        self.default_backend = default_backend or next(iter(self.backends))
        if self.default_backend not in self.backends:
            raise ValueError(f"default_backend {self.default_backend!r} not in {sorted(self.backends)}")
        self.version = version
        self.schema = _schema_without_context(fn, self.name)
        params = self.schema["function"]["parameters"]
        self._properties: dict[str, dict[str, Any]] = params.get("properties", {})
        self._required: list[str] = list(params.get("required", []))

    @property
    def description(self) -> str:
        """The docstring's text before its ``Args:`` section, as shown to the model."""
        return str(self.schema["function"]["description"])

    def validate(self, arguments: Mapping[str, Any]) -> None:
        """Check ``arguments`` against the schema.

        Raises:
            ToolError: naming the unknown/missing argument, the type mismatch or the non-finite ``number``
                (NaN, infinity, an int too large for a float), and the expected signature.
        """
        usage = f"Expected arguments: {self.signature_hint()}."
        unknown = sorted(set(arguments) - set(self._properties))
        if unknown:
            raise ToolError(f"{self.name}: unknown argument(s) {unknown}. {usage}")
        missing = [a for a in self._required if a not in arguments]
        if missing:
            raise ToolError(f"{self.name}: missing required argument(s) {missing}. {usage}")
        for arg, value in arguments.items():
            if value is None and (self._properties[arg].get("nullable") or arg not in self._required):
                continue  # an explicit null for an optional argument means "not given"
            want = self._properties[arg].get("type")
            types = _JSON_TYPES.get(want) if isinstance(want, str) else None
            # bool is an int subclass in Python but not a JSON number.
            if types and (not isinstance(value, types) or (isinstance(value, bool) and want != "boolean")):
                raise ToolError(
                    f"{self.name}: argument {arg!r} must be a JSON {want}, got {_short(value)}. {usage}"
                )
            # Python's json reads NaN, Infinity, 1e999 and 10**400
            if want == "number" and not _finite(value):
                raise ToolError(
                    f"{self.name}: argument {arg!r} must be a finite number, got {_short(value)}. {usage}"
                )

    def signature_hint(self) -> str:
        """A compact ``name: type`` listing of the arguments, for error messages."""
        parts = [
            f"{a}: {p.get('type', 'any')}{'' if a in self._required else ' (optional)'}"
            for a, p in self._properties.items()
        ]
        return ", ".join(parts)

    def backend(self, name: str | None = None) -> Backend:
        """The backend called ``name`` (None: the default).

        Raises:
            UnknownNameError: listing this tool's backends.
        """
        name = name or self.default_backend
        if name not in self.backends:
            close = difflib.get_close_matches(name, list(self.backends), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"tool {self.name!r} has no backend {name!r}.{hint} Backends: {sorted(self.backends)}"
            )
        return self.backends[name]

    def __call__(
        self, ctx: ToolContext, arguments: Mapping[str, Any], backend: str | None = None
    ) -> ToolResult:
        """Validate ``arguments`` and run one backend in this thread (no cache, no timeout).

        Raises:
            ToolError: for invalid arguments (from validation or from the backend itself).
            UnknownNameError: for an unknown backend name.
        """
        chosen = self.backend(backend)
        self.validate(arguments)
        return chosen.fn(ctx, **arguments)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def _finite(value: int | float) -> bool:
    """Whether ``value`` is a finite float, or an int that converts to one (``10**400`` does not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _short(value: Any, limit: int = 100) -> str:
    """``repr(value)``, cut to ``limit`` characters: a model's argument may be a megabyte long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _schema_without_context(fn: Callable[..., Any], name: str) -> dict[str, Any]:
    """The model-facing JSON schema of ``fn``: :func:`~vgym.tool_schema.function_schema` without the
    context."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        raise TypeError(f"tool {name!r} must take the ToolContext as its first parameter")
    return function_schema(fn, name, params[1:])


def fit_to_budget(image: np.ndarray, max_pixels: int, *, upscale: bool = False) -> np.ndarray:
    """Resize ``image`` (H, W, 3) uint8 to the largest size with H·W ≤ ``max_pixels``, keeping the aspect
    ratio.

    Args:
        image: RGB uint8 (H, W, 3).
        max_pixels: the budget.
        upscale: also enlarge images smaller than the budget (a zoom, used for tool outputs such as crops);
            when False, images within budget are returned unchanged (the same object).

    Returns:
        (H', W', 3) uint8 with H'·W' ≤ max_pixels and H', W' ≥ 1. Downscaling uses area interpolation, so a
        small object blends into its surroundings as in any real resize; upscaling is bilinear.
    """
    h, w = image.shape[:2]
    if h * w <= max_pixels and not upscale:
        return image
    scale = (max_pixels / (h * w)) ** 0.5
    new_h, new_w = max(1, int(h * scale)), max(1, int(w * scale))
    while new_h * new_w > max_pixels:  # floor rounding can still overshoot by one row/column
        if new_h >= new_w:
            new_h -= 1
        else:
            new_w -= 1
    if (new_h, new_w) == (h, w):
        return image
    interpolation = cv2.INTER_AREA if new_h * new_w < h * w else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation)


TOOLS: Registry[Tool] = Registry("tool", defined_by=lambda tool: tool.fn)
"""Every tool by name; a tool's origin (for a second import of its file under another module name) is its
function."""
