"""The grammar of near-valid model turns that ``benchmarks/fuzz.py`` plays against every env (issue 9).

Contents: :class:`FuzzAction`, :class:`ActionGrammar`.

:class:`ActionGrammar` (numpy-seeded) starts from valid calls (the oracle's plan for the current sample and
random in-range calls of every offered tool) and breaks them: bad JSON (truncated, trailing commas, single
quotes, Python literals, fences, 5,000-digit ints, 10,000-deep nesting), wrong JSON shapes, unknown and
near-miss tool names, every argument of the wrong type, non-finite / negative / 1e308 / 10**400 numbers,
empty, inverted, off-image, 1-pixel and huge boxes, unknown and missing arguments, 1 MB strings, unicode (RTL,
NUL, lone surrogates, emoji), up to 2,000 calls in one turn, tag soup, tool calls inside answers, empty and
blank turns, and answers of every type. A third of the turns stay valid so episodes go deep (every turn
played, image budgets exhausted). Each :class:`FuzzAction` says whether it must be rejected and which words
the error must contain.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vgym.tooling import TOOLS

__all__ = ["FuzzAction", "ActionGrammar"]

_UNICODE = [
    "\u202ecrop\u202c",
    "\x00",
    "\ud800",
    "\udfff",
    "🔍🦄",
    "ﷺ",
    "e\u0301",
    "\ufeff",
    "\u2028",
    "ﾟ",
    "𝔵",
]


@dataclass(frozen=True)
class FuzzAction:
    """One generated turn.

    Attributes:
        text: the model's turn.
        kind: the grammar rule that made it.
        must_fail: True when the env must report an error (or, for an answer, count a format error).
        expect: words (case-insensitive) of which the error text must contain at least one.
    """

    text: str
    kind: str
    must_fail: bool = False
    expect: tuple[str, ...] = ()


def _call(name: Any, arguments: Any, ascii_only: bool = True) -> str:
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=ascii_only)
    return f"<tool_call>{body}</tool_call>"


class ActionGrammar:
    """Near-valid turns for one env, drawn from a seeded ``numpy`` generator (see the module docstring)."""

    def __init__(self, rng: np.random.Generator, huge_chars: int = 1 << 20) -> None:
        """Args:
        rng: every choice comes from it.
        huge_chars: length of the "huge" strings (arguments, names, answers, free text); default 1 MB.
        """
        self.rng = rng
        self.huge = "é" * huge_chars
        self._plan: list[tuple[str, dict[str, Any]]] = []
        self._answer = ""

    def start_episode(self, env: Any) -> None:
        """Read the oracle's plan for the env's new sample (call after every reset)."""
        solution = env.task.solution(env.sample, True)
        self._plan = [(n, a) for n, a in solution.tool_calls if n in env.tools]
        self._answer = solution.answer

    def _pick(self, options: list[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]

    # ------------------------------------------------------------------------------------------- valid calls

    def _valid_value(
        self, env: Any, tool: str, arg: str, prop: dict[str, Any], shape: tuple[int, int]
    ) -> Any:
        rng, (h, w) = self.rng, shape
        xs, ys = np.sort(rng.uniform(0, w, 2)), np.sort(rng.uniform(0, h, 2))
        box = [round(float(v), 1) for v in (xs[0], ys[0], xs[1] + 1, ys[1] + 1)]
        pt = [round(float(rng.uniform(0, w - 1)), 1), round(float(rng.uniform(0, h - 1)), 1)]
        # procedural video tasks: "duration_s"; dataset records: "video": {"duration_s"}
        meta = env.sample.metadata
        video = meta.get("video") if isinstance(meta.get("video"), dict) else {}
        duration = float(meta.get("duration_s") or video.get("duration_s") or 4.0)
        names = [o.get("name", "") for o in env.sample.metadata.get("objects", []) if isinstance(o, dict)]
        values = {
            "box": box,
            "boxes": [box, box][: 1 + int(rng.integers(2))],
            "point": pt,
            "points": [pt] * int(rng.integers(1, 5)),
            "query": self._pick(names + ["red circle", "face"]),
            "t_s": float(rng.uniform(0, duration)),
            "start_s": float(rng.uniform(0, duration / 2)),
            "end_s": float(rng.uniform(duration / 2, duration)),
            "num_frames": int(rng.integers(1, 9)),
        }
        if arg in values:
            return values[arg]
        if "enum" in prop:
            return self._pick(list(prop["enum"]))
        return {"number": 1.0, "integer": 0, "string": "x", "boolean": True, "array": [], "object": {}}.get(
            prop.get("type"), None)

    def valid_call(self, env: Any) -> tuple[str, dict[str, Any]]:
        """The oracle's next call (half the time, while it has one) or a random in-range call of an offered
        tool."""
        if self._plan and self.rng.random() < 0.5:
            return self._plan.pop(0)
        tool = self._pick(sorted(env.tools))
        params = env.tools[tool].schema["function"]["parameters"]
        images = env._images  # white-box: image sizes at full resolution
        index = int(self.rng.integers(len(images)))
        args: dict[str, Any] = {"image_index": index} if "image_index" in params["properties"] else {}
        for arg, prop in params["properties"].items():
            if arg != "image_index" and (arg in params.get("required", []) or self.rng.random() < 0.5):
                args[arg] = self._valid_value(env, tool, arg, prop, images[index].shape[:2])
        return tool, args

    # ------------------------------------------------------------------------------------------- broken calls

    def _broken_json(self, s: str) -> str:
        cut = int(self.rng.integers(1, len(s) - 1))
        return self._pick(
            [
                s[:cut],
                s[:-1] + ", }",
                s.replace('"', "'"),
                s.replace("true", "True") + " # py",
                s + s,
                s + " // done",
                "```json\n" + s + "\n```",
                "",
                "   ",
                "\ufeff" + s,
                '{name: "crop", arguments: {}}',
                "{'name': 'crop'}",
                s[:-2] + ', "box": [1' + "0" * 5000 + "]}}",
                '{"name": "crop", "arguments": {"box": ' + "[" * 10_000 + "]" * 10_000 + "}}",
                "{" * 100_000,
                '{"name": "crop", "arguments": {"box": [1, 2, 3, 4]}',
            ]
        )

    def _bad_number(self, prop_type: str) -> tuple[Any, bool]:
        value = self._pick(
            [math.nan, math.inf, -math.inf, 1e308, -1e308, -1, 10**400, 2**64, -0.0, 1e-320, "NaN"]
        )
        harmless = prop_type == "number" and isinstance(value, float) and value in (0.0, 1e-320)
        return value, not harmless

    def _bad_region(self, arg: str, shape: tuple[int, int]) -> tuple[Any, bool]:
        h, w = shape
        x, y = int(self.rng.integers(w)), int(self.rng.integers(h))
        if arg == "point":
            return self._pick(
                [
                    ([x, y, 1], True),
                    ([math.nan, y], True),
                    ([w + 5, y], True),
                    ([x], True),
                    ([], True),
                    ([-1, y], True),
                    (["1", 2], True),
                    ([[x, y]], True),
                    ([x, 10**400], True),
                ]
            )
        if arg == "box":
            return self._pick(
                [
                    ([x, y, x, y + 5], True),
                    ([x + 5, y + 5, x, y], True),
                    ([x, y, math.nan, y + 1], True),
                    ([x, y, math.inf, y + 1], True),
                    ([x, y, x + 1], True),
                    ([x, y, x + 1, y + 1, 9], True),
                    (["0", "0", "9", "9"], True),
                    ([True, 0, 9, 9], True),
                    ([[x, y, x + 9, y + 9]], True),
                    ([w + 10, h + 10, w + 20, h + 20], True),
                    ([-20, -20, -10, -10], True),
                    ([], True),
                    ([0, 0, 10**400, 10], True),
                    (list(range(10_000)), True),
                    ([-1e308, -1e308, 1e308, 1e308], False),
                    ([x, 0, x + 1, h], False),
                    ([x, y, x + 1, y + 1], False),
                    ([0, 0, 1e-300, 1e-300], False),
                    ([x - 0.5, y - 0.5, x + 0.7, y + 0.2], False),
                ]
            )
        return self._pick(
            [
                ([], False),
                ([[x, y, x, y]], False),
                ([[math.nan, 0]], True),
                ([[1, 2, 3]], False),
                ([[w * 10, h * 10, w * 20, h * 20]], True),
                ([["a", "b"]], True),
                ([[[[1]]]], True),
            ]
        )

    def broken_call(self, env: Any) -> FuzzAction:
        """A near-valid call: one rule applied to a valid call."""
        tool, args = self.valid_call(env)
        params = env.tools[tool].schema["function"]["parameters"]
        props, required = params["properties"], params.get("required", [])
        index = args.get("image_index", 0)
        exists = isinstance(index, int) and 0 <= index < len(env._images)
        shape = env._images[index].shape[:2] if exists else (9, 9)
        # An oracle call may address an image that a later tool output would create: its error names
        # image_index.
        also = () if exists else ("image_index",)
        rule = self._pick(["wrong_type", "bad_number", "bad_region", "unknown_arg", "missing", "big_string",
                           "unicode", "double_encoded", "unknown_tool", "bad_shape", "bad_json", "deep_args"])
        arg = self._pick(sorted(props))
        if rule == "wrong_type":
            allowed = {"number": (int, float), "integer": (int,), "string": (str,), "array": (list,)}
            want = props[arg].get("type", "")
            value = self._pick([v for v in ["7", 7, 7.5, True, [7], {"x": 7}, None]
                                if not isinstance(v, allowed.get(want, ())) or isinstance(v, bool)
                                if v is not None or arg in required])
            return FuzzAction(_call(tool, {**args, arg: value}), rule, True, (arg, *also))
        if rule == "bad_number":
            numeric = [a for a in sorted(props) if props[a].get("type") in ("number", "integer")]
            if numeric:
                arg = self._pick(numeric)
                value, must = self._bad_number(props[arg]["type"])
                return FuzzAction(_call(tool, {**args, arg: value}), rule, must, (arg, *also))
        if rule == "bad_region":
            regions = [a for a in sorted(props) if a in ("box", "boxes", "point", "points")]
            if regions:
                arg = self._pick(regions)
                value, must = self._bad_region(arg, shape)
                extra = {"kind": "area"} if tool == "measure" else {}
                return FuzzAction(
                    _call(tool, {**args, **extra, arg: value}), rule, must, (arg, "elongated", *also)
                )
        if rule == "unknown_arg":
            key = self._pick(["zoom", "scale", "factor", "ctx", "self", "__class__", "", "🔍", "k" * 1000])
            return FuzzAction(_call(tool, {**args, key: 1e9}), rule, True, ("unknown argument", *also))
        if rule == "missing" and required:
            arg = self._pick(required)
            return FuzzAction(
                _call(tool, {k: v for k, v in args.items() if k != arg}), rule, True, (arg, *also)
            )
        if rule in ("big_string", "unicode"):
            text = self.huge if rule == "big_string" else "".join(self._pick(_UNICODE) for _ in range(4))
            strings = [a for a in sorted(props) if props[a].get("type") == "string"]
            target = self._pick(strings) if strings else arg
            must = not strings  # a string where a number or array belongs must be rejected
            ascii_only = bool(self.rng.random() < 0.5)  # False puts raw surrogates / NUL into the turn itself
            return FuzzAction(
                _call(tool, {**args, target: text}, ascii_only), rule, must, (target, "too long", *also)
            )
        if rule == "double_encoded":
            return FuzzAction(_call(tool, json.dumps(args)), rule)
        if rule == "unknown_tool":
            name = self._pick(
                [
                    "zoom",
                    "Crop",
                    tool + " ",
                    tool.upper(),
                    tool + "_v2",
                    "grounding",
                    "🔍",
                    "\u202ecrop",
                    tool + "\x00",
                    "__init__",
                    "null",
                    "k" * len(self.huge),
                    *sorted(set(TOOLS.names()) - set(env.tools)),
                ]
            )
            return FuzzAction(_call(name, args), rule, True, ("unknown tool", "too long"))
        if rule == "bad_shape":
            body, expect = self._pick(
                [
                    ([tool, args], "json object"),
                    ("crop", "json object"),
                    (None, "json object"),
                    (7, "json object"),
                    ({"arguments": args}, '"name"'),
                    ({"name": 7, "arguments": args}, '"name"'),
                    ({"name": ""}, '"name"'),
                    ({"name": tool, "arguments": [1]}, '"arguments"'),
                    ({"name": tool, "arguments": None}, '"arguments"'),
                    ({"name": tool, "arguments": "{oops"}, '"arguments"'),
                    ({"name": tool, "arguments": args, "id": 1}, "unexpected key"),
                ]
            )
            return FuzzAction("<tool_call>" + json.dumps(body) + "</tool_call>", rule, True, (expect,))
        if rule == "deep_args":
            depth = self._pick([50, 500, 900, 990])  # json parses ~1,000 levels, less the caller's stack
            text = _call(tool, {**args, arg: "DEEP"}).replace('"DEEP"', "[" * depth + "]" * depth)
            return FuzzAction(text, rule, True, (arg, "json", "nest", *also))
        body = json.dumps({"name": tool, "arguments": args})
        return FuzzAction(
            "<tool_call>" + self._broken_json(body) + "</tool_call>", "bad_json", True, ("json",)
        )

    # ------------------------------------------------------------------------------------------- whole turns

    def _answer_text(self) -> str:
        return str(
            self._pick(
                [
                    self._answer,
                    "",
                    "  ",
                    "42",
                    "-0",
                    "nan",
                    "inf",
                    "1e308",
                    "[1, 2, 3, 4]",
                    '{"a": 1}',
                    "true",
                    "null",
                    self.huge,
                    "".join(_UNICODE),
                    "A",
                    "<answer>x</answer>",
                    "\\ud800",
                    "[0, 0, 10, 10]",
                    "[1.5, 2.5]",
                    "yes",
                    "3/4",
                    "1" * 5000,
                ]
            )
        )

    def next(self, env: Any) -> FuzzAction:
        """The next turn for ``env`` (its current episode)."""
        rng, limit = self.rng, env.config.max_calls_per_turn
        roll = rng.random()
        if roll < 0.30:
            tool, args = self.valid_call(env)
            return FuzzAction(_call(tool, args), "valid")
        if roll < 0.62:
            return self.broken_call(env)
        if roll < 0.66:
            k = self._pick([2, 3, 5, 50, 2000])
            calls = "\n".join(_call(*self.valid_call(env)) for _ in range(min(k, 5))) * max(1, k // 5)
            return FuzzAction(calls, "many_calls", k > limit, ("at most",))
        if roll < 0.78:
            call = _call(*self.valid_call(env))
            text, expect = self._pick(
                [
                    ("<tool_call>" + call, "tool_call"),
                    (call + "</tool_call>", "tool_call"),
                    (call[11:], "tool_call"),
                    ("<tool_call>" + call + "</tool_call>", "json"),
                    (call[:-12], "tool_call"),
                    ("<answer>" + call, "answer"),
                    ("<tool_call></tool_call>", "json"),
                    ("<tool_call>" * 1000, "tool_call"),
                    ("<tool_call>" * 50_000, "tool_call"),
                    ("<answer>" * 50_000, "answer"),
                ]
            )
            return FuzzAction(text, "tags", True, (expect,))
        if roll < 0.86:
            text = self._pick(
                [
                    "",
                    " ",
                    "\n\t \r\n",
                    "I think the answer is 3.",
                    "".join(_UNICODE),
                    self.huge,
                    "\x00" * 99,
                    "answer: 4",
                    '{"name": "crop", "arguments": {}}',
                    "< answer >3</ answer >",
                ]
            )
            return FuzzAction(text, "free_text", True, ("no tool call",))
        if roll < 0.94:
            return FuzzAction(f"<answer>{self._answer_text()}</answer>", "answer")
        call = _call(*self.valid_call(env))
        text = self._pick([f"<answer>{self._answer}{call}</answer>", f"{call}<answer>{self._answer}</answer>",
                           f"<answer>{self._answer}</answer><answer>{self._answer}</answer>"])
        return FuzzAction(text, "bad_answer", True, ("answer",))
