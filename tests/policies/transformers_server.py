"""A real OpenAI-compatible server for the tests: ``transformers serve`` (transformers' own CLI) on 127.0.0.1,
serving the tiny Qwen2-VL taught to call crop.

Contents: :data:`SCRIPT`, :data:`SERVE_CHAT_TEMPLATE`, :data:`TEXT_ONLY_RESPONSE_TEMPLATE`,
:class:`ScriptedTeacher`, :func:`teach_tiny_model`, :func:`write_served_folders`, :class:`ServeProcess`.

The model: the tiny model (random weights, real Qwen2-VL classes, locally trained tokenizer) after a short SFT
on a scripted teacher (:data:`SCRIPT`): on visual search it calls crop, then answers; on 2-D spatial questions
it writes a tool call whose JSON is cut off (a malformed call, which ``transformers serve``'s tool-call parser
answers with HTTP 400), then answers. Greedy, it plays the script on held-out samples.

Two folders of the same weights, which one server serves by path:

- *tool parsing*: ``transformers serve`` parses ``<tool_call>`` JSON into ``message.tool_calls`` for every
  Qwen model type (its built-in response template). The chat template, Qwen2-VL's, is extended the way
  Qwen2.5/Qwen3 templates support tools (:data:`SERVE_CHAT_TEMPLATE`): an assistant's ``tool_calls`` render
  as vgym writes calls, and a ``tool`` message as a user turn, so the native chat renders to the same tokens
  as the text form.
- *no tool parsing*: the tokenizer declares a response template with content only
  (:data:`TEXT_ONLY_RESPONSE_TEMPLATE`), so the server returns the model's text as ``content``, as a server
  without a tool-call parser does.

The tiny processor class lives in vgym; the folders name it through ``auto_map`` and a one-line module, and
the server loads it with ``--trust-remote-code`` (without it, the server would fall back to the bare
tokenizer and drop the images).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vgym.policies.base import PolicyInput, PolicyOutput

CROP_CALL = '<tool_call>{"name": "crop", "arguments": {"box": [0, 0, 672, 672]}}</tool_call>'
CUT_CALL = '<tool_call>{"name": "ground", "arguments": {"query": </tool_call>'
SCRIPT: dict[str, tuple[str, str]] = {
    "visual_search": (CROP_CALL, "<answer>horizontal</answer>"),
    "spatial_2d": (CUT_CALL, "<answer>A</answer>"),
}
"""Task -> (first turn, every later turn) of the teacher, and so of the taught model."""

SERVE_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ 'user' if message['role'] == 'tool' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
    "{% set f = call['function'] if call['function'] is defined else call %}"
    '<tool_call>{"name": {{ f["name"] | tojson }}, "arguments": {{ f["arguments"] | tojson }}}</tool_call>'
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-VL's chat template (:data:`vgym.engine.tiny.QWEN2_VL_CHAT_TEMPLATE`) plus tool calls and tool
messages; a chat with neither renders exactly as under Qwen2-VL's (tests/policies/test_openai_serve.py)."""

TEXT_ONLY_RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {"content": {"close_pattern": r"\s*(?:<\|im_end\|>|<\|endoftext\|>)", "content": "text"}},
}
"""A tokenizer ``response_template`` (transformers' declarative reply parser) with content only: no tool
calls are parsed."""

_PROCESSOR_MODULE = '''"""The tiny model's processor, for `transformers serve --trust-remote-code`."""
from vgym.engine.tiny import TinyQwen2VLProcessor

__all__ = ["TinyQwen2VLProcessor"]
'''


class ScriptedTeacher:
    """Plays :data:`SCRIPT`: the first turn's text, then the answer."""

    def act(self, batch: Sequence[PolicyInput]) -> list[PolicyOutput]:
        return [PolicyOutput(SCRIPT[item.task_name][min(item.turn, 1)]) for item in batch]


