"""Tests of vgym/policies/openai.py against a real HTTP server on 127.0.0.1 that speaks the chat-completions
schema, backed by the tiny Qwen2-VL: rollouts, exact pixels and messages on the wire, retries, errors, auth
and log-probs."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vgym.env import VisualToolEnv
from vgym.errors import InvalidConfigError, VgymError
from vgym.policies.base import PolicyInput, PolicyOutput, reads_ground_truth
from vgym.policies.hf import GenerationConfig, HFPolicy
from vgym.policies.openai import OpenAIPolicy, OpenAIPolicyConfig
from vgym.rollout.chat import ChatEncoder
from vgym.rollout.loop import EpisodeSpec, rollout

# the server's limit too: a request above it gets HTTP 400 (as vLLM answers a too-long request)
MAX_TOKENS = 16
MODEL = "tiny-qwen2-vl"


# ---------------------------------------------------------------- the test server


@dataclass
class Received:
    """One request as the server saw it."""

    headers: dict[str, str]
    body: dict[str, Any]
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The chat converted back to vgym form (images as ``{"type": "image"}``)."""
    images: list[np.ndarray] = field(default_factory=list)
    """The decoded data-URL images, in order."""


class ChatServer:
    """``POST /v1/chat/completions`` served by the tiny model: the chat is templated with the processor's chat
    template (the same :class:`ChatEncoder` prompt path as a first turn) and played by :class:`HFPolicy`."""

    def __init__(self, model: Any, processor: Any, *, fail_first: int = 0, fail_status: int = 503,
                 refuse_tools: bool = False, delay_s: float = 0.0) -> None:
        self.model, self.processor = model, processor
        self.encoder = ChatEncoder(processor)
        self.fail_first, self.fail_status = fail_first, fail_status
        self.refuse_tools = refuse_tools  # answer a request with `tools` 400, as vLLM without a tool parser
        self.delay_s = delay_s  # wait this long before answering (a slow server)
        self.received: list[Received] = []
        self._lock = threading.Lock()  # one generation at a time (the model is shared by the handler threads)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.received.append(Received(dict(self.headers), body))
                    n = len(server.received)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if n <= server.fail_first:
                    return self._send(server.fail_status, {"error": {"message": "overloaded, try again"}})
                time.sleep(server.delay_s)
                if server.refuse_tools and "tools" in body:
                    return self._send(400, {"error": {"message": '"auto" tool choice requires '
                                                      "--enable-auto-tool-choice and --tool-call-parser"}})
                if body.get("max_tokens", MAX_TOKENS) > MAX_TOKENS:
                    return self._send(400, {"error": {"message": f"max_tokens must be <= {MAX_TOKENS}"}})
                with server._lock:
                    reply = server._complete(body, server.received[n - 1])
                self._send(200, reply)

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout test)

        return Handler

    def _complete(self, body: dict[str, Any], record: Received) -> dict[str, Any]:
        for message in body["messages"]:
            content = message["content"]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            parts = []
            for part in content:
                if part["type"] == "image_url":
                    url = part["image_url"]["url"]
                    assert url.startswith("data:image/png;base64,")
                    png = base64.b64decode(url.split(",", 1)[1])
                    record.images.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            record.messages.append({"role": message["role"], "content": parts})
        encoded = self.encoder.encode_prompt(record.messages, record.images)
        gen = GenerationConfig(max_new_tokens=body["max_tokens"], temperature=body.get("temperature", 1.0),
                               top_p=body.get("top_p", 1.0))
        policy = HFPolicy(self.model, self.processor, gen, seed=body.get("seed", 0))
        item = PolicyInput(encoded.input_ids, encoded.pixel_values, encoded.image_grid_thw, record.messages,
                           turn=0, tools_enabled=True)
        out = policy.act([item])[0]
        ids, lps = out.token_ids or [], out.logprobs or []
        stopped = bool(ids) and ids[-1] in policy.eos_ids
        if stopped:  # like OpenAI: the end-of-turn token is neither in the content nor in the log-probs
            ids, lps = ids[:-1], lps[:-1]
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": out.text},
                                  "finish_reason": "stop" if stopped else "length"}
        if body.get("logprobs"):
            tok = self.processor.tokenizer
            choice["logprobs"] = {"content": [{"token": tok.decode([i]), "logprob": lp, "top_logprobs": []}
                                              for i, lp in zip(ids, lps)]}
        prompt_tokens = len(encoded.input_ids)
        return {"id": f"chatcmpl-{len(self.received)}", "object": "chat.completion", "model": body["model"],
                "choices": [choice],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(out.token_ids or []),
                          "total_tokens": prompt_tokens + len(out.token_ids or [])}}


