"""The action format: how a model's turn is parsed into tool calls or an answer, and how prompts describe
tools.

Contents: :class:`ToolCall`, :class:`ParsedAction`, :class:`ActionProtocol`, :class:`HermesProtocol`.

The default convention is Hermes/Qwen's: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` for a
tool call and ``<answer>...</answer>`` for the final answer. Parsing never raises: every problem becomes a
message in :attr:`ParsedAction.errors`, written for the model.

Limits: a tool call's JSON body may hold at most :data:`MAX_CALL_CHARS` characters and its arguments may nest
at most :data:`MAX_ARGUMENT_DEPTH` levels. Longer or deeper calls are format errors, so a malformed turn can
neither stall the parser nor put megabytes or recursion-deep structures into ``info`` and saved trajectories.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ToolCall", "ParsedAction", "ActionProtocol", "HermesProtocol", "MAX_CALL_CHARS",
           "MAX_ARGUMENT_DEPTH"]

MAX_CALL_CHARS = 2**17
"""Longest tool-call body (the text between the tags), in characters: 131,072, ~100x the longest real call."""

MAX_ARGUMENT_DEPTH = 6
"""Deepest nesting of a call's ``arguments`` object (the object itself is level 1; ``{"points": [[x, y]]}`` is
3). Deeper values would overflow the recursion of ``copy``/``dataclasses.asdict``/``json.dumps``
downstream."""


@dataclass(frozen=True)
class ToolCall:
    """One parsed tool call."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ParsedAction:
    """What one model turn asked for.

    Attributes:
        tool_calls: well-formed calls, in order (their names and arguments are not validated yet).
        answer: the text inside the answer tags, stripped, or None.
        errors: format problems, one message each, addressed to the model. Non-empty means the turn was
            (partly) malformed; the env shows these messages and counts a format error.
    """

    tool_calls: tuple[ToolCall, ...] = ()
    answer: str | None = None
    errors: tuple[str, ...] = field(default_factory=tuple)


class ActionProtocol(Protocol):
    """A swappable action convention."""

    def parse(self, text: str) -> ParsedAction:
        """Parse one model turn; never raises."""
        ...

    def format_tool_call(self, name: str, arguments: dict[str, Any]) -> str:
        """The text a model writes to call ``name`` with ``arguments``."""
        ...

    def format_answer(self, answer: str) -> str:
        """The text a model writes to give its final answer."""
        ...

    def format_tool_response(self, text: str) -> str:
        """Wrap a tool's text output for the observation."""
        ...

    def system_prompt(self, tool_schemas: Sequence[dict[str, Any]]) -> str:
        """Instructions describing the tools (or, with none, how to answer)."""
        ...


def _between(text: str, start: str, end: str) -> list[str]:
    """The texts between each ``start`` tag and the next ``end`` tag after it, left to right (what the regex
    ``start(.*?)end`` with DOTALL finds), in linear time: the regex rescans the rest of the text from every
    unclosed ``start``, and a turn of 16,000 ``<tool_call>`` tags (176 KB) took 71 s to parse."""
    found: list[str] = []
    pos = 0
    while (first := text.find(start, pos)) >= 0:
        last = text.find(end, first + len(start))
        if last < 0:
            break  # no end after this start, so none after any later start either
        found.append(text[first + len(start) : last])
        pos = last + len(end)
    return found


