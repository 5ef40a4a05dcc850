"""Tool contract and registry: typed functions whose JSON schema comes from their signature and docstring.

Contents: :class:`ToolContext`, :class:`ToolResult`, :class:`Tool`, :data:`TOOLS`, :func:`fit_to_budget`.

A tool is a plain function ``fn(ctx: ToolContext, **arguments) -> ToolResult`` with type hints and a Google-style
docstring describing every model-facing argument. Its schema is produced by
``transformers.utils.get_json_schema`` with the ``ctx`` parameter hidden. Invalid arguments raise
:class:`vgym.errors.ToolError` with a message for the model. Register at the bottom of the tool's file::

    TOOLS.register("crop", Tool(crop))
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from transformers.utils import get_json_schema

from vgym.errors import ToolError
from vgym.registry import Registry

__all__ = ["ToolContext", "ToolResult", "Tool", "TOOLS", "fit_to_budget"]


@dataclass
class ToolContext:
    """What a tool may read during one episode.

    Attributes:
        images: every image of the episode so far, addressable by index: first the sample's own images at full
            resolution, then each image a tool produced, at the resolution the tool produced it.
        metadata: the sample's scene metadata (ground truth), for oracle backends only.
        rng: the episode's seeded generator; tools draw all randomness from it.
        max_pixels: the env's image budget (H·W) for images shown to the model.
    """

    images: list[np.ndarray]
    metadata: Mapping[str, Any]
    rng: np.random.Generator
    max_pixels: int


@dataclass
class ToolResult:
    """A tool's output: text for the model and zero or more new images (RGB uint8, any size).

    The env appends the images to the episode (they get the next indices) and shows them resized to the budget.
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


class Tool:
    """A registered tool: the function, its name and its JSON schema.

    Calling :meth:`__call__` validates the arguments against the schema (unknown, missing or wrongly typed
    arguments raise :class:`ToolError`) before running the function.
    """

    def __init__(self, fn: Callable[..., ToolResult], *, name: str | None = None) -> None:
        """Args:
        fn: ``fn(ctx, **arguments) -> ToolResult``; the first parameter is the context and is hidden from the
            schema; every other parameter needs a type hint and a docstring description.
        name: the name the model calls; defaults to ``fn.__name__``.
        """
        self.fn = fn
        self.name = name or fn.__name__
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
            ToolError: naming the unknown/missing argument or the type mismatch, and the expected signature.
        """
        usage = f"Expected arguments: {self.signature_hint()}."
        unknown = sorted(set(arguments) - set(self._properties))
        if unknown:
            raise ToolError(f"{self.name}: unknown argument(s) {unknown}. {usage}")
        missing = [a for a in self._required if a not in arguments]
        if missing:
            raise ToolError(f"{self.name}: missing required argument(s) {missing}. {usage}")
        for arg, value in arguments.items():
            want = self._properties[arg].get("type")
            types = _JSON_TYPES.get(want) if isinstance(want, str) else None
            # bool is an int subclass in Python but not a JSON number.
            if types and (not isinstance(value, types) or (isinstance(value, bool) and want != "boolean")):
                raise ToolError(f"{self.name}: argument {arg!r} must be a JSON {want}, got {value!r}. {usage}")

    def signature_hint(self) -> str:
        """A compact ``name: type`` listing of the arguments, for error messages."""
        parts = [
            f"{a}: {p.get('type', 'any')}{'' if a in self._required else ' (optional)'}"
            for a, p in self._properties.items()
        ]
        return ", ".join(parts)

    def __call__(self, ctx: ToolContext, arguments: Mapping[str, Any]) -> ToolResult:
        """Validate ``arguments`` and run the tool.

        Raises:
            ToolError: for invalid arguments (from validation or from the tool itself).
        """
        self.validate(arguments)
        return self.fn(ctx, **arguments)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def _schema_without_context(fn: Callable[..., Any], name: str) -> dict[str, Any]:
    """``get_json_schema`` of ``fn`` with its first (context) parameter removed."""
    signature = inspect.signature(fn)
    params = list(signature.parameters.values())
    if not params:
        raise TypeError(f"tool {name!r} must take the ToolContext as its first parameter")
    hints = typing.get_type_hints(fn)
    shown = params[1:]

    def shim() -> None:  # a stand-in whose signature is the model-facing one
        return None

    shim.__signature__ = signature.replace(parameters=shown)  # type: ignore[attr-defined]
    shim.__annotations__ = {p.name: hints[p.name] for p in shown if p.name in hints}
    if "return" in hints:
        shim.__annotations__["return"] = hints["return"]
    shim.__doc__ = fn.__doc__
    shim.__name__ = name
    schema = get_json_schema(shim)
    schema["function"].pop("return", None)
    return schema


def fit_to_budget(image: np.ndarray, max_pixels: int, *, upscale: bool = False) -> np.ndarray:
    """Resize ``image`` (H, W, 3) uint8 to the largest size with H·W ≤ ``max_pixels``, keeping the aspect ratio.

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


TOOLS: Registry[Tool] = Registry("tool")
