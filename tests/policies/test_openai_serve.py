"""OpenAIPolicy against a real OpenAI-compatible server: ``transformers serve`` on 127.0.0.1 serving the tiny
Qwen2-VL taught to call crop, with its tool-call parser (``message.tool_calls``) and without it (the calls
stay in ``content``). Native and text tool calling reach the env as the same action, tool messages carry the
server's call ids, a request the server refuses fails only its episode, and ``vgym eval --policy openai:...``
runs end to end."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers_server import CROP_CALL, CUT_CALL, SCRIPT, SERVE_CHAT_TEMPLATE, ServeProcess

from vgym.engine.tiny import QWEN2_VL_CHAT_TEMPLATE
from vgym.env import VisualToolEnv
from vgym.policies.openai import OpenAIPolicy, OpenAIPolicyConfig
from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout
from vgym.rollout.trajectory import Trajectory

REPO = Path(__file__).resolve().parents[2]


class Wire:
    """Records every request body an :class:`OpenAIPolicy` sends and what came back (its ``_post``, wrapped:
    the HTTP exchange itself is untouched)."""

    def __init__(self, policy: OpenAIPolicy) -> None:
        self.exchanges: list[tuple[dict[str, Any], dict[str, Any] | str]] = []
        self._lock = threading.Lock()
        post = policy._post

        def recorded(body: dict[str, Any]) -> dict[str, Any]:
            try:
                reply = post(body)
            except Exception as error:
                with self._lock:
                    self.exchanges.append((copy.deepcopy(body), str(error)))
                raise
            with self._lock:
                self.exchanges.append((copy.deepcopy(body), reply))
            return reply

        policy._post = recorded  # type: ignore[method-assign]


def _policy(server: ServeProcess, folder: Path, mode: str, **kwargs: Any) -> tuple[OpenAIPolicy, Wire]:
    policy = OpenAIPolicy(OpenAIPolicyConfig(server.base_url, str(folder), tool_calling=mode, max_tokens=48,
                                             backoff_s=0.01, **kwargs))
    return policy, Wire(policy)


def _play(policy: OpenAIPolicy, tasks: Sequence[str], n: int | None = None) -> list[Trajectory]:
    """One lockstep batch: slot i plays ``tasks[i]`` on test item i (envs are built in slot order)."""
    envs = iter(tasks)
    specs = [EpisodeSpec("test", i, group_id=i, seed=i) for i in range(n or len(tasks))]
    return rollout(lambda: VisualToolEnv(next(envs), split="test"), policy, None, specs,
                   RolloutConfig(batch_size=len(tasks)))


def _episode(traj: Trajectory) -> dict[str, Any]:
    """What the env saw and scored (tool latencies left out)."""
    turns = [{"text": t["text"], "observation": t["observation"],
              "calls": [{k: v for k, v in c.items() if k != "latency_s"} for c in t["tool_calls"]]}
             for t in traj.turns]
    return {"turns": turns, "reward": traj.reward, "parts": traj.reward_parts, "answer": traj.answer,
            "truncated_reason": traj.truncated_reason, "images": len(traj.images)}


def test_served_chat_template_renders_native_chats_as_the_text_form(served_models: tuple[Path, Path]) -> None:
    """The served folders' template: a text chat renders exactly as under Qwen2-VL's template, and the native
    form of a crop turn (assistant ``tool_calls``, then a ``tool`` message) renders to the same prompt as its
    text form -- so the server's model sees the same tokens in both modes."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(served_models[0], trust_remote_code=True)
    env = VisualToolEnv("visual_search", split="test")
    _, info = env.reset(seed=0, options={"split": "test", "index": 0})
    chat = list(info["messages"]) + [{"role": "assistant", "content": [{"type": "text", "text": CROP_CALL}]}]
    _, _, _, _, step = env.step(CROP_CALL)
    text_form = chat + step["messages"]
    call = {"id": "c1", "type": "function",
            "function": {"name": "crop", "arguments": {"box": [0, 0, 672, 672]}}}
    native = chat[:-1] + [{"role": "assistant", "content": [], "tool_calls": [call]},
                          {**step["messages"][0], "role": "tool", "tool_call_id": "c1"}]

    def render(messages: list[dict[str, Any]], template: str) -> str:
        return processor.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=True)

    assert render(text_form, SERVE_CHAT_TEMPLATE) == render(text_form, QWEN2_VL_CHAT_TEMPLATE)
    assert render(native, SERVE_CHAT_TEMPLATE) == render(text_form, QWEN2_VL_CHAT_TEMPLATE)
    assert CROP_CALL in render(native, SERVE_CHAT_TEMPLATE)


