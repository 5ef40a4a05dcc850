"""Tests of vgym/protocol.py: HermesProtocol parsing, formatting and its never-raise guarantee."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgym.protocol import HermesProtocol, ParsedAction, ToolCall

CROP = '<tool_call>{"name": "crop", "arguments": {"box": [0, 0, 10, 10]}}</tool_call>'


@pytest.fixture
def protocol() -> HermesProtocol:
    return HermesProtocol()


def _call(body: Any) -> str:
    """A tool call whose body is ``body`` (a str is inserted verbatim, anything else JSON-encoded)."""
    return "<tool_call>" + (body if isinstance(body, str) else json.dumps(body)) + "</tool_call>"


def test_valid_call(protocol: HermesProtocol) -> None:
    parsed = protocol.parse("Let me look closer.\n" + CROP)
    assert parsed == ParsedAction(tool_calls=(ToolCall("crop", {"box": [0, 0, 10, 10]}),))


def test_missing_arguments_default_to_empty(protocol: HermesProtocol) -> None:
    assert protocol.parse(_call({"name": "crop"})).tool_calls == (ToolCall("crop", {}),)


def test_answer_is_stripped(protocol: HermesProtocol) -> None:
    parsed = protocol.parse("I see it. <answer>  red \n</answer>")
    assert parsed == ParsedAction(answer="red")


def test_answer_and_call_in_one_turn_drops_the_calls(protocol: HermesProtocol) -> None:
    parsed = protocol.parse(CROP + "<answer>red</answer>")
    assert parsed.answer == "red"
    assert parsed.tool_calls == ()
    assert len(parsed.errors) == 1
    assert "either tool calls or an answer" in parsed.errors[0]


def test_two_answers_use_the_first(protocol: HermesProtocol) -> None:
    parsed = protocol.parse("<answer>red</answer> no wait <answer>blue</answer>")
    assert parsed.answer == "red"
    assert parsed.errors == ("Give exactly one <answer>...</answer>; the first one was used.",)


def test_unclosed_answer(protocol: HermesProtocol) -> None:
    parsed = protocol.parse("<answer>red")
    assert parsed.answer is None
    assert any("Unclosed <answer>" in e for e in parsed.errors)


@pytest.mark.parametrize(
    "text",
    ['<tool_call>{"name": "crop", "arguments": {}}', '{"name": "crop"}</tool_call>', CROP + "<tool_call>"],
    ids=["unclosed", "stray-close", "extra-open"],
)
def test_unbalanced_call_tags(protocol: HermesProtocol, text: str) -> None:
    parsed = protocol.parse(text)
    assert any("Unbalanced <tool_call> tags" in e for e in parsed.errors)
    assert parsed.answer is None


def test_unbalanced_tags_still_run_the_well_formed_call(protocol: HermesProtocol) -> None:
    # The first pair is complete; the trailing open tag is reported but does not void the call.
    parsed = protocol.parse(CROP + "<tool_call>")
    assert parsed.tool_calls == (ToolCall("crop", {"box": [0, 0, 10, 10]}),)


@pytest.mark.parametrize(
    "body",
    [
        '{"name": crop}',  # unquoted string
        "{'name': 'crop'}",  # Python, not JSON
        '{"name": "crop", "arguments": {"box": [1, 2, 3, 4]}',  # missing brace
        "",
        "[" * 100_000,  # nested too deep for json's recursion limit
        '{"name": "crop", "arguments": {"box": [' + "1" * 5000 + "]}}",  # over Python's int-digit limit
    ],
    ids=["unquoted", "python-dict", "missing-brace", "empty", "deep-nesting", "huge-int"],
)
def test_invalid_json_is_reported(protocol: HermesProtocol, body: str) -> None:
    parsed = protocol.parse(_call(body))
    assert parsed.tool_calls == ()
    assert len(parsed.errors) == 1
    assert "not valid JSON" in parsed.errors[0]
    assert len(parsed.errors[0]) < 300  # the snippet of the body is cut short


@pytest.mark.parametrize(
    "body, kind", [([1, 2], "list"), ('"crop"', "str"), ("3", "int"), ("null", "NoneType")]
)
def test_non_object_json_is_reported(protocol: HermesProtocol, body: Any, kind: str) -> None:
    parsed = protocol.parse(_call(body))
    assert parsed.tool_calls == ()
    assert parsed.errors == (
        f'Tool call must be a JSON object {{"name": ..., "arguments": {{...}}}}, got {kind}.',
    )


@pytest.mark.parametrize(
    "body", [{"arguments": {}}, {"name": "", "arguments": {}}, {"name": 5, "arguments": {}}]
)
def test_missing_or_bad_name(protocol: HermesProtocol, body: dict) -> None:
    parsed = protocol.parse(_call(body))
    assert parsed.tool_calls == ()
    assert len(parsed.errors) == 1
    assert 'needs a "name" string' in parsed.errors[0]


def test_arguments_encoded_as_a_json_string_are_decoded(protocol: HermesProtocol) -> None:
    body = {"name": "crop", "arguments": json.dumps({"box": [1, 2, 3, 4]})}
    assert protocol.parse(_call(body)).tool_calls == (ToolCall("crop", {"box": [1, 2, 3, 4]}),)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ("box=[1,2,3,4]", '"arguments" of crop must be a JSON object, got the string'),
        # a JSON string holding a list
        ("[1, 2, 3, 4]", '"arguments" of crop must be a JSON object, got list'),
        ([1, 2, 3, 4], '"arguments" of crop must be a JSON object, got list'),
        (7, '"arguments" of crop must be a JSON object, got int'),
        (None, '"arguments" of crop must be a JSON object, got NoneType'),
    ],
)
def test_arguments_not_an_object(protocol: HermesProtocol, arguments: Any, message: str) -> None:
    parsed = protocol.parse(_call({"name": "crop", "arguments": arguments}))
    assert parsed.tool_calls == ()
    assert len(parsed.errors) == 1
    assert parsed.errors[0].startswith(message)


def test_extra_keys_are_rejected(protocol: HermesProtocol) -> None:
    parsed = protocol.parse(_call({"name": "crop", "arguments": {}, "id": 1, "type": "function"}))
    assert parsed.tool_calls == ()
    assert parsed.errors == (
        "Tool call has unexpected key(s) ['id', 'type']; use only \"name\" and \"arguments\".",
    )


def test_calls_beyond_the_limit_are_dropped(protocol: HermesProtocol) -> None:
    second = _call({"name": "crop", "arguments": {"box": [5, 5, 9, 9]}})
    parsed = protocol.parse(CROP + second)
    assert parsed.tool_calls == (ToolCall("crop", {"box": [0, 0, 10, 10]}),)
    assert parsed.errors == ("At most 1 tool call(s) per turn; calls after the first 1 were ignored.",)
    # With a limit of 2 the same turn is clean.
    assert HermesProtocol(max_calls_per_turn=2).parse(CROP + second) == ParsedAction(
        tool_calls=(ToolCall("crop", {"box": [0, 0, 10, 10]}), ToolCall("crop", {"box": [5, 5, 9, 9]}))
    )


def test_a_bad_call_does_not_void_a_good_one(protocol: HermesProtocol) -> None:
    parsed = protocol.parse(_call("not json") + CROP)
    assert parsed.tool_calls == (ToolCall("crop", {"box": [0, 0, 10, 10]}),)
    assert len(parsed.errors) == 1


@pytest.mark.parametrize("text", ["", "   \n", "The square is red.", "<tool_response>x</tool_response>"])
def test_no_call_and_no_answer_is_an_error(protocol: HermesProtocol, text: str) -> None:
    parsed = protocol.parse(text)
    assert parsed.tool_calls == () and parsed.answer is None
    assert len(parsed.errors) == 1
    assert parsed.errors[0].startswith("No tool call or answer found.")


@pytest.mark.parametrize(
    "name, arguments",
    [
        ("crop", {"box": [0, 0, 10, 10]}),
        ("crop", {"box": [0.5, 1e-3, 1e6, -2], "image_index": 1}),
        ("zoom", {}),
        ("say", {"text": "ünïcødé \"quoted\" \n newline {braces}"}),
        ("say", {"text": "a </tool_call> b <answer>x</answer>"}),  # tag text inside an argument
        ("nested", {"a": {"b": [1, {"c": None, "d": True}]}}),
    ],
)
def test_format_tool_call_round_trips(protocol: HermesProtocol, name: str, arguments: dict) -> None:
    assert protocol.parse(protocol.format_tool_call(name, arguments)) == ParsedAction(
        tool_calls=(ToolCall(name, arguments),)
    )


@pytest.mark.parametrize("answer", ["red", "B", "12.5 m", "two words"])
def test_format_answer_round_trips(protocol: HermesProtocol, answer: str) -> None:
    assert protocol.parse(protocol.format_answer(answer)) == ParsedAction(answer=answer)


def test_system_prompt_lists_tools_only_when_there_are_some(protocol: HermesProtocol) -> None:
    schema = {"type": "function", "function": {"name": "crop", "parameters": {}}}
    with_tools = protocol.system_prompt([schema])
    assert "<tools>" in with_tools and '"name":"crop"' in with_tools and "<tool_call>" in with_tools
    without = protocol.system_prompt([])
    assert "<tools>" not in without and "<tool_call>" not in without and "<answer>" in without


# ---------------------------------------------------------------- property tests

_FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    "{",
    "}",
    "[",
    "]",
    '"name"',
    '"arguments"',
    '"crop"',
    ":",
    ",",
    '"',
    "\\",
    "1e999",
    "NaN",
    " ",
    "\n",
]
_texts = st.one_of(
    st.text(),
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=4)), max_size=30).map("".join),
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(text=_texts, limit=st.integers(1, 3))
def test_parse_never_raises_and_keeps_its_invariants(text: str, limit: int) -> None:
    parsed = HermesProtocol(max_calls_per_turn=limit).parse(text)
    assert isinstance(parsed, ParsedAction)
    assert all(isinstance(e, str) and e for e in parsed.errors)
    assert len(parsed.tool_calls) <= limit
    assert all(
        isinstance(c.name, str) and c.name and isinstance(c.arguments, dict) for c in parsed.tool_calls
    )
    if parsed.answer is not None:
        assert parsed.tool_calls == ()  # an answer always wins
    if not parsed.errors:
        assert (parsed.answer is None) != (parsed.tool_calls == ())  # a clean turn is exactly one of the two


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=1), arguments=st.dictionaries(st.text(), _json_values, max_size=4))
def test_format_tool_call_round_trips_for_any_json_arguments(name: str, arguments: dict) -> None:
    protocol = HermesProtocol()
    assert protocol.parse(protocol.format_tool_call(name, arguments)) == ParsedAction(
        tool_calls=(ToolCall(name, arguments),)
    )