@pytest.fixture
def serve(tiny) -> Iterator[Callable[..., ChatServer]]:  # type: ignore[no-untyped-def]
    """Starts chat servers on free 127.0.0.1 ports (``serve(fail_first=2)``); all are shut down afterwards."""
    model, processor = tiny
    servers: list[ChatServer] = []

    def start(**kwargs: Any) -> ChatServer:
        servers.append(ChatServer(model, processor, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _config(base_url: str, **kwargs: Any) -> OpenAIPolicyConfig:
    kwargs = {"max_tokens": MAX_TOKENS, "backoff_s": 0.01, **kwargs}
    return OpenAIPolicyConfig(base_url, MODEL, **kwargs)


def _first_turn(processor: Any, index: int = 0) -> PolicyInput:
    """A first-turn input exactly as the rollout builds it."""
    env = VisualToolEnv("visual_search")
    obs, info = env.reset(seed=0, options={"split": "train", "index": index})
    enc = ChatEncoder(processor).encode_prompt(info["messages"], obs["images"])
    return PolicyInput(enc.input_ids, enc.pixel_values, enc.image_grid_thw, info["messages"], 0,
                       env.tools_enabled, list(obs["images"]),
                       tool_schemas=tuple(tool.schema for tool in env.tools.values()))


def _greedy(tiny: Any, item: PolicyInput) -> PolicyOutput:
    """The tiny model's greedy turn on the rollout's own ids and pixels (batch of one, as the server runs)."""
    model, processor = tiny
    return HFPolicy(model, processor, GenerationConfig(max_new_tokens=MAX_TOKENS, temperature=0.0)).act(
        [item]
    )[0]


class Recorder:
    """Delegates to a policy and keeps copies of every input and output."""

    def __init__(self, inner: OpenAIPolicy) -> None:
        self.inner = inner
        self.reads_ground_truth = reads_ground_truth(inner)  # what the wrapped policy is given, no more
        self.calls: list[tuple[PolicyInput, PolicyOutput]] = []

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        outputs = self.inner.act(batch)
        self.calls += [(copy.deepcopy(item), out) for item, out in zip(batch, outputs)]
        return outputs


# ---------------------------------------------------------------- tests


def test_rollout_through_the_server_matches_the_local_model(tiny, serve) -> None:
    """Three episodes in one lockstep batch over HTTP: the server receives each turn's exact chat and pixels,
    and every turn's text equals the tiny model's own greedy turn on the rollout's ids -- so system prompt,
    user and assistant turns and images all arrive intact and in order."""
    _, processor = tiny
    server = serve()
    recorder = Recorder(OpenAIPolicy(_config(server.base_url, max_concurrency=3)))
    specs = [EpisodeSpec("train", i, group_id=i, seed=i) for i in range(3)]
    trajs = rollout(lambda: VisualToolEnv("visual_search"), recorder, ChatEncoder(processor), specs)

    assert len(trajs) == 3 and len(server.received) == len(recorder.calls) >= 3
    assert sum(t.num_turns for t in trajs) == len(recorder.calls)
    assert any(t.num_turns > 1 for t in trajs)  # multi-turn chats (assistant messages) went over the wire too
    seeds = [r.body["seed"] for r in server.received]
    assert len(set(seeds)) == len(seeds)  # one sampling seed per request
    for item, out in recorder.calls:
        matches = [r for r in server.received if r.messages == item.messages]
        assert len(matches) == 1
        assert matches[0].messages[0]["role"] == "system"
        assert len(matches[0].images) == len(item.images) >= 1
        for got, shown in zip(matches[0].images, item.images):
            np.testing.assert_array_equal(got, shown)  # PNG over the wire: exact pixels
        assert out.token_ids is None and out.logprobs is None
        assert out.text == _greedy(tiny, item).text
    for traj in trajs:
        texts = [t["text"] for t in traj.turns]
        assert texts == [out.text for item, out in recorder.calls if item.episode_id == traj.sample_id]
        assert int(traj.loss_mask.sum()) > 0


def test_logprobs_are_parsed(tiny, serve) -> None:
    """``logprobs=True`` asks for them and returns the server's per-token values (the tiny model's greedy
    log-probs without the end-of-turn token); without it nothing is asked and None comes back."""
    _, processor = tiny
    server = serve()
    item = _first_turn(processor)
    out = OpenAIPolicy(_config(server.base_url, logprobs=True)).act([item])[0]
    assert server.received[0].body["logprobs"] is True and server.received[0].body["top_logprobs"] == 0
    ref = _greedy(tiny, item)
    n = len(ref.token_ids) - (ref.token_ids[-1] in HFPolicy(*tiny).eos_ids)  # type: ignore[index]
    assert out.logprobs is not None and len(out.logprobs) == n >= 1
    torch.testing.assert_close(torch.tensor(out.logprobs), torch.tensor(ref.logprobs[:n]))  # type: ignore[index]
    plain = OpenAIPolicy(_config(server.base_url)).act([item])[0]
    assert "logprobs" not in server.received[1].body and plain.logprobs is None
    assert plain.text == out.text == ref.text


@pytest.mark.parametrize("status", [503, 429])
def test_retries_then_succeeds(tiny, serve, status: int) -> None:
    """The first two requests fail with a retryable status; the third (second retry) answers."""
    _, processor = tiny
    server = serve(fail_first=2, fail_status=status)
    item = _first_turn(processor)
    out = OpenAIPolicy(_config(server.base_url, max_retries=2)).act([item])[0]
    assert len(server.received) == 3
    assert out.text == _greedy(tiny, item).text


def test_retries_exhausted_fail_that_episode_with_a_clear_error(tiny, serve) -> None:
    """A server that keeps answering 503 fails the episode after the retries (the batch's others go on, see
    tests/policies/test_openai_serve.py): the output's error names the URL, the attempts and the status."""
    _, processor = tiny
    server = serve(fail_first=5, fail_status=503)
    out = OpenAIPolicy(_config(server.base_url, max_retries=2)).act([_first_turn(processor)])[0]
    assert out.text == "" and out.error is not None
    assert re.search(r"POST .*127\.0\.0\.1.*/v1/chat/completions failed after 3 attempts.*503", out.error)
    assert len(server.received) == 3


def test_bad_request_fails_that_episode_at_once_with_url_status_and_message(tiny, serve) -> None:
    """A 400 is the request's fault: no retry, and the episode's error names the URL, the status and the
    server's reason. (``tool_calling="auto"`` would try the chat once more without ``tools``, see below; the
    default, text, sends none.)"""
    _, processor = tiny
    server = serve()
    config = _config(server.base_url, max_tokens=MAX_TOKENS + 1, max_retries=3, tool_calling="native")
    out = OpenAIPolicy(config).act(
        [_first_turn(processor)]
    )[0]
    assert out.error is not None and re.search(
        rf"POST {server.base_url}/chat/completions failed with HTTP 400.*max_tokens must be <= {MAX_TOKENS}",
        out.error)
    assert len(server.received) == 1


def test_a_request_that_keeps_timing_out_fails_that_episode(tiny, serve) -> None:
    """The server is up but this request takes longer than ``timeout_s`` every time: after the retries it is
    the episode's error, not the run's."""
    _, processor = tiny
    server = serve(delay_s=0.5)
    policy = OpenAIPolicy(_config(server.base_url, timeout_s=0.1, max_retries=1))
    out = policy.act([_first_turn(processor)])[0]
    assert out.error is not None and "failed after 2 attempts" in out.error and "timed out" in out.error


@pytest.mark.parametrize("status", [401, 403, 404])
def test_key_permission_and_url_errors_stop_the_run(tiny, serve, status: int) -> None:
    """No episode gets past a wrong key, permission or URL: those raise at once instead of failing every
    episode one by one."""
    _, processor = tiny
    server = serve(fail_first=1, fail_status=status)
    with pytest.raises(VgymError, match=rf"failed with HTTP {status}.*check base_url"):
        OpenAIPolicy(_config(server.base_url, max_retries=3)).act([_first_turn(processor)])
    assert len(server.received) == 1


def test_unreachable_port_fails_after_retries(tiny) -> None:
    _, processor = tiny
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(VgymError, match=rf"POST {url}/chat/completions failed after 3 attempts.*[Rr]efused"):
        OpenAIPolicy(_config(url, max_retries=2)).act([_first_turn(processor)])


def test_authorization_header_comes_from_the_named_env_var(
    tiny, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, processor = tiny
    server = serve()
    item = _first_turn(processor)
    policy = OpenAIPolicy(_config(server.base_url, api_key_env="VGYM_TEST_API_KEY"))
    monkeypatch.setenv("VGYM_TEST_API_KEY", "sk-test-123")
    policy.act([item])
    monkeypatch.delenv("VGYM_TEST_API_KEY")
    policy.act([item])
    assert server.received[0].headers.get("Authorization") == "Bearer sk-test-123"
    assert "Authorization" not in server.received[1].headers


def test_auto_tool_calling_goes_on_in_text_when_the_server_refuses_tools(tiny, serve) -> None:
    """``tool_calling="auto"`` sends ``tools``; a server that refuses them (HTTP 400, as vLLM without
    ``--enable-auto-tool-choice``) gets the same chat without, and the policy stays in the text form after;
    ``"native"`` reports the refusal as the episode's error instead, and ``"text"`` never sends tools."""
    _, processor = tiny
    item = _first_turn(processor)
    server = serve(refuse_tools=True)
    auto = OpenAIPolicy(_config(server.base_url, tool_calling="auto"))
    out = auto.act([item])[0]
    assert ["tools" in r.body for r in server.received] == [True, False] and auto.tools_refused
    assert out.error is None and out.text == _greedy(tiny, item).text
    auto.act([item])
    assert "tools" not in server.received[2].body and len(server.received) == 3
    native = OpenAIPolicy(_config(server.base_url, tool_calling="native")).act([item])[0]
    assert len(server.received) == 4  # no second try
    assert native.error is not None and "enable-auto-tool-choice" in native.error
    OpenAIPolicy(_config(server.base_url)).act([item])  # the default, text
    assert "tools" not in server.received[4].body


def test_openai_spec_options_reach_the_policy_config() -> None:
    from vgym.policies.spec import make_policy

    policy = make_policy("openai:http://h/v1#m,tool_calling=text,tool_images=user").make(7)
    config = policy.config
    assert (config.model, config.tool_calling, config.tool_images) == ("m", "text", "user")
    assert policy.config.seed == 7 and make_policy("openai:http://h/v1").make(0).config.tool_calling == "text"
    with pytest.raises(InvalidConfigError, match="did you mean 'tool_calling'"):
        make_policy("openai:http://h/v1#m,tool_caling=text")
    with pytest.raises(InvalidConfigError, match="tool_calling must be one of"):
        make_policy("openai:http://h/v1#m,tool_calling=yes")


def test_config_rejects_bad_values() -> None:
    with pytest.raises(InvalidConfigError, match="http"):
        OpenAIPolicyConfig("127.0.0.1:8000/v1", MODEL)
    with pytest.raises(InvalidConfigError, match="max_retries >= 0"):
        OpenAIPolicyConfig("http://x/v1", MODEL, max_retries=-1)
    with pytest.raises(InvalidConfigError, match="extra_body may not set"):
        OpenAIPolicyConfig("http://x/v1", MODEL, extra_body={"messages": []})
    with pytest.raises(InvalidConfigError, match="tool_images must be one of"):
        OpenAIPolicyConfig("http://x/v1", MODEL, tool_images="inline")


def test_vgym_eval_through_the_server_scores_as_the_local_model(tiny_dir, serve, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``vgym eval --policy openai:URL#model`` end to end: greedy attempts over HTTP score episode for episode
    as ``hf:DIR`` does (same model behind the server), and the server saw one request per model turn."""
    from vgym.eval.evaluate import EvalConfig, run_eval

    server = serve()
    common = {"suite": ("visual_search", "spatial_2d"), "n": 3, "k": 1, "max_new_tokens": MAX_TOKENS,
              "difficulties": (0,)}
    remote = run_eval(EvalConfig(policy=f"openai:{server.base_url}#{MODEL}", **common), tmp_path / "remote")
    local = run_eval(EvalConfig(policy=f"hf:{tiny_dir}", device="cpu", **common), tmp_path / "local")

    def rows(folder: str) -> list[dict[str, Any]]:
        lines = (tmp_path / folder / "episodes.jsonl").read_text().splitlines()
        keep = ("task", "index", "accuracy", "reward", "answer", "calls", "turns", "truncated_reason")
        return [{k: v for k, v in json.loads(line).items() if k in keep} for line in lines]

    assert rows("remote") == rows("local") and len(rows("remote")) == 6
    assert len(server.received) == sum(r["turns"] for r in rows("remote"))
    assert all(r.body["model"] == MODEL and r.body["temperature"] == 0.0 for r in server.received)
    assert remote["overall"]["avg_at_k"] == local["overall"]["avg_at_k"]
    assert remote["overall"]["tokens"] is None  # text-only policies report no token counts