def test_native_tool_calls_reach_the_env_as_the_text_protocols_action(
    transformers_server: ServeProcess, served_models: tuple[Path, Path]
) -> None:
    """Native mode on the parsing server: each first reply carries ``message.tool_calls`` (no ``<tool_call>``
    in its content), yet the env receives exactly the text-protocol call, crops, and the episode goes on; the
    next request sends that turn back with the server's call id and the env's reply as a ``tool`` message with
    the same id, holding the crop's image. The trajectories equal text mode's on the server without a parser
    (where the call stays in ``content``), and text mode's on the parsing server (calls parsed regardless)."""
    parsing, plain = served_models
    tasks = ["visual_search"] * 4
    native, wire = _policy(transformers_server, parsing, "native")
    trajs = _play(native, tasks)
    schemas = [tool.schema for tool in VisualToolEnv("visual_search").tools.values()]
    assert all(body["tools"] == schemas for body, _ in wire.exchanges)
    first = [(b, r) for b, r in wire.exchanges if len(b["messages"]) == 2]
    second = [(b, r) for b, r in wire.exchanges if len(b["messages"]) > 2]
    assert len(first) == len(second) == 4
    ids = set()
    for body, reply in first:
        message = reply["choices"][0]["message"]  # type: ignore[index]
        assert "<tool_call>" not in (message.get("content") or "")
        (call,) = message["tool_calls"]
        assert call["function"]["name"] == "crop" and json.loads(call["function"]["arguments"]) == {
            "box": [0, 0, 672, 672]}
        ids.add(call["id"])
    assert len(ids) == 4  # the server's own ids, one per request
    for body, _ in second:
        assistant, tool = body["messages"][2], body["messages"][3]
        assert len(body["messages"]) == 4 and assistant["role"] == "assistant" and tool["role"] == "tool"
        (call,) = assistant["tool_calls"]
        assert call["id"] in ids and tool["tool_call_id"] == call["id"]
        kinds = [part["type"] for part in tool["content"]]
        assert kinds == ["image_url", "text"]
        assert "<tool_response>crop of image 0" in tool["content"][1]["text"]
    for traj in trajs:
        assert [t["text"] for t in traj.turns] == list(SCRIPT["visual_search"])
        assert traj.turns[0]["tool_calls"][0]["ok"] and traj.answer == "horizontal" and len(traj.images) == 2

    text_plain, plain_wire = _policy(transformers_server, plain, "text")
    text_parsing, _ = _policy(transformers_server, parsing, "text")
    assert all("tools" not in body for body, _ in plain_wire.exchanges)
    expected = [_episode(t) for t in trajs]
    assert [_episode(t) for t in _play(text_plain, tasks)] == expected
    assert all("<tool_call>" in r["choices"][0]["message"]["content"]  # type: ignore[index]
               for b, r in plain_wire.exchanges if len(b["messages"]) == 2)
    assert [_episode(t) for t in _play(text_parsing, tasks)] == expected


def test_native_mode_falls_back_to_text_when_the_server_returns_no_tool_calls(
    transformers_server: ServeProcess, served_models: tuple[Path, Path]
) -> None:
    """Native mode on the server without a parser: ``tools`` go out, no ``tool_calls`` come back, so the
    content is the action, and the turn and the env's reply go back as text (no tool message)."""
    _, plain = served_models
    policy, wire = _policy(transformers_server, plain, "native")
    trajs = _play(policy, ["visual_search"] * 2)
    assert [t["text"] for t in trajs[0].turns] == list(SCRIPT["visual_search"])
    for body, reply in wire.exchanges:
        assert "tools" in body and "tool_calls" not in reply["choices"][0]["message"]  # type: ignore[index]
        assert [m["role"] for m in body["messages"]] in (["system", "user"],
                                                         ["system", "user", "assistant", "user"])
        if len(body["messages"]) == 4:
            assert body["messages"][2]["content"] == [{"type": "text", "text": CROP_CALL}]


