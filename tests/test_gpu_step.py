"""CPU coverage of ``benchmarks/gpu_step.py`` (the GPU check of issue 7): the 2B-sized model it builds is
Qwen2-VL-2B's shape, and one timed GRPO step of the tiny size on CPU produces a full report row and a loadable
saved checkpoint."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from vgym.engine.tiny import load_vlm

REPO = Path(__file__).resolve().parents[1]


def _module():  # type: ignore[no-untyped-def]
    """``benchmarks/gpu_step.py`` imported as a module (``benchmarks`` is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "vgym_gpu_step_benchmark", REPO / "benchmarks" / "gpu_step.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_2b_size_is_qwen2_vl_2b(tiny_dir: Path) -> None:
    """Built on the meta device (no memory): 2.209 B parameters, tied embeddings, 28 text layers, 32 vision
    blocks."""
    model, processor = _module().build_model("2b", tiny_dir, "meta", torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 2_208_985_600
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert len(model.model.language_model.layers) == 28 and len(model.model.visual.blocks) == 32
    assert model.config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id


def test_tiny_step_report_and_checkpoint(tmp_path: Path) -> None:
    out, saved = tmp_path / "rows.json", tmp_path / "model"
    rows = _module().main(
        [
            "--size",
            "tiny",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--prompts",
            "1",
            "--group",
            "2",
            "--new-tokens",
            "4",
            "--max-pixels",
            str(112 * 112),
            "--warmup",
            "0",
            "--steps",
            "1",
            "--save",
            str(saved),
            "--out",
            str(out),
        ]
    )
    (row,) = json.loads(out.read_text())
    assert row == json.loads(json.dumps(rows[0]))
    assert row["episodes"] == 2 and row["mean"]["completion_tokens"] == 2 * 4  # forced to full length
    parts = sum(row["mean"][k] for k in ("generate", "rollout_other", "forward", "backward_optim"))
    assert abs(parts - row["mean"]["wall"]) < 1e-6 and row["tokens_per_s"] > 0
    model, _ = load_vlm(saved)
    assert model.config.text_config.num_hidden_layers == 2
