"""A policy that plays turns through any OpenAI-compatible chat-completions endpoint (``vllm serve``,
``transformers serve``, a hosted API), with the server's native tool calling or vgym's text protocol.

Contents: :data:`TOOL_CALLING_MODES`, :class:`OpenAIPolicyConfig`, :class:`OpenAIPolicy`.

For evaluating served models. The HTTP client is the standard library (``urllib.request`` + ``json``); no
``openai`` package. Each episode's turn is one ``POST {base_url}/chat/completions`` carrying the whole chat so
far (the system message included) with every image the model has been shown as a PNG ``data:`` URL. The
requests of one batch run in parallel on a small thread pool.

**Tool calls** (:attr:`OpenAIPolicyConfig.tool_calling`; the message forms are in
:mod:`vgym.policies.openai_messages`):

- ``"native"``: each request carries the env's tool schemas as ``tools``, and a reply's
  ``message.tool_calls`` are read; that turn then goes back in later requests as the server returned it
  (``tool_calls`` with the server's ids), and the env's reply as ``tool`` messages with the matching
  ``tool_call_id``. A reply without ``tool_calls`` (a server that does not parse calls) falls back to the text
  protocol: its content is the action and the turn goes back as text.
- ``"text"`` (the default): no ``tools``; the chat goes exactly as vgym wrote it. Tool calls that a server
  parses anyway (``transformers serve`` does for every Qwen model) are read too.
- ``"auto"``: native; when the server refuses a request that carries ``tools`` with an HTTP 4xx (not
  retried) and accepts the same chat in the text form, the policy goes on in the text form.

Why text is the default: it is the prompt a model trained by vgym saw (vgym's chat encoder never renders
``tools``), it works with every server, and the chat templates of Qwen2-VL and Qwen2.5-VL (their
``chat_template.json``) render neither ``tool_calls`` nor ``tools``: in the native form an assistant turn that
called a tool would reach such a model empty. Choose ``"native"`` for models whose template renders tool calls
(Qwen3-VL, hosted APIs).

Either way the env receives the same action for the same completion: tool calls are written back as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` after the reply's content
(:func:`~vgym.policies.openai_messages.action_text`), so trajectories and rewards do not depend on whether the
server parsed them. (What the model *sees* can: the server's chat template renders ``tools``, tool calls and
tool messages its own way.)

**Errors.** Connection errors, timeouts and HTTP 408/409/429/5xx are retried with exponential backoff. A
request the server still refuses (any other 4xx at once, or a retryable status or timeout after the retries)
fails *that episode*: its :class:`PolicyOutput` carries the error, and the rollout records it and plays the
rest of the batch. Failures that no episode can get past raise :class:`~vgym.errors.VgymError`: HTTP 401, 403
and 404 (key, permission, URL), a server that cannot be reached after the retries, and a reply that is not a
chat completion.

The server tokenises, so the policy is text-only: :attr:`PolicyOutput.token_ids` is None and the rollout
tokenises the text itself. With ``logprobs=True`` the server's per-token log-probabilities come back in
:attr:`PolicyOutput.logprobs`; they are of the *server's* tokens, which need not align with the rollout's ids,
so they are for analysis, not for importance ratios.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vgym.errors import InvalidConfigError, VgymError
from vgym.policies.base import PolicyInput, PolicyOutput
from vgym.policies.openai_messages import (
    TOOL_IMAGE_MODES,
    NativeTurn,
    action_text,
    to_chat_messages,
    to_native_messages,
)
from vgym.protocol import ActionProtocol, HermesProtocol

__all__ = ["TOOL_CALLING_MODES", "OpenAIPolicyConfig", "OpenAIPolicy"]

logger = logging.getLogger(__name__)

TOOL_CALLING_MODES = ("auto", "native", "text")
"""Values of :attr:`OpenAIPolicyConfig.tool_calling`."""

_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
"""HTTP statuses worth retrying: timeouts, rate limits and server-side failures."""

_RUN_STATUSES = frozenset({401, 403, 404})
"""HTTP statuses no episode can get past (API key, permission, URL or route): they raise at once."""

_BODY_CHARS = 500
"""Most characters of an error response quoted in an error message."""

_NATIVE_TURNS_KEPT = 16_384
"""Most native turns an :class:`OpenAIPolicy` remembers (the oldest are forgotten first; a forgotten turn goes
back in the text form). Each is a few hundred bytes."""


class _Refused(Exception):
    """The server refused one request (an HTTP status, or timeouts, after retries): the episode's error.

    Attributes:
        at_once: refused with a 4xx that is not retried (the request's content), not after retries.
    """

    def __init__(self, message: str, *, at_once: bool) -> None:
        super().__init__(message)
        self.at_once = at_once


@dataclass
class OpenAIPolicyConfig:
    """Endpoint, tool-calling, sampling and transport settings of an :class:`OpenAIPolicy`."""

    base_url: str
    """The API root, up to and including the version, e.g. ``http://127.0.0.1:8000/v1`` for ``vllm serve``;
    requests go to ``{base_url}/chat/completions``."""
    model: str
    """The served model's name (the ``model`` field of each request)."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key, sent as ``Authorization: Bearer <key>``; no
    header when the variable is unset or empty, or when this is None. The key itself never goes into the
    config."""

    # tool calls
    tool_calling: str = "text"
    """``"text"`` (default): no ``tools``, the chat exactly as vgym wrote it (the prompt of a model trained on
    vgym's text protocol; works with every server and chat template), tool calls a server parses anyway read
    back; ``"native"``: send the env's tool schemas as ``tools``, read ``message.tool_calls`` and send them
    back with tool messages (for chat templates that render tool calls: Qwen3-VL, hosted APIs), falling back
    to the text protocol for a reply without them; ``"auto"``: native, switching to text for good when the
    server refuses ``tools`` (HTTP 4xx) but takes the same chat without them. See the module docstring."""
    tool_images: str = "tool"
    """Native form: where a tool reply's images go. ``"tool"`` (default): into the ``tool`` message as
    ``image_url`` parts (``vllm serve`` and ``transformers serve`` take them); ``"user"``: into a user message
    right after the text-only tool message, for APIs that take only text in tool messages."""

    # sampling
    temperature: float = 0.0
    """Sampling temperature; 0 (the default, for evaluation) asks for greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass (Holtzman et al., 2019, arXiv:1904.09751), in (0, 1]; 1.0 disables it."""
    max_tokens: int = 512
    """Most tokens the server generates in one turn (``max_tokens``), >= 1."""
    seed: int | None = 0
    """Seeds the policy's generator, which draws one ``seed`` per request (so the episodes of a GRPO group do
    not share a sampling seed); None sends no seed. Servers may ignore it."""
    logprobs: bool = False
    """Ask for the sampled tokens' log-probabilities (``logprobs: true, top_logprobs: 0``) and return them in
    :attr:`PolicyOutput.logprobs` when the server gives them."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Further request fields merged into every request body (e.g. vLLM's ``{"top_k": 20}``); they may not
    replace ``model``, ``messages`` or ``tools``."""

    # transport
    timeout_s: float = 120.0
    """Seconds to wait for one response (> 0)."""
    max_retries: int = 3
    """Retries after a connection error, timeout or HTTP 408/409/429/5xx (>= 0); other HTTP errors are not
    retried."""
    backoff_s: float = 1.0
    """Wait before the first retry, in seconds (>= 0); it doubles with each further retry."""
    max_concurrency: int = 8
    """Most requests of one batch in flight at once (>= 1)."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise InvalidConfigError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.tool_calling not in TOOL_CALLING_MODES:
            raise InvalidConfigError(f"tool_calling must be one of {TOOL_CALLING_MODES}, got "
                                     f"{self.tool_calling!r}")
        if self.tool_images not in TOOL_IMAGE_MODES:
            raise InvalidConfigError(f"tool_images must be one of {TOOL_IMAGE_MODES}, got "
                                     f"{self.tool_images!r}")
        if self.max_tokens < 1 or self.temperature < 0 or not 0 < self.top_p <= 1:
            raise InvalidConfigError(
                "need max_tokens >= 1, temperature >= 0 and 0 < top_p <= 1; got "
                f"{self.max_tokens}, {self.temperature}, {self.top_p}"
            )
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0 or self.max_concurrency < 1:
            raise InvalidConfigError(
                "need timeout_s > 0, max_retries >= 0, backoff_s >= 0 and max_concurrency >= 1; got "
                f"{self.timeout_s}, {self.max_retries}, {self.backoff_s}, {self.max_concurrency}"
            )
        clash = {"model", "messages", "tools"} & set(self.extra_body)
        if clash:
            raise InvalidConfigError(f"extra_body may not set {sorted(clash)}; use the config's own fields")

    @property
    def url(self) -> str:
        """The chat-completions URL."""
        return self.base_url.rstrip("/") + "/chat/completions"


class OpenAIPolicy:
    """Plays turns with a model behind an OpenAI-compatible chat-completions endpoint (text-only outputs).

    >>> policy = OpenAIPolicy(OpenAIPolicyConfig("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-VL-3B-Instruct"))
    >>> policy.config.url, policy.config.tool_calling
    ('http://127.0.0.1:8000/v1/chat/completions', 'text')
    """

    def __init__(self, config: OpenAIPolicyConfig, *, protocol: ActionProtocol | None = None) -> None:
        """Args:
        config: endpoint, tool-calling, sampling and transport settings.
        protocol: writes a reply's tool calls as the env's action text; defaults to
            :class:`~vgym.protocol.HermesProtocol` (the env's default).
        """
        self.config = config
        self.protocol = protocol or HermesProtocol()
        self.rng = np.random.default_rng(config.seed if config.seed is not None else 0)
        self.tools_refused = False
        """``tool_calling="auto"``: set once the server refused ``tools`` and took the text form instead."""
        # (episode id, turn, action text) -> the server's reply, for the native form of later requests
        self._native: collections.OrderedDict[tuple[str, int, str], NativeTurn] = collections.OrderedDict()

    @property
    def sends_tools(self) -> bool:
        """Whether the next requests use the native form (``tools`` and tool messages)."""
        mode = self.config.tool_calling
        return mode == "native" or (mode == "auto" and not self.tools_refused)

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        """Request one turn for every episode in ``batch`` (up to ``max_concurrency`` requests at once).

        Returns:
            Outputs in batch order: ``text`` is the env action (the reply's content, then its tool calls in
            the text protocol); ``token_ids`` is None; ``logprobs`` the reply's per-token log-probabilities
            when asked for and given, else None; ``error`` set (and ``text`` "") for an episode whose request
            the server refused (see the module docstring).

        Raises:
            VgymError: for HTTP 401/403/404, a server that cannot be reached after the retries, or a reply
                that is not a chat completion.
        """
        # seeds are drawn here, in batch order, so results do not depend on which thread finishes first
        seeds = [int(self.rng.integers(2**31)) if self.config.seed is not None else None for _ in batch]
        if len(batch) <= 1:
            results = [self._play(item, seed) for item, seed in zip(batch, seeds)]
        else:
            with ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, len(batch))) as pool:
                results = list(pool.map(self._play, batch, seeds))
        for item, (output, native) in zip(batch, results):
            if native is not None:  # kept here, in the caller's thread, after every request has finished
                self._native[(item.episode_id, item.turn, output.text)] = native
                while len(self._native) > _NATIVE_TURNS_KEPT:
                    self._native.popitem(last=False)
        return [output for output, _ in results]

    def _play(self, item: PolicyInput, seed: int | None) -> tuple[PolicyOutput, NativeTurn | None]:
        """One episode's turn: the output, and the reply to remember when it came back with tool calls."""
        native = self.sends_tools and bool(item.tool_schemas)
        try:
            reply = self._post(self._request_body(item, seed, native))
        except _Refused as refused:
            if not (native and refused.at_once and self.config.tool_calling == "auto"):
                return PolicyOutput(text="", error=str(refused)), None
            try:
                reply = self._post(self._request_body(item, seed, False))
            except _Refused:
                return PolicyOutput(text="", error=f"{refused} (refused without `tools` too)"), None
            if not self.tools_refused:
                logger.warning("%s refused a request with `tools` (%s) and took it without: "
                               "tool_calling='auto' goes on in the text form", self.config.url, refused)
            self.tools_refused, native = True, False
        return self._read(reply, native)

    def _request_body(self, item: PolicyInput, seed: int | None, native: bool) -> dict[str, Any]:
        cfg = self.config
        if native:
            def remembered(turn: int, text: str) -> NativeTurn | None:
                return self._native.get((item.episode_id, turn, text))

            messages = to_native_messages(item.messages, item.images, remembered, tool_images=cfg.tool_images)
        else:
            messages = to_chat_messages(item.messages, item.images)
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": messages,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_tokens,
        }
        if native:
            body["tools"] = list(item.tool_schemas)
        if seed is not None:
            body["seed"] = seed
        if cfg.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = 0
        body.update(cfg.extra_body)
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _read(self, reply: dict[str, Any], native: bool) -> tuple[PolicyOutput, NativeTurn | None]:
        """A chat completion -> the output (and, in the native form, the turn to remember)."""
        url = self.config.url
        try:
            choice = reply["choices"][0]
            message = choice["message"]
            content = message.get("content") or ""
            calls = message.get("tool_calls") or []
            if not isinstance(content, str) or not isinstance(calls, list):
                raise TypeError(f"content {type(content).__name__}, tool_calls {type(calls).__name__}")
            text = action_text(content, calls, self.protocol)
            logprobs = None
            if (
                self.config.logprobs
                and choice.get("logprobs")
                and choice["logprobs"].get("content") is not None
            ):
                logprobs = [float(t["logprob"]) for t in choice["logprobs"]["content"]]
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
            raise VgymError(
                f"POST {url} answered something that is not a chat completion ({type(e).__name__}: {e}): "
                f"{json.dumps(reply)[:_BODY_CHARS]}"
            ) from e
        turn = NativeTurn(content, tuple(calls)) if native and calls else None
        return PolicyOutput(text=text, token_ids=None, logprobs=logprobs), turn

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body``; retry connection errors, timeouts and retryable statuses with exponential backoff.

        Raises:
            _Refused: the server refused this request (see the module docstring).
            VgymError: HTTP 401/403/404, no connection after the retries, or a reply that is not JSON.
        """
        cfg = self.config
        data = json.dumps(body).encode("utf-8")
        attempts = cfg.max_retries + 1
        last, answered = "", False
        for attempt in range(attempts):
            if attempt:
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(cfg.url, data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as e:  # (a subclass of URLError: caught first)
                detail = e.read().decode("utf-8", "replace")[:_BODY_CHARS]
                last, answered = f"HTTP {e.code} {e.reason}: {detail}", True
                if e.code in _RUN_STATUSES:
                    raise VgymError(
                        f"POST {cfg.url} failed with {last} (check base_url, model={cfg.model!r} and the API "
                        f"key in ${cfg.api_key_env})"
                    ) from e
                if e.code not in _RETRY_STATUSES:
                    raise _Refused(f"POST {cfg.url} failed with {last} (not retried: the server refused this "
                                   "request)", at_once=True) from e
                continue
            # refused, reset, timeout, cut
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                last = f"{type(reason).__name__}: {reason}"
                answered = isinstance(reason, TimeoutError)  # it connected, and this request took too long
                continue
            try:
                return json.loads(raw)
            except json.JSONDecodeError as e:
                raise VgymError(f"POST {cfg.url} answered invalid JSON: {raw[:_BODY_CHARS]!r}") from e
        where = (f"POST {cfg.url} failed after {attempts} attempts (max_retries={cfg.max_retries}); last "
                 f"error: {last}")
        if answered:
            raise _Refused(where, at_once=False)
        raise VgymError(f"{where}. Is the server running and reachable at base_url?")
