"""vgym.tool_schema builds the schema the model sees exactly as transformers' ``get_json_schema`` does on this
transformers version — for every built-in tool, the README's example and hints of every supported kind — and
refuses what has no JSON meaning."""

from __future__ import annotations

import enum
import inspect
import typing
from typing import Any, Literal

import pytest
from transformers.utils import get_json_schema

from vgym.catalog import BUILTIN_TOOLS
from vgym.tool_schema import function_schema
from vgym.tooling import TOOLS, ToolContext, ToolResult


def _reference(fn: Any, name: str) -> dict[str, Any]:
    """``get_json_schema`` of ``fn`` without its first (context) parameter."""
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    shown = list(signature.parameters.values())[1:]

    def shim() -> None:
        return None

    shim.__signature__ = signature.replace(parameters=shown)  # type: ignore[attr-defined]
    shim.__annotations__ = {p.name: hints[p.name] for p in shown}
    shim.__doc__, shim.__name__ = fn.__doc__, name
    return get_json_schema(shim)


def _ours(fn: Any, name: str) -> dict[str, Any]:
    return function_schema(fn, name, list(inspect.signature(fn).parameters.values())[1:])


@pytest.mark.parametrize("name", sorted({n for n, _ in BUILTIN_TOOLS}))
def test_every_builtin_tool_gets_transformers_schema(name: str) -> None:
    tool = TOOLS.get(name)
    assert tool.schema == _reference(tool.fn, name)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


def every_kind(ctx: ToolContext, a: int, b: float, c: str, d: bool, e: list[float], f: list[list[int]],
               g: tuple[int, str], h: dict[str, float], i: int | None = None, j: float | str = 1.0,
               k: Literal["x", "y"] = "x", m: Colour = Colour.RED, n: Any = None, o: list[int] | None = None,
               p: str = "tea") -> ToolResult:
    """A tool whose arguments cover every supported hint.

    It has a second paragraph, which the description keeps.

    Args:
        a: An int.
        b: A float whose description
            runs over two lines.
        c: A string.
        d: A flag.
        e (list): A list of floats, with its type in parentheses.
        f: Nested lists.
        g: A pair.
        h: A mapping.
        i: Optional int.
        j: A union of basic types.
        k: A literal.
        m: An enum.
        n: Anything.
        o: An optional list.
        p: A drink (choices: ["tea", "coffee"])

    Returns:
        Nothing useful.
    """
    return ToolResult()


def test_every_supported_hint_matches_transformers() -> None:
    assert _ours(every_kind, "every_kind") == _reference(every_kind, "every_kind")


def no_doc(ctx: ToolContext, a: int) -> ToolResult:
    return ToolResult()


def undocumented_arg(ctx: ToolContext, a: int, b: int) -> ToolResult:
    """Two arguments, one described.

    Args:
        a: Described.
    """
    return ToolResult()


class Custom:
    pass


def custom_hint(ctx: ToolContext, a: Custom) -> ToolResult:
    """A custom class.

    Args:
        a: Has no JSON form.
    """
    return ToolResult()


@pytest.mark.parametrize("fn, message", [(no_doc, "needs a docstring"),
                                         (undocumented_arg, "no description of 'b'"),
                                         (custom_hint, "has no JSON schema")])
def test_what_has_no_schema_is_refused(fn: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        _ours(fn, fn.__name__)