def teach_tiny_model(base: Path, out: Path) -> Path:
    """SFT the tiny model of ``base`` on the teacher's episodes (16 per task) and save it to ``out``.

    80 steps of 8 episodes at lr 5e-3 (~30-40 s on 2 CPU cores): in trials, 60 steps left 1 of 40 held-out
    crop calls garbled and lr 8e-3 was worse; 80 steps played the script on 80 of 80 held-out episodes.
    """
    import functools

    from vgym.engine.tiny import load_vlm
    from vgym.env import VisualToolEnv
    from vgym.rollout.chat import ChatEncoder
    from vgym.rollout.loop import EpisodeSpec, RolloutConfig, rollout
    from vgym.trainers.sft import SFTConfig, SFTTrainer

    model, processor = load_vlm(base)
    encoder = ChatEncoder(processor)
    data = []
    for task in SCRIPT:
        specs = [EpisodeSpec("train", i, group_id=i, seed=i) for i in range(16)]
        data += rollout(functools.partial(VisualToolEnv, task), ScriptedTeacher(), encoder, specs,
                        RolloutConfig(batch_size=16))
    SFTTrainer(model, data, SFTConfig(steps=80, batch_size=8, learning_rate=5e-3, warmup_steps=3),
               processor=processor).train()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def write_served_folders(model: Path, out: Path) -> tuple[Path, Path]:
    """Two servable copies of the model folder ``model`` under ``out``: ``(tool_parsing, no_tool_parsing)``.

    Both get :data:`SERVE_CHAT_TEMPLATE` and the processor module named in ``processor_config.json``'s
    ``auto_map``; the second's tokenizer also gets :data:`TEXT_ONLY_RESPONSE_TEMPLATE`.
    """
    folders = (out / "tool-parsing", out / "no-tool-parsing")
    for folder in folders:
        shutil.copytree(model, folder)
        (folder / "chat_template.jinja").write_text(SERVE_CHAT_TEMPLATE)
        (folder / "processing_vgym_tiny.py").write_text(_PROCESSOR_MODULE)
        config_path = folder / "processor_config.json"
        config = json.loads(config_path.read_text())
        config["auto_map"] = {"AutoProcessor": "processing_vgym_tiny.TinyQwen2VLProcessor"}
        config_path.write_text(json.dumps(config, indent=2))
    tokenizer_path = folders[1] / "tokenizer_config.json"
    tokenizer = json.loads(tokenizer_path.read_text())
    tokenizer["response_template"] = TEXT_ONLY_RESPONSE_TEMPLATE
    tokenizer_path.write_text(json.dumps(tokenizer, indent=2))
    return folders


def serve_command() -> Path | None:
    """The ``transformers`` CLI of this interpreter's environment, or None when it is missing."""
    found = Path(sys.executable).parent / "transformers"
    if found.exists():
        return found
    which = shutil.which("transformers")
    return Path(which) if which else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """``transformers serve`` on a free 127.0.0.1 port, CPU, loading the tiny processor's module; its output
    goes to ``log``."""

    def __init__(self, command: Path, log: Path, *, startup_s: float = 120.0) -> None:
        """Start the server and wait until ``/health`` answers.

        Raises:
            RuntimeError: the server exited, or did not answer within ``startup_s`` (the log's tail says why).
        """
        self.port = _free_port()
        self.log = log
        self._log_file = log.open("wb")
        args = [str(command), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
                "--trust-remote-code", "--model-timeout", "-1", "--log-level", "warning"]
        self.process = subprocess.Popen(args, stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.close()
                raise RuntimeError(f"transformers serve exited with {self.process.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.root}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.close()
        raise RuntimeError(f"transformers serve did not answer /health in {startup_s} s: {self.tail()}")

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The API root a policy takes."""
        return f"{self.root}/v1"

    def tail(self, chars: int = 3000) -> str:
        """The end of the server's output."""
        self._log_file.flush()
        return self.log.read_bytes()[-chars:].decode("utf-8", "replace")

    def close(self) -> None:
        """Stop the server (and its model processes, which exit with it); harmless twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