class HermesProtocol:
    """``<tool_call>{json}</tool_call>`` / ``<answer>…</answer>``, the convention Qwen chat templates
    render."""

    def __init__(self, max_calls_per_turn: int = 1) -> None:
        """Args:
        max_calls_per_turn: calls beyond this number in one turn are ignored with an error message.
        """
        self.max_calls_per_turn = max_calls_per_turn

    def parse(self, text: str) -> ParsedAction:
        """Parse ``text``.

        Returns:
            A :class:`ParsedAction`. An answer, when present, ends the episode; tool calls in the same turn
                are
            then ignored and reported as a format error.
        """
        errors: list[str] = []
        answers = _between(text, "<answer>", "</answer>")
        if len(answers) > 1:
            errors.append("Give exactly one <answer>...</answer>; the first one was used.")
        answer = answers[0].strip() if answers else None
        if answer is None and "<answer>" in text:
            errors.append("Unclosed <answer> tag: write <answer>your answer</answer>.")
        calls: list[ToolCall] = []
        bodies = _between(text, "<tool_call>", "</tool_call>")
        if text.count("<tool_call>") != len(bodies) or text.count("</tool_call>") != len(bodies):
            errors.append(
                'Unbalanced <tool_call> tags: write <tool_call>{"name": ..., "arguments": {...}}</tool_call>.'
            )
        for body in bodies:
            call, error = self._parse_call(body)
            if error:
                errors.append(error)
            elif call is not None:
                calls.append(call)
        if answer is not None and calls:
            errors.append("A turn holds either tool calls or an answer; the tool calls were ignored.")
            calls = []
        if len(calls) > self.max_calls_per_turn:
            errors.append(
                f"At most {self.max_calls_per_turn} tool call(s) per turn; calls after the first "
                f"{self.max_calls_per_turn} were ignored."
            )
            calls = calls[: self.max_calls_per_turn]
        if answer is None and not calls and not errors:
            errors.append(
                'No tool call or answer found. Call a tool with <tool_call>{"name": ..., "arguments": {...}}'
                "</tool_call> or finish with <answer>...</answer>."
            )
        return ParsedAction(tool_calls=tuple(calls), answer=answer, errors=tuple(errors))

    @staticmethod
    def _parse_call(body: str) -> tuple[ToolCall | None, str | None]:
        if len(body) > MAX_CALL_CHARS:
            return None, (f"Tool call is too long: {len(body)} characters, the limit is {MAX_CALL_CHARS}; "
                          f"send short arguments: {body.strip()[:80]!r}.")
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            snippet = body.strip()[:80]
            return None, f"Tool call is not valid JSON ({exc.msg} at character {exc.pos}): {snippet!r}."
        except (ValueError, RecursionError) as exc:  # json's int-digit limit, or brackets nested too deep
            return None, f"Tool call is not valid JSON ({type(exc).__name__}): {body.strip()[:80]!r}."
        if not isinstance(data, dict):
            return (
                None,
                f'Tool call must be a JSON object {{"name": ..., "arguments": {{...}}}}, got '
                f'{type(data).__name__}.',
            )
        name = data.get("name")
        if not isinstance(name, str) or not name:
            return None, 'Tool call needs a "name" string, e.g. {"name": "crop", "arguments": {...}}.'
        arguments = data.get("arguments", {})
        if isinstance(arguments, str):  # some models JSON-encode the arguments twice
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
                return (
                    None,
                    f'"arguments" of {name} must be a JSON object, got the string {arguments[:60]!r}.',
                )
        if not isinstance(arguments, dict):
            return None, f'"arguments" of {name} must be a JSON object, got {type(arguments).__name__}.'
        extra = sorted(set(data) - {"name", "arguments"})
        if extra:
            return None, f'Tool call has unexpected key(s) {extra}; use only "name" and "arguments".'
        if _nesting(arguments) > MAX_ARGUMENT_DEPTH:
            return None, (
                f'"arguments" of {name} are nested too deep: JSON of more than {MAX_ARGUMENT_DEPTH} '
                "levels; arguments are numbers, strings and (lists of) lists of them."
            )
        return ToolCall(name=name, arguments=arguments), None

    def format_tool_call(self, name: str, arguments: dict[str, Any]) -> str:
        # "<" only occurs inside JSON strings; escaping it keeps tag-like argument text from closing the call.
        body = json.dumps({"name": name, "arguments": arguments}).replace("<", "\\u003c")
        return "<tool_call>" + body + "</tool_call>"

    def format_answer(self, answer: str) -> str:
        return f"<answer>{answer}</answer>"

    def format_tool_response(self, text: str) -> str:
        return f"<tool_response>{text}</tool_response>"

    def system_prompt(self, tool_schemas: Sequence[dict[str, Any]]) -> str:
        if not tool_schemas:
            return "Look at the image and answer the question. Reply with <answer>your answer</answer>."
        tools = "\n".join(json.dumps(schema, separators=(",", ":")) for schema in tool_schemas)
        return (
            "You can call tools to look closer at the image. Tools:\n<tools>\n"
            f"{tools}\n</tools>\n"
            'Call a tool with <tool_call>{"name": ..., "arguments": {...}}</tool_call>. '
            "Reply with <answer>your answer</answer> when you know the answer."
        )


def _nesting(value: Any) -> int:
    """How many levels of lists/objects ``value`` has (0 for a scalar), without recursion; stops counting just
    past :data:`MAX_ARGUMENT_DEPTH`."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_ARGUMENT_DEPTH:
                break
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
