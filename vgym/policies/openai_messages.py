"""How a vgym chat and a model's reply travel over the OpenAI chat-completions API, in the text form and in
the native tool-calling form.

Contents: :class:`NativeTurn`, :func:`encode_png_data_url`, :func:`to_chat_messages`,
:func:`to_native_messages`, :func:`action_text`.

A vgym chat is what the env wrote and what the model answered: a system and a user message, then model turns
(assistant text, tool calls written as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``) and the
env's replies (user messages holding ``<tool_response>`` text and the tools' images). Images are
``{"type": "image"}`` items; the pixels come separately, in order.

- **Text form** (:func:`to_chat_messages`): every message as it is, images as PNG ``data:`` URLs. What a model
  trained on vgym's text protocol saw in training.
- **Native form** (:func:`to_native_messages`): a model turn that the server returned as
  ``message.tool_calls`` goes back as that assistant message (its ``tool_calls``, with the server's ids), and
  the env's reply to it as one ``tool`` message per call, carrying the call's ``tool_call_id``. The env
  writes one reply per turn: it goes whole into the first call's message (the others' are empty). Its images
  go into that message as content parts (``tool_images="tool"``), or, for servers that take only text in tool
  messages, into a user message right after (``tool_images="user"``). Every other turn stays in the text
  form.

Either way the env receives the same action: :func:`action_text` writes a reply's tool calls back as the text
protocol's ``<tool_call>`` blocks after the reply's content, so trajectories and rewards do not depend on
whether the server parsed the calls.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vgym.protocol import ActionProtocol

__all__ = ["NativeTurn", "encode_png_data_url", "to_chat_messages", "to_native_messages", "action_text",
           "TOOL_IMAGE_MODES"]

TOOL_IMAGE_MODES = ("tool", "user")
"""Where the native form puts a tool reply's images: in its ``tool`` message, or in a user message after."""


@dataclass(frozen=True)
class NativeTurn:
    """A model turn the server returned with tool calls, kept to send it back as the server wrote it.

    Attributes:
        content: the reply's ``message.content`` ("" when it had none).
        tool_calls: the reply's ``message.tool_calls``, as returned (``id``, ``type``, ``function`` with
            ``name`` and the ``arguments`` JSON string).
    """

    content: str
    tool_calls: tuple[dict[str, Any], ...]


