"""A GRPO step of vgym's trainer on a 2B-sized Qwen2-VL on one CUDA GPU: step time, tokens/s, peak GPU memory.

Run on a GPU machine: ``python benchmarks/gpu_step.py --size 2b --out gpu_step.json``. The same script runs
the tiny model on CPU (``--size tiny --device cpu``), which is how the test suite covers its logic.

The model is Qwen2-VL-2B-Instruct's architecture (text 1536 wide × 28 layers, 12 heads / 2 KV heads, MLP 8960,
vocab 151,936, tied embeddings; vision 1280 wide × 32 blocks) with random weights, made with the real
``Qwen2VLForConditionalGeneration`` class straight on the device in the chosen dtype (nothing is downloaded;
``--save`` writes it out as a local checkpoint); the tokenizer and processor are the tiny model's (real
classes, trained here), so ids above the tokenizer's ~2k tokens decode to nothing, as ids past a real
tokenizer's end do. A random model writes garbage, so every completion is forced to its full length
(``min_new_tokens``) and episodes are single-turn: the numbers are the cost of a step at that length, not of a
learned policy. Generation is Hugging Face ``generate`` (no vLLM).

Each configuration (prompts per step × group size) runs ``--warmup`` untimed steps, then ``--steps`` timed
ones; the report gives the median step, its split into generation / rest of the rollout / loss
forward / backward + optimizer (CUDA-synchronised), total tokens/s (prompt + completion of every sequence, as
TRL counts), completion tokens/s, peak GPU memory, and the first-pass ratio statistics (how far the training
forward in this dtype is from the sampler's log-probs).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoProcessor, GenerationConfig, Qwen2VLForConditionalGeneration

from vgym.engine.decode_step import DecodeStep
from vgym.engine.decoding import lean_decoding_supported
from vgym.engine.fast_paths import fast_paths
from vgym.engine.modeling import enable_checkpointing
from vgym.engine.tiny import TinyVLMConfig, build_tiny_vlm
from vgym.env import VisualToolEnv
from vgym.trainers.grpo import GRPOTrainer, hf_policy
from vgym.trainers.grpo_config import GRPOConfig

TASK = "visual_search"
SIZES: dict[str, dict[str, Any]] = {
    "2b": {"text": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                    "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936},
           "vision": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "hidden_size": 1536},
           "mrope_section": [16, 24, 24], "tie_word_embeddings": True},
    "tiny": {"text": {}, "vision": {}, "mrope_section": None, "tie_word_embeddings": False},
}


def build_model(size: str, tokenizer_dir: Path, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """A randomly initialised Qwen2-VL of ``size`` on ``device`` in ``dtype``, and the tiny model's
    processor."""
    spec = SIZES[size]
    config = AutoConfig.from_pretrained(tokenizer_dir, local_files_only=True)
    for key, value in spec["text"].items():
        setattr(config.text_config, key, value)
    if getattr(config.text_config, "layer_types", None) is not None:  # sized for the tiny model's layers
        config.text_config.layer_types = ["full_attention"] * config.text_config.num_hidden_layers
    for key, value in spec["vision"].items():
        setattr(config.vision_config, key, value)
    if spec["mrope_section"]:
        config.text_config.rope_parameters["mrope_section"] = spec["mrope_section"]
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = spec["tie_word_embeddings"]
    with torch.device(device), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig.from_pretrained(tokenizer_dir, local_files_only=True)
    return model, AutoProcessor.from_pretrained(tokenizer_dir, local_files_only=True)


def _synced(fn: Any, seconds: dict[str, float], label: str, device: str) -> Any:
    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - start
        return out
    return timed


def run_config(model: Any, processor: Any, *, prompts: int, group: int, new_tokens: int, max_pixels: int,
               warmup: int, steps: int, device: str, checkpointing: bool,
               accumulation: int = 1) -> dict[str, Any]:
    """Time ``warmup + steps`` GRPO steps of ``prompts × group`` single-turn episodes; returns the report
    row."""
    model.generation_config.min_new_tokens = new_tokens  # a random model stops at random: force full length
    if checkpointing:
        enable_checkpointing(model)
        model.config.use_cache = True  # generation still uses the KV cache; HF turns it off only in training
    env_fn = functools.partial(VisualToolEnv, TASK, tools=(), max_turns=1, max_pixels=max_pixels)
    cfg = GRPOConfig(num_generations=group, prompts_per_step=prompts, max_new_tokens=new_tokens,
                     temperature=1.0, learning_rate=1e-6, mask_truncated_completions=False,
                     steps=warmup + steps, beta=0.0, gradient_accumulation_steps=accumulation)
    seconds: dict[str, float] = {}
    policy = hf_policy(model, processor, cfg)
    policy.act = _synced(policy.act, seconds, "generate", device)  # type: ignore[method-assign]
    trainer = GRPOTrainer(model, processor, policy, env_fn, cfg)
    trainer.loss_on = _synced(trainer.loss_on, seconds, "forward", device)  # type: ignore[method-assign]
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for step in range(warmup + steps):
        seconds.clear()
        metrics = trainer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step < warmup:
            continue
        wall, roll = metrics["perf/step_s"], metrics["perf/rollout_s"]
        rows.append({"wall": wall, "tokens": metrics["perf/tokens_per_s"] * wall,
                     "completion_tokens": metrics["rollout/policy_tokens"] * prompts * group,
                     "generate": seconds["generate"], "rollout_other": roll - seconds["generate"],
                     "forward": seconds["forward"], "backward_optim": wall - roll - seconds["forward"],
                     "clip_fraction": metrics.get("actor/clip_fraction", float("nan")),
                     "ratio_mean": metrics.get("actor/ratio_mean", float("nan")),
                     "approx_kl": metrics.get("actor/approx_kl", float("nan")),
                     "grad_norm": metrics.get("optim/grad_norm", float("nan"))})
    total = sum(r["wall"] for r in rows)
    mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return {"prompts": prompts, "group": group, "episodes": prompts * group, "accumulation": accumulation,
            "new_tokens": new_tokens,
            "max_pixels": max_pixels, "s_per_step": statistics.median(r["wall"] for r in rows),
            "tokens_per_s": sum(r["tokens"] for r in rows) / total,
            "completion_tokens_per_s": sum(r["completion_tokens"] for r in rows) / total,
            "peak_gpu_gib": peak, "mean": mean}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="2b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--prompts", type=int, nargs="*", default=[1, 4],
                        help="prompts per step, one run each (none: only build and --save)")
    parser.add_argument("--group", type=int, default=8, help="generations per prompt (G)")
    parser.add_argument("--new-tokens", type=int, default=128, help="completion length (forced)")
    parser.add_argument("--max-pixels", type=int, default=448 * 448,
                        help="image budget (448²: 256 image tokens)")
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    parser.add_argument("--out", type=Path, help="write the report rows here as JSON")
    parser.add_argument("--save", type=Path,
                        help="also save the random model and processor here (a local checkpoint)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer_dir = build_tiny_vlm(Path(tmp) / "tok", config=TinyVLMConfig(max_pixels=args.max_pixels))
        start = time.perf_counter()
        model, processor = build_model(args.size, tokenizer_dir, args.device, dtype)
        built_s = time.perf_counter() - start
        if args.save:
            model.save_pretrained(args.save)
            processor.save_pretrained(args.save)
    n_params = sum(p.numel() for p in model.parameters())
    gpu = f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""
    print(f"{args.size}: {n_params / 1e9:.3f} B parameters, {args.dtype} on {args.device}, "
          f"built in {built_s:.1f} s{gpu}")
    model.eval()  # as during the rollout (the trainer switches modes itself)
    paths = fast_paths(model)
    steps = "direct decode steps" if paths.direct_steps and DecodeStep.supports(model) else "model(...) steps"
    lean = paths.decoder and lean_decoding_supported(model, None)
    print(f"  decoding: {'lean sampling loop, ' + steps if lean else 'generate'}"
          f"{'' if paths.reason is None else f' ({paths.reason})'}, "
          f"attention {model.config._attn_implementation}")
    rows = []
    for prompts in args.prompts:
        row = run_config(model, processor, prompts=prompts, group=args.group, new_tokens=args.new_tokens,
                         max_pixels=args.max_pixels, warmup=args.warmup, steps=args.steps, device=args.device,
                         checkpointing=not args.no_checkpointing, accumulation=args.accumulation)
        row.update(size=args.size, params=n_params, dtype=args.dtype, device=args.device)
        rows.append(row)
        m = row["mean"]
        print(f"  {prompts} x {args.group} episodes ({args.accumulation} micro-batches), "
              f"{args.new_tokens} new tokens: {row['s_per_step']:.2f} s/step, "
              f"{row['tokens_per_s']:.0f} tok/s total, "
              f"{row['completion_tokens_per_s']:.0f} completion tok/s, "
              f"{m['tokens']:.0f} tok/step, peak {row['peak_gpu_gib']:.1f} GiB  "
              f"[generate {m['generate']:.2f} / rollout rest {m['rollout_other']:.2f} / "
              f"forward {m['forward']:.2f} / backward+optim {m['backward_optim']:.2f} s]  "
              f"first-pass ratio {m['ratio_mean']:.4f}, clipped {m['clip_fraction']:.4f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
