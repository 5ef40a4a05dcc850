"""The JSON schema a model sees for a tool, built from the tool function's signature and Google-style
docstring.

Contents: :func:`function_schema`.

The output is the chat-template "function" format that ``transformers.utils.get_json_schema`` produces (the
tests compare the two on every built-in tool):
``{"type": "function", "function": {"name", "description", "parameters": {"type": "object",
"properties": {...}, "required": [...]}}}``.
vgym builds it itself for two reasons: the prompt a model sees must not change with the installed transformers
version (its docstring parser has changed between releases), and building it must not import a model library
(transformers imports torch to map hints).

Supported hints: ``int``, ``float``, ``str``, ``bool``, ``None``, ``Any``, ``list[X]``, ``tuple[X, Y, ...]``,
``dict[str, X]``, unions and ``X | None`` (``"nullable": true``), ``Literal[...]`` and ``Enum`` classes (an
``"enum"``). A description may end with ``(choices: [...])`` (a JSON list), which becomes the argument's
``"enum"``.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["function_schema"]

_SCALARS: dict[Any, str] = {
    int: "integer",
    float: "number",
    str: "string",
    bool: "boolean",
    type(None): "null",
}
_CONTAINERS: dict[Any, str] = {list: "array", tuple: "array", dict: "object"}
_SECTION = re.compile(r"^\s*(Args|Returns|Raises):\s*$")
_ARG = re.compile(r"^(\w+)(?:[ \t]*\([^()\n]*\))?:\s*(.*)$")
_CHOICES = re.compile(r"\(choices:\s*(.*?)\)\s*$", re.IGNORECASE)


def _enum_of(values: list[Any], hint: Any) -> dict[str, Any]:
    """An ``"enum"`` schema of scalar ``values``; ``"type"`` lists each JSON type once, in order of
    appearance."""
    if not values or any(type(v) not in _SCALARS for v in values):
        raise TypeError(f"{hint!r}: enum values must be a non-empty set of int, float, str, bool or None")
    kinds = list(dict.fromkeys(_SCALARS[type(v)] for v in values))
    return {"type": kinds[0] if len(kinds) == 1 else kinds, "enum": values}


def _hint_schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of one type hint.

    Raises:
        TypeError: for a hint with no JSON meaning (a custom class, ``tuple[X]``, ``tuple[X, ...]``).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is None:
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return _enum_of([member.value for member in hint], hint)
        if hint is Any:
            return {}
        if hint in _SCALARS:
            return {"type": _SCALARS[hint]}
        if hint in _CONTAINERS:
            return {"type": _CONTAINERS[hint]}
        raise TypeError(
            f"type hint {hint!r} has no JSON schema; use int, float, str, bool, list, tuple, dict, "
            "Literal, an Enum or unions of those"
        )
    if origin is typing.Union or origin is types.UnionType:
        subtypes = [_hint_schema(t) for t in args if t is not type(None)]
        if len(subtypes) == 1:
            out = subtypes[0]
        elif all(s.keys() == {"type"} and isinstance(s["type"], str) for s in subtypes):
            names = sorted({s["type"] for s in subtypes})
            out = {"type": names[0] if len(names) == 1 else names}
        else:
            out = {"anyOf": subtypes}
        if type(None) in args:
            out["nullable"] = True
        return out
    if origin is typing.Literal:
        return _enum_of(list(args), hint)
    if origin is list:
        return {"type": "array", "items": _hint_schema(args[0])} if args else {"type": "array"}
    if origin is tuple:
        if not args:
            return {"type": "array"}
        if len(args) == 1 or ... in args:
            raise TypeError(f"type hint {hint!r}: use list[X] for a variable-length sequence")
        return {"type": "array", "prefixItems": [_hint_schema(t) for t in args]}
    if origin is dict:
        return {
            "type": "object",
            **({"additionalProperties": _hint_schema(args[1])} if len(args) == 2 else {}),
        }
    raise TypeError(f"type hint {hint!r} has no JSON schema")


def _sections(doc: str) -> tuple[str, dict[str, str]]:
    """The description (text before the first section) and the ``Args:`` descriptions of a cleaned docstring.

    An argument starts at a line of the Args block indented no deeper than the block's first argument
    (``name:`` or ``name (type):``); deeper lines continue it. Lines are joined with single spaces.
    """
    lines = doc.splitlines()
    first = next((i for i, line in enumerate(lines) if _SECTION.match(line)), len(lines))
    description = "\n".join(lines[:first]).strip()
    args: dict[str, list[str]] = {}
    if first < len(lines) and lines[first].strip() == "Args:":
        block = []
        for line in lines[first + 1:]:
            if _SECTION.match(line):
                break
            if line.strip():
                block.append(line)
        indent = min((len(line) - len(line.lstrip()) for line in block), default=0)
        current: list[str] | None = None
        for line in block:
            depth, text = len(line) - len(line.lstrip()), line.strip()
            match = _ARG.match(text) if depth <= indent else None
            if match:
                current = args.setdefault(match.group(1), [])
                if match.group(2):
                    current.append(match.group(2))
            elif current is not None:
                current.append(text)
    return description, {name: " ".join(parts) for name, parts in args.items()}


def function_schema(
    fn: Callable[..., Any], name: str, parameters: Sequence[inspect.Parameter]
) -> dict[str, Any]:
    """The tool schema of ``fn`` restricted to ``parameters`` (the model-facing ones).

    Args:
        fn: the function; its docstring gives the description and one ``Args:`` line per parameter.
        name: the tool's name in the schema.
        parameters: the parameters the model fills, in order (each needs a type hint and a description).

    Returns:
        ``{"type": "function", "function": {"name", "description", "parameters"}}``.

    Raises:
        TypeError: for a missing docstring, a parameter without a type hint or description, or a hint without
            a JSON schema.
    """
    doc = inspect.getdoc(fn)
    if not doc:
        raise TypeError(f"tool {name!r} needs a docstring: the model reads its description and arguments")
    description, documented = _sections(doc.strip())
    hints = typing.get_type_hints(fn)
    properties: dict[str, Any] = {}
    required = []
    for param in parameters:
        if param.name not in hints:
            raise TypeError(f"tool {name!r}: argument {param.name!r} needs a type hint")
        if param.name not in documented:
            raise TypeError(
                f"tool {name!r}: the docstring's Args section has no description of {param.name!r}"
            )
        schema = _hint_schema(hints[param.name])
        text = documented[param.name]
        choices = _CHOICES.search(text)
        if choices:
            schema["enum"] = [c.strip() if isinstance(c, str) else c for c in json.loads(choices.group(1))]
            text = text[: choices.start()].strip()
        schema["description"] = text
        properties[param.name] = schema
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    body: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        body["required"] = required
    return {"type": "function", "function": {"name": name, "description": description, "parameters": body}}
