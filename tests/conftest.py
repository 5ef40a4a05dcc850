"""Shared fixtures: the tiny Qwen2-VL (random weights, real processor), built once per test session.

Heavy imports (transformers) happen inside the fixtures, so test files that do not use them stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The test models are tiny, so intra-op threads buy nothing; on a shared 2-core machine OpenMP's spin-waiting
# made
# one SFT step ~20x slower (3.6 s with 2 threads vs 0.18 s with 1). Set before torch is first imported;
# setdefault keeps a value the caller chose.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny VLM saved once for the session; its tokenizer also learns from real visual-search prompts."""
    from vgym.app.quickstart import tokenizer_corpus
    from vgym.engine.tiny import build_tiny_vlm

    # n=40 (not the quickstart's 300): enough prompts for compact tokens, ~1.5 s instead of ~11 s.
    corpus = tokenizer_corpus("visual_search", 0, n=40)
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "vlm", corpus=corpus)


@pytest.fixture
def tiny(tiny_dir: Path):  # type: ignore[no-untyped-def]
    """A fresh ``(model, processor)`` per test, so tests that train never affect others."""
    from vgym.engine.tiny import load_vlm

    return load_vlm(tiny_dir)
