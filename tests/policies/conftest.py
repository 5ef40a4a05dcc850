"""Fixtures of the policy tests: a real ``transformers serve`` on 127.0.0.1 serving the tiny model taught to
call crop (see transformers_server.py beside this file), built and started once per test session."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers_server import ServeProcess, serve_command, teach_tiny_model, write_served_folders


@pytest.fixture(scope="session")
def served_models(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(tool_parsing, no_tool_parsing)``: two servable folders of the tiny model taught the script (~40 s
    once per session on 2 cores)."""
    folder = tmp_path_factory.mktemp("served")
    taught = teach_tiny_model(tiny_dir, folder / "taught")
    return write_served_folders(taught, folder)


@pytest.fixture(scope="session")
def transformers_server(
    served_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeProcess]:
    """``transformers serve`` on a free port, with both served models loaded (each model runs in a process of
    its own, started by its first request: ~10 s each, spent here rather than in the first test); stopped at
    the end of the session."""
    command = serve_command()
    if command is None:
        pytest.skip("the `transformers` command is missing: transformers serve cannot run here")
    server = ServeProcess(command, tmp_path_factory.mktemp("serve") / "server.log")
    try:
        for folder in served_models:
            body = {"model": str(folder), "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
            request = urllib.request.Request(f"{server.base_url}/chat/completions", method="POST",
                                             data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=300) as response:
                assert response.status == 200, server.tail()
        yield server
    finally:
        server.close()