def encode_png_data_url(image: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URL of an RGB uint8 (H, W, 3) image (PNG: lossless, so pixels arrive
    exact)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class _Images:
    """Hands out the chat's images in order, as ``image_url`` parts."""

    def __init__(self, images: Sequence[np.ndarray]) -> None:
        self.images, self.used = images, 0

    def part(self) -> dict[str, Any]:
        if self.used >= len(self.images):
            raise ValueError(f"the chat has more image items than the {len(self.images)} images given")
        self.used += 1
        return {"type": "image_url", "image_url": {"url": encode_png_data_url(self.images[self.used - 1])}}

    def check_all_used(self) -> None:
        if self.used != len(self.images):
            raise ValueError(f"the chat has {self.used} image items but {len(self.images)} images were given")


def _parts(content: list[dict[str, Any]], images: _Images) -> list[dict[str, Any]]:
    """vgym content items -> chat-completions content parts (``text`` kept, ``image`` -> ``image_url``)."""
    parts: list[dict[str, Any]] = []
    for item in content:
        if item["type"] == "text":
            parts.append({"type": "text", "text": item["text"]})
        elif item["type"] == "image":
            parts.append(images.part())
        else:
            raise ValueError(f"unknown content item type {item['type']!r}; expected 'text' or 'image'")
    return parts


def _plain(message: dict[str, Any], images: _Images) -> dict[str, Any]:
    content = message["content"]
    if isinstance(content, str):
        return {"role": message["role"], "content": content}
    return {"role": message["role"], "content": _parts(content, images)}


def to_chat_messages(
    messages: Sequence[dict[str, Any]], images: Sequence[np.ndarray]
) -> list[dict[str, Any]]:
    """Convert a vgym chat to chat-completions messages in the text form.

    Args:
        messages: vgym messages (``content`` a string or a list of ``{"type": "text", "text": ...}`` and
            ``{"type": "image"}`` items).
        images: the images shown so far, one per ``{"type": "image"}`` item, in order.

    Returns:
        Messages with the same roles, text parts kept and the i-th image item replaced by
        ``{"type": "image_url", "image_url": {"url": <PNG data URL of images[i]>}}``.

    Raises:
        ValueError: if the number of image items differs from ``len(images)``, or an item has an unknown type
            (a rollout bug).
    """
    given = _Images(images)
    out = [_plain(message, given) for message in messages]
    given.check_all_used()
    return out


def to_native_messages(
    messages: Sequence[dict[str, Any]],
    images: Sequence[np.ndarray],
    native: Callable[[int, str], NativeTurn | None],
    *,
    tool_images: str = "tool",
) -> list[dict[str, Any]]:
    """Convert a vgym chat to chat-completions messages in the native tool-calling form.

    Args:
        messages: vgym messages, as for :func:`to_chat_messages`.
        images: the images shown so far, in order.
        native: ``native(turn, text)`` is the :class:`NativeTurn` the server returned for the model turn
            ``turn`` (0-based, counting assistant messages) whose action text was ``text``, or None when that
            turn came back as text (it then goes back as text, and the env's reply to it as a user message).
        tool_images: ``"tool"`` puts a tool reply's images into its ``tool`` message as ``image_url`` parts;
            ``"user"`` sends the tool message as text and the images in a user message right after it.

    Returns:
        The messages. A native turn becomes ``{"role": "assistant", "content": <its content or None>,
        "tool_calls": [...]}``, and the env message after it one ``{"role": "tool", "tool_call_id": ...,
        "content": ...}`` per call (the env's reply in the first, "" in the others) — plus, with
        ``tool_images="user"`` and images, ``{"role": "user", "content": [<image parts>]}``.

    Raises:
        ValueError: for an unknown ``tool_images``, an image count mismatch or an unknown item type (a
            rollout bug).
    """
    if tool_images not in TOOL_IMAGE_MODES:
        raise ValueError(f"tool_images must be one of {TOOL_IMAGE_MODES}, got {tool_images!r}")
    given = _Images(images)
    out: list[dict[str, Any]] = []
    turn, pending = 0, None  # pending: the native turn whose reply comes next
    for message in messages:
        if message["role"] == "assistant":
            text = _text_of(message)
            pending = native(turn, text)
            turn += 1
            if pending is None:
                out.append(_plain(message, given))
            else:
                out.append({"role": "assistant", "content": pending.content or None,
                            "tool_calls": [dict(call) for call in pending.tool_calls]})
            continue
        if pending is None:
            out.append(_plain(message, given))
            continue
        ids = [str(call["id"]) for call in pending.tool_calls]
        pending = None
        content = message["content"]
        items = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if tool_images == "tool":
            reply: str | list[dict[str, Any]] = _parts(items, given)
            moved: list[dict[str, Any]] = []
        else:
            reply = "".join(item["text"] for item in items if item["type"] == "text")
            moved = [given.part() for item in items if item["type"] == "image"]
        out.append({"role": "tool", "tool_call_id": ids[0], "content": reply})
        out.extend({"role": "tool", "tool_call_id": i, "content": ""} for i in ids[1:])
        if moved:
            out.append({"role": "user", "content": moved})
    given.check_all_used()
    return out


def _text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(item["text"] for item in content if item["type"] == "text")


def action_text(content: str, tool_calls: Sequence[dict[str, Any]], protocol: ActionProtocol) -> str:
    """The env action of a reply: its content, then each tool call written in the text protocol.

    Args:
        content: the reply's ``message.content`` ("" for none).
        tool_calls: the reply's ``message.tool_calls`` (``{"function": {"name", "arguments"}}``, the
            arguments a JSON string or, from some servers, an object).
        protocol: writes the calls (:meth:`~vgym.protocol.ActionProtocol.format_tool_call`).

    Returns:
        ``content`` and the calls joined by newlines (just the calls when ``content`` is empty), so a reply
        whose model wrote only ``protocol``'s call comes back as exactly that text. Arguments that are not a
        JSON object are passed on as the raw string, which the env reports to the model as a format error.

    Raises:
        TypeError: for a tool call without ``function.name`` (a reply that is not a chat completion).
    """
    pieces = [content] if content else []
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise TypeError(f"a tool call without function.name: {json.dumps(call)[:200]}")
        arguments: Any = function.get("arguments", {})  # type: ignore[union-attr]
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except (ValueError, RecursionError):
                pass  # kept as the string: the env tells the model its arguments are not an object
        pieces.append(protocol.format_tool_call(name, arguments))
    return "\n".join(pieces)
