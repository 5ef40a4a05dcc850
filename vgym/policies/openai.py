"""A policy that plays turns through any OpenAI-compatible chat-completions endpoint (e.g. ``vllm serve``).

Contents: :class:`OpenAIPolicyConfig`, :class:`OpenAIPolicy`, :func:`to_chat_messages`,
:func:`encode_png_data_url`.

For evaluating served models. The HTTP client is the standard library (``urllib.request`` + ``json``); no
``openai`` package. Each episode's turn is one ``POST {base_url}/chat/completions`` carrying the whole chat so
far (the system message included) with every image the model has been shown, PNG-encoded as a ``data:`` URL in
the position of its ``{"type": "image"}`` item. The requests of one batch run in parallel on a small thread
pool.

The server tokenises, so the policy is text-only: :attr:`PolicyOutput.token_ids` is None and the rollout
tokenises the text itself. With ``logprobs=True`` the server's per-token log-probabilities come back in
:attr:`PolicyOutput.logprobs`; they are of the *server's* tokens, which need not align with the rollout's ids,
so they are for analysis, not for importance ratios.

A request that still fails after the retries raises :class:`~vgym.errors.VgymError` naming the URL and the
status: a failing endpoint is a broken evaluation, not an episode event.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from vgym.errors import InvalidConfigError, VgymError
from vgym.policies.base import PolicyInput, PolicyOutput

__all__ = ["OpenAIPolicyConfig", "OpenAIPolicy", "to_chat_messages", "encode_png_data_url"]

_RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
"""HTTP statuses worth retrying: timeouts, rate limits and server-side failures. Others (400, 401, 404, ...)
are the request's fault and fail at once."""

_BODY_CHARS = 500
"""Most characters of an error response quoted in a :class:`VgymError`."""


@dataclass
class OpenAIPolicyConfig:
    """Endpoint, sampling and transport settings of an :class:`OpenAIPolicy`."""

    base_url: str
    """The API root, up to and including the version, e.g. ``http://127.0.0.1:8000/v1`` for ``vllm serve``;
    requests go to ``{base_url}/chat/completions``."""
    model: str
    """The served model's name (the ``model`` field of each request)."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key, sent as ``Authorization: Bearer <key>``; no
    header when the variable is unset or empty, or when this is None. The key itself never goes into the
    config."""

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
    replace ``model`` or ``messages``."""

    # transport
    timeout_s: float = 120.0
    """Seconds to wait for one response (> 0)."""
    max_retries: int = 3
    """Retries after a connection error, timeout or HTTP 408/409/429/5xx (>= 0); other HTTP errors fail at
    once."""
    backoff_s: float = 1.0
    """Wait before the first retry, in seconds (>= 0); it doubles with each further retry."""
    max_concurrency: int = 8
    """Most requests of one batch in flight at once (>= 1)."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise InvalidConfigError(f"base_url must start with http:// or https://, got {self.base_url!r}")
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
        clash = {"model", "messages"} & set(self.extra_body)
        if clash:
            raise InvalidConfigError(f"extra_body may not set {sorted(clash)}; use the config's own fields")

    @property
    def url(self) -> str:
        """The chat-completions URL."""
        return self.base_url.rstrip("/") + "/chat/completions"


def encode_png_data_url(image: np.ndarray) -> str:
    """A ``data:image/png;base64,...`` URL of an RGB uint8 (H, W, 3) image (PNG: lossless, so pixels arrive
    exact)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_chat_messages(
    messages: Sequence[dict[str, Any]], images: Sequence[np.ndarray]
) -> list[dict[str, Any]]:
    """Convert a vgym chat to chat-completions messages.

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
    out: list[dict[str, Any]] = []
    used = 0
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        parts: list[dict[str, Any]] = []
        for item in content:
            if item["type"] == "text":
                parts.append({"type": "text", "text": item["text"]})
            elif item["type"] == "image":
                if used >= len(images):
                    raise ValueError(f"the chat has more image items than the {len(images)} images given")
                parts.append({"type": "image_url", "image_url": {"url": encode_png_data_url(images[used])}})
                used += 1
            else:
                raise ValueError(f"unknown content item type {item['type']!r}; expected 'text' or 'image'")
        out.append({"role": message["role"], "content": parts})
    if used != len(images):
        raise ValueError(f"the chat has {used} image items but {len(images)} images were given")
    return out


class OpenAIPolicy:
    """Plays turns with a model behind an OpenAI-compatible chat-completions endpoint (text-only outputs).

    >>> policy = OpenAIPolicy(OpenAIPolicyConfig("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-VL-3B-Instruct"))
    >>> policy.config.url
    'http://127.0.0.1:8000/v1/chat/completions'
    """

    def __init__(self, config: OpenAIPolicyConfig) -> None:
        """Args:
        config: endpoint, sampling and transport settings.
        """
        self.config = config
        self.rng = np.random.default_rng(config.seed if config.seed is not None else 0)

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        """Request one turn for every episode in ``batch`` (up to ``max_concurrency`` requests at once).

        Returns:
            Outputs in batch order: ``text`` is the reply's ``message.content``; ``token_ids`` is None;
            ``logprobs`` the reply's per-token log-probabilities when asked for and given, else None.

        Raises:
            VgymError: if a request still fails after the retries, or a reply is not a chat completion.
        """
        # seeds are drawn here, in batch order, so results do not depend on which thread finishes first
        seeds = [int(self.rng.integers(2**31)) if self.config.seed is not None else None for _ in batch]
        bodies = [self._request_body(item, seed) for item, seed in zip(batch, seeds)]
        if len(bodies) <= 1:
            return [self._complete(body) for body in bodies]
        with ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, len(bodies))) as pool:
            return list(pool.map(self._complete, bodies))

    def _request_body(self, item: PolicyInput, seed: int | None) -> dict[str, Any]:
        cfg = self.config
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": to_chat_messages(item.messages, item.images),
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_tokens,
        }
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

    def _complete(self, body: dict[str, Any]) -> PolicyOutput:
        reply = self._post(body)
        url = self.config.url
        try:
            choice = reply["choices"][0]
            text = choice["message"].get("content") or ""
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
        if not isinstance(text, str):
            raise VgymError(f"POST {url} answered a non-string message content: {text!r:.{_BODY_CHARS}}")
        return PolicyOutput(text=text, token_ids=None, logprobs=logprobs)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body``; retry connection errors, timeouts and retryable statuses with exponential
        backoff."""
        cfg = self.config
        data = json.dumps(body).encode("utf-8")
        attempts = cfg.max_retries + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(cfg.url, data=data, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as e:  # (a subclass of URLError: caught first)
                detail = e.read().decode("utf-8", "replace")[:_BODY_CHARS]
                last = f"HTTP {e.code} {e.reason}: {detail}"
                if e.code not in _RETRY_STATUSES:
                    raise VgymError(
                        f"POST {cfg.url} failed with {last} (not retried: the request itself was rejected; "
                        "check "
                        f"base_url, model={cfg.model!r}, the API key in ${cfg.api_key_env} and the request "
                        "fields)"
                    ) from e
                continue
            # refused, reset, timeout, cut
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                last = f"{type(reason).__name__}: {reason}"
                continue
            try:
                return json.loads(raw)
            except json.JSONDecodeError as e:
                raise VgymError(f"POST {cfg.url} answered invalid JSON: {raw[:_BODY_CHARS]!r}") from e
        raise VgymError(
            f"POST {cfg.url} failed after {attempts} attempts (max_retries={cfg.max_retries}); last error: "
            f"{last}. "
            "Is the server running and reachable at base_url?"
        )
