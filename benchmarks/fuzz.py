"""Action fuzzing: a seeded grammar of near-valid model turns, played against every registered env (issue 9).

Run: ``python benchmarks/fuzz.py --actions 100000 --seed 0``. Prints the count, wall time, actions/s, uncaught
exceptions (the first traceback of each distinct kind), observations outside the space, errors that do not name
the problem, malformed turns that were accepted, and a row per env. Nothing is asserted here (the fast version is
``tests/test_fuzz_actions.py``, which imports this module); exit status 1 when any problem was found.

Contents: :class:`Target`, :func:`fuzz_targets`, :class:`FuzzAction`, :class:`ActionGrammar`, :func:`check_step`,
:class:`FuzzReport`, :func:`oracle_reward`, :func:`fuzz_target`, :func:`fuzz`.

The grammar (:class:`ActionGrammar`, numpy-seeded) starts from valid calls (the oracle's plan for the current sample
and random in-range calls of every offered tool) and breaks them: bad JSON (truncated, trailing commas, single
quotes, Python literals, fences, 5,000-digit ints, 10,000-deep nesting), wrong JSON shapes, unknown and near-miss
tool names, every argument of the wrong type, non-finite / negative / 1e308 / 10**400 numbers, empty, inverted,
off-image, 1-pixel and huge boxes, unknown and missing arguments, 1 MB strings, unicode (RTL, NUL, lone surrogates,
emoji), up to 2,000 calls in one turn, tag soup, tool calls inside answers, empty and blank turns, and answers of
every type. A third of the turns stay valid so episodes go deep (every turn played, image budgets exhausted).
Each :class:`FuzzAction` says whether it must be rejected and which words the error must contain.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402

import vgym  # noqa: E402,F401  (registers the envs)
from vgym.task import TASKS, env_id  # noqa: E402
from vgym.tooling import TOOLS  # noqa: E402

__all__ = ["Target", "fuzz_targets", "FuzzAction", "ActionGrammar", "check_step", "FuzzReport", "oracle_reward",
           "fuzz_target", "fuzz"]

_UNICODE = ["\u202ecrop\u202c", "\x00", "\ud800", "\udfff", "🔍🦄", "ﷺ", "e\u0301", "\ufeff", "\u2028", "ﾟ", "𝔵"]
_GENERIC = ("image budget", "timed out", "elongated", "video", "backend", "crashed")
"""Words that name a problem on their own (budget, timeout, tool-output shape, missing media, backend setup)."""


@dataclass(frozen=True)
class Target:
    """One env to fuzz: a registered id and the ``gymnasium.make`` keyword arguments."""

    label: str
    env_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)


_ORACLES = {"ground": "oracle", "point": "oracle", "segment": "oracle", "ocr": "oracle", "depth": "oracle"}
"""Ground-truth backends: no model and no classical vision, so a call costs microseconds (the fast test's choice)."""


def fuzz_targets(*, fast: bool = False) -> tuple[list[Target], dict[str, str]]:
    """Every registered env id once with its defaults, once "deep" (every tool, other backends, small budgets).

    Args:
        fast: run every tool on its oracle backend (RapidOCR, GrabCut and the Haar/HOG detectors take up to
            seconds a call on large images); decoders stay real.

    Returns:
        ``(targets, skipped)``: ``skipped`` maps the ids that need a dataset root on disk to the reason.
    """
    everything = tuple(TOOLS.names())
    # OCR's oracle keeps the deep runs fast (RapidOCR runs in the default targets); the others swap in the
    # classical backends (the defaults are oracles; stereo needs RealMini's stereo pair) and PyAV (the default
    # tries decord first).
    backends = {"ground": "opencv", "point": "opencv", "segment": "grabcut", "ocr": "oracle", "depth": "stereo",
                "sample_frames": "pyav", "get_frame": "pyav"}
    if fast:
        backends.update(_ORACLES)
    deep = {"tools": everything, "max_turns": 12, "max_calls_per_turn": 3, "max_images": 5, "max_pixels": 56 * 56,
            "tool_runtime": {"backends": backends}}
    default: dict[str, Any] = {"tool_runtime": {"backends": dict(_ORACLES)}} if fast else {}
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    for name in TASKS.names():
        task_cls = TASKS.get(name)
        eid = env_id(task_cls)
        if task_cls.procedural:
            base: dict[str, Any] = {}
        elif name == "real_mini":  # media ship inside installed packages; all 40 questions are in "test"
            base = {"split": "test"}
        else:
            skipped[eid] = "needs a dataset root on disk (DatasetConfig.root); no files are made up for it"
            continue
        targets.append(Target(eid, eid, {**base, **default}))
        targets.append(Target(f"{eid} deep", eid, {**base, **deep}))
    return targets, skipped


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

    def _valid_value(self, env: Any, tool: str, arg: str, prop: dict[str, Any], shape: tuple[int, int]) -> Any:
        rng, (h, w) = self.rng, shape
        xs, ys = np.sort(rng.uniform(0, w, 2)), np.sort(rng.uniform(0, h, 2))
        box = [round(float(v), 1) for v in (xs[0], ys[0], xs[1] + 1, ys[1] + 1)]
        pt = [round(float(rng.uniform(0, w - 1)), 1), round(float(rng.uniform(0, h - 1)), 1)]
        duration = float(env.sample.metadata.get("duration_s", 4.0) or 4.0)
        names = [o.get("name", "") for o in env.sample.metadata.get("objects", []) if isinstance(o, dict)]
        values = {"box": box, "boxes": [box, box][: 1 + int(rng.integers(2))], "point": pt,
                  "points": [pt] * int(rng.integers(1, 5)), "query": self._pick(names + ["red circle", "face"]),
                  "t_s": float(rng.uniform(0, duration)), "start_s": float(rng.uniform(0, duration / 2)),
                  "end_s": float(rng.uniform(duration / 2, duration)), "num_frames": int(rng.integers(1, 9))}
        if arg in values:
            return values[arg]
        if "enum" in prop:
            return self._pick(list(prop["enum"]))
        return {"number": 1.0, "integer": 0, "string": "x", "boolean": True, "array": [], "object": {}}.get(
            prop.get("type"), None)

    def valid_call(self, env: Any) -> tuple[str, dict[str, Any]]:
        """The oracle's next call (half the time, while it has one) or a random in-range call of an offered tool."""
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
        return self._pick([
            s[:cut], s[:-1] + ", }", s.replace('"', "'"), s.replace("true", "True") + " # py", s + s, s + " // done",
            "```json\n" + s + "\n```", "", "   ", "\ufeff" + s, '{name: "crop", arguments: {}}', "{'name': 'crop'}",
            s[:-2] + ', "box": [1' + "0" * 5000 + "]}}", '{"name": "crop", "arguments": {"box": ' + "[" * 10_000 +
            "]" * 10_000 + "}}", "{" * 100_000, '{"name": "crop", "arguments": {"box": [1, 2, 3, 4]}',
        ])

    def _bad_number(self, prop_type: str) -> tuple[Any, bool]:
        value = self._pick([math.nan, math.inf, -math.inf, 1e308, -1e308, -1, 10**400, 2**64, -0.0, 1e-320, "NaN"])
        harmless = prop_type == "number" and isinstance(value, float) and value in (0.0, 1e-320)
        return value, not harmless

    def _bad_region(self, arg: str, shape: tuple[int, int]) -> tuple[Any, bool]:
        h, w = shape
        x, y = int(self.rng.integers(w)), int(self.rng.integers(h))
        if arg == "point":
            return self._pick([([x, y, 1], True), ([math.nan, y], True), ([w + 5, y], True), ([x], True), ([], True),
                               ([-1, y], True), (["1", 2], True), ([[x, y]], True), ([x, 10**400], True)])
        if arg == "box":
            return self._pick([
                ([x, y, x, y + 5], True), ([x + 5, y + 5, x, y], True), ([x, y, math.nan, y + 1], True),
                ([x, y, math.inf, y + 1], True), ([x, y, x + 1], True), ([x, y, x + 1, y + 1, 9], True),
                (["0", "0", "9", "9"], True), ([True, 0, 9, 9], True), ([[x, y, x + 9, y + 9]], True),
                ([w + 10, h + 10, w + 20, h + 20], True), ([-20, -20, -10, -10], True), ([], True),
                ([0, 0, 10**400, 10], True), (list(range(10_000)), True), ([-1e308, -1e308, 1e308, 1e308], False),
                ([x, 0, x + 1, h], False), ([x, y, x + 1, y + 1], False), ([0, 0, 1e-300, 1e-300], False),
                ([x - 0.5, y - 0.5, x + 0.7, y + 0.2], False)])
        return self._pick([([], False), ([[x, y, x, y]], False), ([[math.nan, 0]], True), ([[1, 2, 3]], False),
                           ([[w * 10, h * 10, w * 20, h * 20]], True), ([["a", "b"]], True), ([[[[1]]]], True)])

    def broken_call(self, env: Any) -> FuzzAction:
        """A near-valid call: one rule applied to a valid call."""
        tool, args = self.valid_call(env)
        params = env.tools[tool].schema["function"]["parameters"]
        props, required = params["properties"], params.get("required", [])
        index = args.get("image_index", 0)
        exists = isinstance(index, int) and 0 <= index < len(env._images)
        shape = env._images[index].shape[:2] if exists else (9, 9)
        # An oracle call may address an image that a later tool output would create: its error names image_index.
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
                return FuzzAction(_call(tool, {**args, **extra, arg: value}), rule, must, (arg, "elongated", *also))
        if rule == "unknown_arg":
            key = self._pick(["zoom", "scale", "factor", "ctx", "self", "__class__", "", "🔍", "k" * 1000])
            return FuzzAction(_call(tool, {**args, key: 1e9}), rule, True, ("unknown argument", *also))
        if rule == "missing" and required:
            arg = self._pick(required)
            return FuzzAction(_call(tool, {k: v for k, v in args.items() if k != arg}), rule, True, (arg, *also))
        if rule in ("big_string", "unicode"):
            text = self.huge if rule == "big_string" else "".join(self._pick(_UNICODE) for _ in range(4))
            strings = [a for a in sorted(props) if props[a].get("type") == "string"]
            target = self._pick(strings) if strings else arg
            must = not strings  # a string where a number or array belongs must be rejected
            ascii_only = bool(self.rng.random() < 0.5)  # False puts raw surrogates / NUL into the turn itself
            return FuzzAction(_call(tool, {**args, target: text}, ascii_only), rule, must, (target, "too long", *also))
        if rule == "double_encoded":
            return FuzzAction(_call(tool, json.dumps(args)), rule)
        if rule == "unknown_tool":
            name = self._pick(["zoom", "Crop", tool + " ", tool.upper(), tool + "_v2", "grounding", "🔍", "\u202ecrop",
                               tool + "\x00", "__init__", "null", "k" * len(self.huge),
                               *sorted(set(TOOLS.names()) - set(env.tools))])
            return FuzzAction(_call(name, args), rule, True, ("unknown tool", "too long"))
        if rule == "bad_shape":
            body, expect = self._pick([
                ([tool, args], "json object"), ("crop", "json object"), (None, "json object"), (7, "json object"),
                ({"arguments": args}, '"name"'), ({"name": 7, "arguments": args}, '"name"'), ({"name": ""}, '"name"'),
                ({"name": tool, "arguments": [1]}, '"arguments"'), ({"name": tool, "arguments": None}, '"arguments"'),
                ({"name": tool, "arguments": "{oops"}, '"arguments"'),
                ({"name": tool, "arguments": args, "id": 1}, "unexpected key"),
            ])
            return FuzzAction("<tool_call>" + json.dumps(body) + "</tool_call>", rule, True, (expect,))
        if rule == "deep_args":
            depth = self._pick([50, 500, 900, 990])  # json parses ~1,000 levels, less the caller's stack
            text = _call(tool, {**args, arg: "DEEP"}).replace('"DEEP"', "[" * depth + "]" * depth)
            return FuzzAction(text, rule, True, (arg, "json", "nest", *also))
        body = json.dumps({"name": tool, "arguments": args})
        return FuzzAction("<tool_call>" + self._broken_json(body) + "</tool_call>", "bad_json", True, ("json",))

    # ------------------------------------------------------------------------------------------- whole turns

    def _answer_text(self) -> str:
        return str(self._pick([self._answer, "", "  ", "42", "-0", "nan", "inf", "1e308", "[1, 2, 3, 4]", '{"a": 1}',
                               "true", "null", self.huge, "".join(_UNICODE), "A", "<answer>x</answer>", "\\ud800",
                               "[0, 0, 10, 10]", "[1.5, 2.5]", "yes", "3/4", "1" * 5000]))

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
            text, expect = self._pick([
                ("<tool_call>" + call, "tool_call"), (call + "</tool_call>", "tool_call"), (call[11:], "tool_call"),
                ("<tool_call>" + call + "</tool_call>", "json"), (call[:-12], "tool_call"),
                ("<answer>" + call, "answer"),
                ("<tool_call></tool_call>", "json"), ("<tool_call>" * 1000, "tool_call"),
                ("<tool_call>" * 50_000, "tool_call"), ("<answer>" * 50_000, "answer"),
            ])
            return FuzzAction(text, "tags", True, (expect,))
        if roll < 0.86:
            text = self._pick(["", " ", "\n\t \r\n", "I think the answer is 3.", "".join(_UNICODE), self.huge,
                               "\x00" * 99, "answer: 4", '{"name": "crop", "arguments": {}}', "< answer >3</ answer >"])
            return FuzzAction(text, "free_text", True, ("no tool call",))
        if roll < 0.94:
            return FuzzAction(f"<answer>{self._answer_text()}</answer>", "answer")
        call = _call(*self.valid_call(env))
        text = self._pick([f"<answer>{self._answer}{call}</answer>", f"{call}<answer>{self._answer}</answer>",
                           f"<answer>{self._answer}</answer><answer>{self._answer}</answer>"])
        return FuzzAction(text, "bad_answer", True, ("answer",))


# ------------------------------------------------------------------------------------------------- checking


def check_step(env: gymnasium.Env, action: FuzzAction, result: tuple,
               format_errors_before: int) -> list[tuple[str, str]]:
    """The problems of one step's result.

    Args:
        env: the env that played the turn (its observation space and tools are read).
        action: the turn, with what its rejection must look like.
        result: what ``env.step(action.text)`` returned.
        format_errors_before: ``env.unwrapped``'s format-error count before the step.

    Returns:
        ``(category, detail)`` pairs, empty when all is well. Categories: ``outside_space``, ``bad_flags``,
        ``bad_reward``, ``unencodable`` (observation text or tool records that cannot be written as UTF-8 JSON),
        ``internal_error`` (a tool crashed and the env caught it), ``unnamed`` (an error that names neither its
        problem nor the tool or an argument) and ``accepted`` (a turn that had to be rejected was not).
    """
    obs, reward, terminated, truncated, info = result
    problems: list[tuple[str, str]] = []
    if not env.observation_space.contains(obs):
        problems.append(("outside_space", f"{action.kind}: text {len(obs.get('text', ''))} chars, images "
                         f"{[getattr(im, 'shape', im) for im in obs.get('images', ())]}"))
    if type(terminated) is not bool or type(truncated) is not bool or (terminated and truncated):
        problems.append(("bad_flags", f"{action.kind}: terminated={terminated!r}, truncated={truncated!r}"))
    done = terminated or truncated
    if not isinstance(reward, float) or not math.isfinite(reward) or (not done and reward != 0.0):
        problems.append(("bad_reward", f"{action.kind}: reward {reward!r} (done={done})"))
    try:
        obs["text"].encode("utf-8")
        json.dumps(info["tool_calls"]).encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError, TypeError) as exc:
        problems.append(("unencodable", f"{action.kind}: {type(exc).__name__}: {str(exc)[:120]}"))
    text = obs["text"].lower()
    for record in info["tool_calls"]:
        error = (record["error"] or "").lower()
        if not error:
            continue
        if error.startswith("internal error"):
            problems.append(("internal_error", f"{action.kind}: {record['name']}: {record['error']}"))
        props = env.unwrapped.tools[record["name"]].schema["function"]["parameters"]["properties"] \
            if record["name"] in env.unwrapped.tools else {}
        given = [a for a in record["arguments"] if len(a) >= 3]  # a one-letter key would match any message
        words = [record["name"].lower(), *props, *given, *_GENERIC, "unknown tool"]
        if not any(w and str(w).lower() in error for w in words):
            problems.append(("unnamed", f"{action.kind}: {record['name']}: {record['error'][:200]}"))
    if action.must_fail:
        if terminated:
            if info["format_errors"] <= format_errors_before:
                problems.append(("accepted", f"{action.kind}: {action.text[:120]!r} counted no format error"))
        elif "error" not in text:
            problems.append(("accepted", f"{action.kind}: {action.text[:120]!r} -> {obs['text'][:160]!r}"))
        elif not any(word.lower() in text for word in (*action.expect, *_GENERIC)):
            problems.append(("unnamed", f"{action.kind}: expected one of {action.expect} in {obs['text'][:300]!r}"))
    return problems