def test_a_request_the_server_refuses_fails_only_its_episode(
    transformers_server: ServeProcess, served_models: tuple[Path, Path]
) -> None:
    """In one batch, the spatial episode's model writes a cut-off call, which the parsing server answers with
    HTTP 400 (its parser cannot read the JSON): that episode ends with reward 0 and ``policy_error``, and the
    three visual-search episodes of the batch crop and answer. Without the parser the same call reaches the
    env, which reports the format error to the model, and the episode goes on to its answer."""
    parsing, plain = served_models
    policy, wire = _policy(transformers_server, parsing, "native")
    trajs = _play(policy, ["spatial_2d", "visual_search", "visual_search", "visual_search"])
    failed, rest = trajs[0], trajs[1:]
    assert failed.reward == 0.0 and failed.turns == [] and failed.truncated
    reason = failed.truncated_reason or ""
    assert reason.startswith("policy_error: POST ") and "HTTP 400" in reason and "parse" in reason
    assert sum(isinstance(reply, str) for _, reply in wire.exchanges) == 1  # refused at once, not retried
    for traj in rest:
        assert traj.answer == "horizontal" and traj.turns[0]["tool_calls"][0]["ok"]

    text, _ = _policy(transformers_server, plain, "text")
    (spatial,) = _play(text, ["spatial_2d"])
    assert [t["text"] for t in spatial.turns] == [CUT_CALL, "<answer>A</answer>"]
    assert "not valid JSON" in spatial.turns[0]["observation"] and spatial.answer == "A"


def _vgym_eval(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vgym.app.cli", "eval", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600, check=False)


def test_vgym_eval_against_transformers_serve_with_and_without_tool_parsing(
    transformers_server: ServeProcess, served_models: tuple[Path, Path], tmp_path: Path
) -> None:
    """``vgym eval --policy openai:URL#MODEL`` end to end, on visual search and 2-D spatial questions: with
    the parser and ``,tool_calling=native``, the spatial episodes' refused requests are counted as
    could-not-run and the visual-search episodes are scored; without the parser and the default tool calling
    (text) every episode is scored. The visual-search episodes are the same either way."""
    parsing, plain = served_models
    common = ["--suite", "visual_search", "--suite", "spatial_2d", "--n", "3", "--difficulty", "0",
              "--max-new-tokens", "48"]
    url = transformers_server.base_url
    runs = {"native": (f"openai:{url}#{parsing},tool_calling=native", tmp_path / "native"),
            "text": (f"openai:{url}#{plain}", tmp_path / "text")}
    for spec, out in runs.values():
        result = _vgym_eval("--policy", spec, "--out", str(out), *common)
        assert result.returncode == 0, result.stdout + result.stderr

    def rows(out: Path, task: str) -> list[dict[str, Any]]:
        lines = (out / "episodes.jsonl").read_text().splitlines()
        keep = ("index", "accuracy", "reward", "answer", "calls", "turns", "truncated_reason")
        return sorted(({k: v for k, v in r.items() if k in keep} for r in map(json.loads, lines)
                       if r["task"] == task), key=lambda r: r["index"])

    native, text = (json.loads((out / "report.json").read_text()) for _, out in runs.values())
    assert rows(runs["native"][1], "visual_search") == rows(runs["text"][1], "visual_search")
    searched = rows(runs["text"][1], "visual_search")
    assert all(r["answer"] == "horizontal" and r["calls"] == 1 for r in searched)
    assert native["tasks"]["spatial_2d"]["metrics"]["could_not_run"] == 3
    assert native["tasks"]["visual_search"]["metrics"]["episodes"] == 3
    assert native["overall"]["could_not_run"] == 3 and any("could not run" in n for n in native["notes"])
    assert all(r["truncated_reason"].startswith("policy_error: POST ") and "HTTP 400" in r["truncated_reason"]
               for r in rows(runs["native"][1], "spatial_2d"))
    assert text["overall"]["could_not_run"] == 0 and text["overall"]["episodes"] == 6
    assert [r["answer"] for r in rows(runs["text"][1], "spatial_2d")] == ["A"] * 3
