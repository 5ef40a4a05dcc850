"""Tests of vgym/policies/openai_messages.py: the text and native chat-completions forms of a vgym chat, and
a reply's tool calls written back as the text protocol's action."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vgym.policies.openai_messages import NativeTurn, action_text, to_chat_messages, to_native_messages
from vgym.protocol import HermesProtocol

CALL = '<tool_call>{"name": "crop", "arguments": {"box": [1, 2, 3, 4]}}</tool_call>'


def _image(value: int, shape: tuple[int, int] = (4, 6)) -> np.ndarray:
    return np.full((*shape, 3), value, np.uint8)


def _pixels(part: dict[str, Any]) -> np.ndarray:
    url = part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def _chat() -> list[dict[str, Any]]:
    """system, question (image 0), a crop turn, the env's reply (image 1), an answer turn."""
    return [
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": CALL}]},
        {"role": "user", "content": [{"type": "image"},
                                     {"type": "text", "text": "<tool_response>r</tool_response>"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<answer>x</answer>"}]},
    ]


def _turn(*ids: str) -> NativeTurn:
    function = {"name": "crop", "arguments": '{"box": [1, 2, 3, 4]}'}
    calls = tuple({"id": i, "type": "function", "function": function} for i in ids)
    return NativeTurn("", calls)


def test_chat_conversion_keeps_roles_text_and_image_order() -> None:
    """Image items become PNG data URLs of the matching image, in order; a count mismatch is a bug and
    raises."""
    red, blue = np.zeros((4, 6, 3), np.uint8), np.zeros((5, 3, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}, {"type": "image"}]},
        {"role": "assistant", "content": "a"},
    ]
    out = to_chat_messages(messages, [red, blue])
    assert [m["role"] for m in out] == ["system", "user", "assistant"]
    assert out[0]["content"] == [{"type": "text", "text": "sys"}] and out[2]["content"] == "a"
    decoded = [_pixels(p) for p in out[1]["content"] if p["type"] == "image_url"]
    assert [d.shape for d in decoded] == [(4, 6, 3), (5, 3, 3)]
    np.testing.assert_array_equal(decoded[0], red)
    np.testing.assert_array_equal(decoded[1], blue)
    with pytest.raises(ValueError, match="2 image items but 3 images"):
        to_chat_messages(messages, [red, blue, red])
    with pytest.raises(ValueError, match="more image items than the 1 images"):
        to_chat_messages(messages, [red])


def test_native_form_sends_the_servers_turn_and_a_tool_message_with_its_id() -> None:
    """The remembered turn goes back with the server's call (and its id); the env's reply becomes a tool
    message with that id, holding the reply's image and text; the later text turn stays text."""
    seen: list[tuple[int, str]] = []

    def native(turn: int, text: str) -> NativeTurn | None:
        seen.append((turn, text))
        return _turn("call-7") if turn == 0 else None

    out = to_native_messages(_chat(), [_image(10), _image(20)], native)
    assert seen == [(0, CALL), (1, "<answer>x</answer>")]
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool", "assistant"]
    call = dict(_turn("call-7").tool_calls[0])
    assert out[2] == {"role": "assistant", "content": None, "tool_calls": [call]}
    assert out[3]["tool_call_id"] == "call-7"
    assert [p["type"] for p in out[3]["content"]] == ["image_url", "text"]
    assert int(_pixels(out[3]["content"][0])[0, 0, 0]) == 20  # the reply's image, not the question's
    assert int(_pixels(out[1]["content"][0])[0, 0, 0]) == 10
    assert out[3]["content"][1]["text"] == "<tool_response>r</tool_response>"
    assert out[4]["content"] == [{"type": "text", "text": "<answer>x</answer>"}]


def test_native_form_can_move_tool_images_into_a_user_message() -> None:
    out = to_native_messages(_chat(), [_image(10), _image(20)], lambda t, _: _turn("a") if t == 0 else None,
                             tool_images="user")
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool", "user", "assistant"]
    assert out[3]["content"] == "<tool_response>r</tool_response>"
    assert [p["type"] for p in out[4]["content"]] == ["image_url"]
    assert int(_pixels(out[4]["content"][0])[0, 0, 0]) == 20
    with pytest.raises(ValueError, match="tool_images"):
        to_native_messages(_chat(), [_image(1), _image(2)], lambda t, _: None, tool_images="inline")


def test_native_form_answers_every_call_of_a_turn() -> None:
    """Two calls in one turn: the env's one reply answers the first, the second gets an empty tool message
    (a server needs a message per call id)."""
    two = _turn("a", "b")
    out = to_native_messages(_chat(), [_image(1), _image(2)], lambda t, _: two if t == 0 else None)
    tools = [m for m in out if m["role"] == "tool"]
    assert [(m["tool_call_id"], bool(m["content"])) for m in tools] == [("a", True), ("b", False)]


def test_turns_the_server_did_not_parse_stay_in_the_text_form() -> None:
    images = [_image(1), _image(2)]
    assert to_native_messages(_chat(), images, lambda t, _: None) == to_chat_messages(_chat(), images)


@pytest.mark.parametrize(
    ("content", "calls", "expected"),
    [
        ("", [{"function": {"name": "crop", "arguments": '{"box": [1, 2, 3, 4]}'}}], CALL),
        ("I will crop.", [{"function": {"name": "crop", "arguments": {"box": [1, 2, 3, 4]}}}],
         "I will crop.\n" + CALL),
        ("<answer>x</answer>", [], "<answer>x</answer>"),
        ("", [{"function": {"name": "crop", "arguments": ""}}],
         '<tool_call>{"name": "crop", "arguments": {}}</tool_call>'),
    ],
)
def test_action_text_writes_calls_in_the_text_protocol(content: str, calls: list, expected: str) -> None:
    assert action_text(content, calls, HermesProtocol()) == expected


def test_action_text_passes_arguments_that_are_not_json_on_for_the_env_to_report() -> None:
    """A server that hands back arguments it could not parse: the env (not the policy) tells the model."""
    text = action_text("", [{"function": {"name": "crop", "arguments": "{box: [1"}}], HermesProtocol())
    parsed = HermesProtocol().parse(text)
    assert json.loads(text[len("<tool_call>"):-len("</tool_call>")])["arguments"] == "{box: [1"
    assert not parsed.tool_calls and "must be a JSON object" in parsed.errors[0]
    with pytest.raises(TypeError, match="without function.name"):
        action_text("", [{"function": {"arguments": "{}"}}], HermesProtocol())