@dataclass
class FuzzReport:
    """What a fuzzing run found (see :func:`check_step` for the problem categories)."""

    actions: int = 0
    episodes: int = 0
    seconds: float = 0.0
    rejected: int = 0
    kinds: Counter = field(default_factory=Counter)
    problems: Counter = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)
    exceptions: dict[str, str] = field(default_factory=dict)
    per_target: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, category: str, detail: str) -> None:
        """Count one problem and keep the first few details of each category."""
        self.problems[category] += 1
        kept = self.samples.setdefault(category, [])
        if len(kept) < 5:
            kept.append(detail)

    @property
    def ok(self) -> bool:
        """True when no problem of any category was found."""
        return not self.problems

    def merge(self, other: FuzzReport) -> None:
        """Add ``other``'s counts, problems, first tracebacks and per-target rows to this report."""
        for name in ("actions", "episodes", "seconds", "rejected"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.kinds.update(other.kinds)
        for category, details in other.samples.items():
            for detail in details:
                self.add(category, detail)
            self.problems[category] += other.problems[category] - len(details)
        for key, tb in other.exceptions.items():
            self.exceptions.setdefault(key, tb)
        self.per_target.update(other.per_target)


def oracle_reward(env: gymnasium.Env, seed: int, options: dict[str, Any] | None) -> float:
    """Reset with ``seed`` and ``options`` and play the oracle's plan.

    Returns:
        The final reward (0.0 if the episode is cut short): equal for a fresh env and for one that was fuzzed.
    """
    env.reset(seed=seed, options=options)
    inner: Any = env.unwrapped
    solution = inner.task.solution(inner.sample, inner.tools_enabled)
    for name, arguments in solution.tool_calls:
        _, _, terminated, truncated, _ = env.step(inner.protocol.format_tool_call(name, arguments))
        if terminated or truncated:
            return 0.0
    return float(env.step(inner.protocol.format_answer(solution.answer))[1])


def fuzz_target(target: Target, actions: int, seed: int, *, huge_chars: int = 1 << 20,
                samples: int | None = None) -> FuzzReport:
    """Play ``actions`` generated turns on a fresh env of ``target``, then check that it still plays the oracle's
    episode exactly as a fresh env does (same reward).

    Args:
        target: the env.
        actions: how many turns to play (episodes restart as they end).
        seed: with the target's label, seeds the grammar and every episode.
        huge_chars: see :class:`ActionGrammar`.
        samples: draw every episode's sample from the split's first ``samples`` items (cached after the first
            reset: video tasks render a clip per new sample); None: any item.
    """
    report = FuzzReport()
    rng = np.random.default_rng(np.random.SeedSequence([seed, *target.label.encode()]))
    grammar = ActionGrammar(rng, huge_chars)
    env = gymnasium.make(target.env_id, **target.kwargs)
    start = time.perf_counter()

    def reset() -> None:
        options = None if samples is None else {"index": int(rng.integers(samples))}
        env.reset(seed=int(rng.integers(2**31)), options=options)
        grammar.start_episode(env.unwrapped)

    reset()
    report.episodes = 1
    slowest = (0.0, "")
    for _ in range(actions):
        action = grammar.next(env.unwrapped)
        report.actions += 1
        report.kinds[action.kind] += 1
        before = env.unwrapped._format_errors
        tick = time.perf_counter()
        try:
            result = env.step(action.text)
        except Exception as exc:  # the point of the exercise: step must never raise on model output
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            key = f"{type(exc).__name__} at {os.path.relpath(frame.filename)}:{frame.lineno}"
            report.exceptions.setdefault(key, "".join(traceback.format_exception(exc, limit=-12)))
            report.add("uncaught", f"{target.label} {action.kind}: {key}: {str(exc)[:160]}")
            result = None
        else:
            for category, detail in check_step(env, action, result, before):
                report.add(category, f"{target.label} {detail}")
            report.rejected += "error" in result[0]["text"].lower() or result[4]["format_errors"] > before
        took = time.perf_counter() - tick
        if took > slowest[0]:
            slowest = (took, f"{action.kind}: {action.text[:100]!r}")
        if result is None or result[2] or result[3]:
            reset()
            report.episodes += 1
    fresh = gymnasium.make(target.env_id, **target.kwargs)
    try:
        options = None if samples is None else {"index": 0}
        if oracle_reward(env, seed, options) != oracle_reward(fresh, seed, options):
            report.add("replay", f"{target.label}: oracle reward differs after fuzzing")
    except Exception as exc:
        report.add("replay", f"{target.label}: {type(exc).__name__}: {exc}")
    finally:
        fresh.close()
        env.close()
    report.seconds = time.perf_counter() - start
    report.per_target[target.label] = {"actions": report.actions, "episodes": report.episodes,
                                       "seconds": report.seconds, "problems": sum(report.problems.values()),
                                       "slowest_s": slowest[0], "slowest": slowest[1]}
    return report


def _row(label: str, row: dict[str, Any]) -> str:
    return (f"{label:28s} {row['actions']:7d} {row['episodes']:8d} {row['actions'] / row['seconds']:9.1f} "
            f"{row['problems']:8d}  {row['slowest_s']:.2f} s {row['slowest'][:70]}")


def fuzz(actions: int, seed: int, targets: list[Target] | None = None, *, verbose: bool = False) -> FuzzReport:
    """Spread ``actions`` evenly over ``targets`` (default: :func:`fuzz_targets`) and merge the reports; with
    ``verbose``, print a row per target as it finishes."""
    targets = targets if targets is not None else fuzz_targets()[0]
    report = FuzzReport()
    if verbose:
        print(f"\n{'target':28s} {'actions':>7s} {'episodes':>8s} {'actions/s':>9s} {'problems':>8s}  slowest step")
    for i, target in enumerate(targets):
        share = actions // len(targets) + (i < actions % len(targets))
        report.merge(fuzz_target(target, share, seed))
        if verbose:
            print(_row(target.label, report.per_target[target.label]), flush=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actions", type=int, default=100_000, help="generated turns in all (spread over the envs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the grammar and of the episodes")
    parser.add_argument("--only", default="", help="fuzz only targets whose label contains this text")
    args = parser.parse_args()
    targets, skipped = fuzz_targets()
    targets = [t for t in targets if args.only in t.label]
    for eid, reason in sorted(skipped.items()):
        print(f"skipped {eid}: {reason}")
    report = fuzz(args.actions, args.seed, targets, verbose=True)
    print(f"\nactions {report.actions} over {len(targets)} targets ({report.episodes} episodes) in "
          f"{report.seconds:.1f} s = {report.actions / report.seconds:.0f} actions/s; rejected {report.rejected}")
    print("rules:", dict(sorted(report.kinds.items())))
    print("uncaught exceptions:", report.problems["uncaught"], "| observations outside the space:",
          report.problems["outside_space"], "| errors not naming the problem:", report.problems["unnamed"],
          "| malformed turns accepted:", report.problems["accepted"])
    print("all problem counts:", dict(report.problems) or "none")
    for category, details in report.samples.items():
        print(f"\n[{category}]", *details, sep="\n  ")
    for key, tb in report.exceptions.items():
        print(f"\n--- first {key}\n{tb}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
